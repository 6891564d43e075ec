#!/bin/bash
# Call 5, same warm machine as call 4: join the GGUF, then benchmark both engine set-ups
# (llama-cpp-python managed by the runner; llama-server attached) on this one card.
source scripts/gpu/common.sh
[ -d "$G/sbuild" ] || { echo "fresh machine: call 4's build is gone"; exit 3; }
M="$G/models/SmolLM2-135M-Instruct.Q4_1.gguf"; mkdir -p "$G/models"
cat "$G/smol.part1" .gpu2/smol.part2 > "$M"
echo "$(cat .gpu2/smol.sha256)  $M" | sha256sum -c || exit 4
while [ ! -f "$G/build.rc" ] && [ $SECONDS -lt 300 ]; do sleep 5; done
[ "$(cat $G/build.rc 2>/dev/null)" = 0 ] || { tail -c 3000 "$G/build.log"; exit 5; }
if [ ! -f "$G/lcp/llama_cpp/lib/libllama.so" ]; then
  mkdir -p "$G/lcp/llama_cpp/lib"; cp -a "$G"/sbuild/bin/lib*.so* "$G/lcp/llama_cpp/lib/"
fi
nvidia-smi -L
echo "### bench: llama-server attached"
python3 bench/bench_gpu.py --model "$M" --llama-server "$G/sbuild/bin/llama-server" --parallel 16 \
  --rounds 4 --rounds-single 16 --max-tokens 128 --json "$OUT/bench-server.json" --no-write
echo "### bench: llama-cpp-python managed by the runner"
python3 bench/bench_gpu.py --model "$M" --rounds 4 --rounds-single 16 --max-tokens 128 --threads 8 \
  --json "$OUT/bench-lcpp.json" --no-write
python3 bench/bench_gpu.py --render "$OUT/bench-lcpp.json" "$OUT/bench-server.json" --no-write > "$OUT/bench-gpu.md"
