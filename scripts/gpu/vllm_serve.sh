#!/bin/bash
# On the GPU machine, after scripts/gpu/vllm_part.sh has installed vLLM into /tmp/site (docs/gpu.md,
# "vLLM"): convert the embedded SmolLM2 GGUF to a Hugging Face safetensors directory with the image's
# transformers, show `runner plan` choosing vLLM by itself, then benchmark it direct vs through Outpost
# (bench/bench_gpu.py --engine vllm), recording the engine's real output into $OUT.
#
#   bash scripts/gpu/vllm_serve.sh [STREAMS] [ROUNDS]      (default 1,16,64,256 and 8)
#   TAG=-nowait NO_RECORD=1 BENCH_EXTRA="--cp-env OUTPOST_RECORDS_COMMIT_WAIT_S=0.001" bash scripts/gpu/vllm_serve.sh
#
# Runs from the tree it is in: the call may `cd` to a carried snapshot of the repository first.
set -uo pipefail
S=/tmp/vllm-stage
[ -f "$S/installed" ] || { echo "vLLM is not installed on this machine: send the parts again from part 1"; exit 3; }
STREAMS=${1:-1,16,64,256}
ROUNDS=${2:-8}
export PYTHONPATH=/tmp/site:$(pwd) PYTHONUNBUFFERED=1
export VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
GGUF=$(ls "$S"/pack/*.gguf)
HF=/tmp/models/SmolLM2-135M-Instruct
nvidia-smi -L; python3 --version
if [ ! -f "$HF/model.safetensors" ]; then
  python3 scripts/gpu/gguf_to_hf.py "$GGUF" "$HF" 2>&1 | grep -v -E "de-quantizing|Loading weights|Writing model" || exit 5
fi
ls -la "$HF"
echo "### \$ runner plan --model $HF"
COLUMNS=130 python3 -m outpost.runner.cli plan --model "$HF"; echo "(exit $?)"
# TAG names this run's files; BENCH_EXTRA adds bench options (--cp-env ...); NO_RECORD=1: no fixtures.
TAG=${TAG:-}
[ -n "$TAG" ] || python3 -m outpost.runner.cli plan --model "$HF" --json > "$OUT/plan.json"
REC=(--record "$OUT"); [ -z "${NO_RECORD:-}" ] || REC=()
echo "### bench $TAG ${BENCH_EXTRA:-}"
rm -rf /tmp/outpost-gpu-*
# shellcheck disable=SC2086
python3 bench/bench_gpu.py --engine vllm --model "$HF" --streams "$STREAMS" --rounds "$ROUNDS" --rounds-single 32 \
  --max-tokens 128 --ready-timeout 300 --json "$OUT/bench-vllm$TAG.json" "${REC[@]}" ${BENCH_EXTRA:-} --keep --no-write
rc=$?
echo "### bench exit $rc"
st=$(ls -d /tmp/outpost-gpu-* 2>/dev/null | tail -1)
[ -n "$st" ] && { tail -c 20000 "$st/runner/logs/engine.log" > "$OUT/engine$TAG.log"; tail -c 3000 "$st/runner/runner.log"; }
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
exit $rc
