#!/bin/sh
# make check entry for the integration suite: pytest with the openai SDK.
# Exits 77 (skipped) when no Python with the SDK is available.
PY=${LLMGATE_PYTHON:-}
if [ -z "$PY" ] || ! "$PY" -c 'import openai, pytest, httpx' 2>/dev/null; then
    echo "SKIP: no python with openai+pytest+httpx (run ./quickstart test, or set LLMGATE_PYTHON)"
    exit 77
fi
# The source tree is read-only under distcheck: no bytecode or caches there.
export PYTHONDONTWRITEBYTECODE=1
cd "${LLMGATE_SRCDIR:-$(dirname "$0")/../..}/tests/integration" || exit 99
exec "$PY" -m pytest -q -p no:cacheprovider "$@" .
