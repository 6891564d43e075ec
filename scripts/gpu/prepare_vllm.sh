#!/bin/bash
# Prepare, here, vLLM 0.24.0 for the GPU machine (docs/gpu.md, "vLLM"): the machine has no package
# registry and a call carries at most 64 MiB, so everything travels as numbered parts, one per call.
#
#   scripts/gpu/prepare_vllm.sh             download scripts/gpu/vllm-wheels.txt, pack, split into .vllm/
#   scripts/gpu/prepare_vllm.sh --resolve   first re-resolve vllm-wheels.txt (needs uv; see below)
#
# The pack is one uncompressed tar (wheels are zip files already; the GGUF gains 6 %): wheels/*.whl,
# 114 CPython 3.12 manylinux x86-64 wheels (vLLM, the dependencies the image lacks, Outpost's own), and
# the embedded SmolLM2 GGUF, split into parts of PART bytes (.vllm/part.01 ...) with .vllm/SHA256SUMS.
# .vllm/ is listed in .git/info/exclude: it travels only when a call's `carry` names its files.
# scripts/gpu/vllm_part.sh receives them on the machine.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
PY=.venv/bin/python
PART=${PART:-60000000}  # 57.2 MiB: the rest of the 64 MiB is the working tree (about 3 MB)
grep -qx "/.vllm/" .git/info/exclude 2>/dev/null || echo "/.vllm/" >> .git/info/exclude
PLAT=""
for n in 17 24 27 28 31 34 35 36 37 38 39; do PLAT="$PLAT --platform manylinux_2_${n}_x86_64"; done
PLAT="$PLAT --platform manylinux2014_x86_64 --platform manylinux1_x86_64"
W=${WORK:-$(mktemp -d)}

if [ "${1:-}" = "--resolve" ]; then
  # pip's resolver would resolve torch too, whose pinned CUDA wheels the image already has (and this
  # index lacks some of); uv drops a package from a resolution when an override gives it a marker that
  # never holds. Dropped: the image's packages, and optional kernel packages vLLM imports only when a
  # feature asks for them (flashinfer's prebuilt cubins alone are 447 MB).
  UV=${UV:-uv}
  OPTIONAL="flashinfer-cubin tokenspeed-triton tokenspeed-mla nvidia-cutlass-dsl nvidia-cutlass-dsl-libs-base
    nvidia-cutlass-dsl-libs-cu13 nvidia-nvvm tilelang nvidia-cuda-nvcc nvidia-cuda-tileiras nvidia-cuda-crt cuda-tile
    z3-solver quack-kernels humming-kernels"
  { grep -v '^#' scripts/gpu/image-packages.txt; for p in $OPTIONAL; do echo "$p"; done; } \
    | sed "s/\$/ ; sys_platform == 'never'/" > "$W/overrides.txt"
  # Outpost's packages at this venv's versions where vLLM allows them (it caps fastapi < 0.137; the
  # OpenTelemetry exporters pin opentelemetry-api; cryptography follows).
  { echo "vllm==0.24.0"
    for p in starlette uvicorn websockets pydantic pydantic-settings python-dotenv typing-inspection annotated-types \
             sqlalchemy greenlet aiosqlite alembic mako cffi pycparser argon2-cffi argon2-cffi-bindings gguf redis \
             vaderSentiment httptools sse-starlette starlette-context diskcache; do
      echo "$p==$($PY -m pip show "$p" | awk '/^Version/{print $2}')"
    done
    echo fastapi; echo opentelemetry-api; echo cryptography; } > "$W/req.in"
  "$UV" pip compile "$W/req.in" --python-version 3.12 --python-platform x86_64-manylinux_2_39 \
    --override "$W/overrides.txt" --no-header --no-annotate -o "$W/lock.txt"
  { sed -n '1,4p' scripts/gpu/vllm-wheels.txt; grep '==' "$W/lock.txt"
    # Outpost's packages the image has too, at this venv's versions (as scripts/gpu/prepare.sh carries them).
    for p in typer rich click shellingham markdown-it-py mdurl pygments annotated-doc anyio h11 httpx httpcore \
             prometheus-client typing-extensions; do
      echo "$p==$($PY -m pip show "$p" | awk '/^Version/{print $2}')"
    done; } > "$W/new.txt"
  mv "$W/new.txt" scripts/gpu/vllm-wheels.txt
fi

mkdir -p "$W/pack/wheels"
# shellcheck disable=SC2086
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $PLAT \
  -d "$W/pack/wheels" -r scripts/gpu/vllm-wheels.txt
# Exactly one file per distribution: two versions of one stop the install there.
dups=$(ls "$W/pack/wheels" | sed 's/-[0-9].*//' | tr 'A-Z-' 'a-z_' | sort | uniq -d)
[ -z "$dups" ] || { echo "several wheels of: $dups"; exit 1; }
M=$($PY -c "from outpost.runner.models import embedded_model_path as e; print(e())")
ln -f "$M" "$W/pack/$(basename "$M")" 2>/dev/null || cp "$M" "$W/pack/"
(cd "$W/pack" && sha256sum "$(basename "$M")" > model.sha256 && ls wheels | wc -l > wheels.count)
rm -rf .vllm && mkdir -p .vllm
tar cf - -C "$W/pack" . | split -b "$PART" -d -a 2 --numeric-suffixes=1 - .vllm/part.
(cd .vllm && sha256sum part.* > SHA256SUMS && ls part.* | wc -l > COUNT)
echo "$(cat .vllm/COUNT) parts of at most $PART bytes in .vllm/ ($(ls "$W/pack/wheels" | wc -l) wheels):"
ls -l .vllm
[ -n "${WORK:-}" ] || rm -rf "$W"
