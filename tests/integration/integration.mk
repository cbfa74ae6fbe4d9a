# tests/integration/: real processes (mock upstream, gateway, engine) driven by
# the official openai SDK, httpx and curl through pytest.
TESTS += tests/integration/run.sh
# Listed by pattern so new test files ship without touching this fragment (the
# directory itself cannot be listed: the build tree has one too, full of logs).
EXTRA_DIST += tests/integration/run.sh tests/integration/requirements.txt \
	$(wildcard $(srcdir)/tests/integration/*.py)
