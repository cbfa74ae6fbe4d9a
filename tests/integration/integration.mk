# tests/integration/: real processes (mock upstream, gateway, engine) driven by
# the official openai SDK, httpx and curl through pytest.
TESTS += tests/integration/run.sh
EXTRA_DIST += tests/integration

dist-hook:
	rm -rf $(distdir)/tests/integration/__pycache__ $(distdir)/tests/integration/.pytest_cache
