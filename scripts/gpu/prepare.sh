#!/bin/bash
# Prepare, on the development machine, what the GPU calls carry (docs/gpu.md):
#   .whl/   py3.12 manylinux wheels the runner, the control plane and llama-cpp-python's server need
#   .gpu1/  the first 40,000,000 bytes of the embedded GGUF + llama-cpp-python's sdist, stripped
#   .gpu2/  the rest of the GGUF + its sha256
#   .gpu3/  the first part again + llama.cpp's tree (as vendored there) with tools/server, stripped
# All four are listed in .git/info/exclude: they travel only through `carry`.
# Usage: scripts/gpu/prepare.sh [path/to/llama_cpp_python-X.tar.gz]
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
PY=.venv/bin/python
for d in /.whl/ /.gpu1/ /.gpu2/ /.gpu3/; do grep -qx "$d" .git/info/exclude || echo "$d" >> .git/info/exclude; done

# Wheels: the versions of this venv, for CPython 3.12 on manylinux x86-64. The GPU image already
# has numpy, scipy, psutil, nvidia-ml-py, jinja2, pyyaml, requests, markupsafe, idna, certifi.
PKGS="fastapi starlette uvicorn websockets pydantic pydantic-core pydantic-settings python-dotenv typing-inspection
annotated-types typing-extensions sqlalchemy greenlet aiosqlite alembic mako cryptography cffi pycparser argon2-cffi
argon2-cffi-bindings prometheus-client gguf redis vaderSentiment httptools typer rich click shellingham markdown-it-py
mdurl pygments annotated-doc sse-starlette starlette-context diskcache anyio h11 httpx httpcore opentelemetry-api"
specs=$(for p in $PKGS; do echo "$p==$($PY -m pip show "$p" | awk '/^Version/{print $2}')"; done)
mkdir -p .whl
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_34_x86_64 \
  --platform manylinux_2_31_x86_64 --platform manylinux_2_24_x86_64 -d .whl $specs
# Exactly one file per distribution: two versions of one stop the install there.
dups=$(ls .whl | sed 's/-[0-9].*//' | sort | uniq -d); [ -z "$dups" ] || { echo "several wheels of: $dups"; exit 1; }

# The model, in two parts that each fit one call's 64 MiB with the rest of the carry.
M=$($PY -c "from outpost.runner.models import embedded_model_path as e; print(e())")
mkdir -p .gpu1 .gpu2 .gpu3
head -c 40000000 "$M" > .gpu1/smol.part1
tail -c +40000001 "$M" > .gpu2/smol.part2
sha256sum "$M" | awk '{print $1}' > .gpu2/smol.sha256
ln -f .gpu1/smol.part1 .gpu3/smol.part1

# llama-cpp-python's sdist (76.6 MB for 0.3.36): drop what a CUDA build of the library does not read.
W=$(mktemp -d)
SDIST=${1:-}
if [ -z "$SDIST" ]; then
  $PY -m pip download --no-binary :all: --no-deps llama-cpp-python -d "$W"; SDIST=$(ls "$W"/llama_cpp_python-*.tar.gz)
fi
tar xzf "$SDIST" -C "$W"; SRC=$(ls -d "$W"/llama_cpp_python-*/)
strip_ggml() {  # other backends: added only when their GGML_<NAME> option is on
  (cd "$1/ggml/src" && rm -rf ggml-sycl ggml-vulkan ggml-opencl ggml-metal ggml-hexagon ggml-cann ggml-openvino \
     ggml-webgpu ggml-et ggml-virtgpu ggml-musa ggml-zdnn ggml-zendnn ggml-rpc ggml-blas ggml-hip ggml-kompute)
}
COMMON_DROP="models docs tests examples benches media gguf-py conversion pocs app ci skills requirements grammars .devops .github"
# .gpu1: the sdist's own CMake project (llama_cpp/ + vendor/llama.cpp without tools/).
mkdir -p "$W/s1" && cp -a "$SRC" "$W/s1/lcp"
(cd "$W/s1/lcp" && rm -rf docs examples tests docker .git .github && cd vendor/llama.cpp && rm -rf $COMMON_DROP tools .git*)
strip_ggml "$W/s1/lcp/vendor/llama.cpp"
tar czf .gpu1/lcp-strip.tar.gz -C "$W/s1" lcp
# .gpu3: llama.cpp standalone with tools/ (llama-server, no web UI sources) + the llama_cpp Python package.
mkdir -p "$W/s3/lcp" && cp -a "$SRC/vendor/llama.cpp" "$W/s3/llama.cpp" && cp -a "$SRC/llama_cpp" "$W/s3/lcp/"
(cd "$W/s3/llama.cpp" && rm -rf $COMMON_DROP .git* tools/ui/src tools/ui/tests tools/ui/package-lock.json)
rm -rf "$W/s3/lcp/llama_cpp/lib"
strip_ggml "$W/s3/llama.cpp"
tar czf .gpu3/srv.tar.gz -C "$W/s3" llama.cpp lcp
rm -rf "$W"
du -sb .whl .gpu1 .gpu2 .gpu3
