#!/bin/bash
# Call 2, same warm one-GPU machine: join the GGUF, finish waiting for the build,
# plan the GGUF, then serve it through runner + tunnel + control plane and benchmark.
# Carried: .gpu2 (the GGUF's remaining bytes and its sha256).
source scripts/gpu/common.sh
[ -d "$G/lcp" ] || { echo "fresh machine: call 1's build and files are gone"; exit 3; }
M="$G/models/SmolLM2-135M-Instruct.Q4_1.gguf"; mkdir -p "$G/models"
cat "$G/smol.part1" .gpu2/smol.part2 > "$M"
echo "$(cat .gpu2/smol.sha256)  $M" | sha256sum -c || exit 4
while [ ! -f "$G/build.rc" ] && [ $SECONDS -lt 420 ]; do sleep 5; done
echo "### build rc=$(cat $G/build.rc 2>/dev/null || echo running) seconds: $(( $(cat $G/build.end 2>/dev/null || date +%s) - $(cat $G/build.start) ))"
tail -c 1500 "$G/build.log"; cp "$G/build.log" "$OUT/build.log"
[ "$(cat $G/build.rc 2>/dev/null)" = 0 ] || exit 5
ls -la "$G/lcp/llama_cpp/lib"
python3 -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__, 'gpu offload:', llama_cpp.llama_supports_gpu_offload())"
COLUMNS=130 plans 1gpu-gguf "$M"
echo "### \$ runner plan --model $M --engine llama-cpp-python"; COLUMNS=130 runner plan --model "$M" --engine llama-cpp-python
echo "### bench"
python3 bench/bench_gpu.py --model "$M" --rounds 4 --rounds-single 16 --max-tokens 128 --threads 8 \
  --json "$OUT/bench-gpu.json" --keep
sed -n '/<!-- gpu:begin -->/,/<!-- gpu:end -->/p' bench/README.md > "$OUT/bench-gpu.md"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
