#!/bin/bash
# Prepare, here, everything scripts/gpu/bench_all.sh needs on the GPU machine (docs/gpu.md,
# "Benchmarks in one staging"):
#   .vllm/part.NN, SHA256SUMS, COUNT   vLLM 0.24.0 + its wheels + Outpost's + py-spy + the GGUF
#                                      (scripts/gpu/prepare_vllm.sh, parts of 53,000,000 bytes so
#                                      that part 1 has room for the llama.cpp sources beside it)
#   .vllm/srv.tar.gz                   llama.cpp's tree as vendored by llama-cpp-python 0.3.36,
#                                      stripped to what a CUDA build of llama-server reads
#   .gbench/tree.tar.gz, COMMIT        `git archive HEAD`: the machine runs committed code only,
#                                      never the uncommitted edits of the shared checkout
#
#   scripts/gpu/prepare_bench.sh            (re)make the tree; the parts and sources if missing
#   scripts/gpu/prepare_bench.sh --fresh    remake everything
# Both folders are listed in .git/info/exclude: they travel only through `carry`.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
PY=.venv/bin/python
for d in /.vllm/ /.gbench/; do grep -qx "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude; done
FRESH=${1:-}

if [ "$FRESH" = "--fresh" ] || [ ! -f .vllm/SHA256SUMS ]; then
  PART=53000000 bash scripts/gpu/prepare_vllm.sh
fi

if [ "$FRESH" = "--fresh" ] || [ ! -f .vllm/srv.tar.gz ]; then
  W=$(mktemp -d)
  $PY -m pip download -q --no-binary :all: --no-deps "llama-cpp-python==0.3.36" -d "$W"
  tar xzf "$W"/llama_cpp_python-*.tar.gz -C "$W"
  SRC=$(ls -d "$W"/llama_cpp_python-*/)
  cp -a "$SRC/vendor/llama.cpp" "$W/llama.cpp"
  # What a CUDA build of llama-server does not read: other backends (each is added only when its
  # GGML_<NAME> option is on), test models, docs, the web UI's sources (-DLLAMA_BUILD_UI=OFF).
  (cd "$W/llama.cpp" && rm -rf models docs tests examples benches media gguf-py conversion pocs app ci \
     skills requirements grammars .devops .github .git* tools/ui/src tools/ui/tests tools/ui/package-lock.json)
  (cd "$W/llama.cpp/ggml/src" && rm -rf ggml-sycl ggml-vulkan ggml-opencl ggml-metal ggml-hexagon ggml-cann \
     ggml-openvino ggml-webgpu ggml-et ggml-virtgpu ggml-musa ggml-zdnn ggml-zendnn ggml-rpc ggml-blas ggml-hip \
     ggml-kompute)
  tar czf .vllm/srv.tar.gz -C "$W" llama.cpp
  rm -rf "$W"
fi

rm -rf .gbench && mkdir -p .gbench
git archive --format=tar.gz -o .gbench/tree.tar.gz HEAD
git rev-parse --short HEAD > .gbench/COMMIT
du -b .vllm/part.01 .vllm/srv.tar.gz .gbench/tree.tar.gz
echo "tree at $(cat .gbench/COMMIT); $(cat .vllm/COUNT) parts"
