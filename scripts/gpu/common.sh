# Sourced by the call scripts: paths and the carried wheels (docs/gpu.md).
set -u
R=$(pwd)
G=/tmp/gpu
mkdir -p "$G"
command -v nvcc >/dev/null || export PATH=/usr/local/cuda/bin:$PATH
# SKIP_WHEELS=1: use the interpreter's own packages (a dry run of these scripts on the dev machine).
if [ -z "${SKIP_WHEELS:-}" ] && [ ! -d /tmp/site/fastapi ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
fi
export PYTHONPATH=/tmp/site:$R:$G/lcp
export PYTHONUNBUFFERED=1
runner() { python3 -m outpost.runner.cli "$@"; }
plans() {  # plans TAG MODEL...: the real CLI for each model, then the planner with engines assumed installed
  local tag=$1; shift
  for m in "$@"; do
    echo "### \$ runner plan --model $m"; runner plan --model "$m"; echo "(exit $?)"
    runner plan --model "$m" --json > "$G/plan.json"; echo "(json exit $?)"; cat "$G/plan.json" >> "$OUT/plans-$tag.jsonl"
  done
  echo "### planner with vllm and xllamacpp assumed installed (scripts/gpu/plan_cases.py)"
  python3 scripts/gpu/plan_cases.py --assume vllm --assume xllamacpp --json "$OUT/plans-assumed-$tag.json" "$@"
}
