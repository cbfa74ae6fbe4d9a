# tests/integration/: real processes (mock upstream, gateway) driven by the
# official openai SDK, httpx and curl through pytest.
TESTS += tests/integration/run.sh
EXTRA_DIST += tests/integration/run.sh tests/integration/conftest.py tests/integration/requirements.txt \
	tests/integration/test_gateway.py
