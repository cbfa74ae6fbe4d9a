# tests/integration/: real processes driven by the openai SDK and curl
