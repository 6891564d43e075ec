#!/bin/bash
# The GPU benchmarks of issue 24 in one staging on one warm one-GPU machine (docs/gpu.md,
# "Benchmarks in one staging"; the exact `run` calls are in bench/README.md):
#
#   bash scripts/gpu/bench_all.sh part N   receive part N of .vllm/ (scripts/gpu/vllm_part.sh);
#                                          part 1 also starts llama-server's CUDA build from
#                                          .vllm/srv.tar.gz in the background (setsid, nice 19)
#   bash scripts/gpu/bench_all.sh vllm     vLLM planned by the runner: 1, 16, 64, 256 streams,
#                                          direct vs through Outpost, then 64 under py-spy
#   bash scripts/gpu/bench_all.sh llama    llama-server with 64 slots, attached: 1, 16, 64 streams,
#                                          direct vs through Outpost, then 64 under py-spy
#
# vllm and llama run the committed tree carried as .gbench/tree.tar.gz (scripts/gpu/prepare_bench.sh),
# not this checkout. Knobs: SECONDS_PER (segment length, 10), REPEATS (segments per path, 2),
# VLLM_STREAMS, LLAMA_STREAMS, PROFILE_STREAMS (64), PARALLEL (llama-server slots, 64).
set -uo pipefail
G=/tmp/gpu
S=/tmp/vllm-stage
T=/tmp/gbench
SECONDS_PER=${SECONDS_PER:-10}
REPEATS=${REPEATS:-2}
PROFILE_STREAMS=${PROFILE_STREAMS:-64}
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"

start_build() {  # llama.cpp's own server, CUDA for sm_90 (docs/gpu.md, "llama.cpp with CUDA")
  command -v nvcc >/dev/null || export PATH=/usr/local/cuda/bin:$PATH
  rm -rf "$G" && mkdir -p "$G" && tar xzf .vllm/srv.tar.gz -C "$G" || return 1
  date +%s > "$G/build.start"
  # nice 19: the parts that follow and vLLM's start-up (torch.compile) come first; the benchmark
  # itself waits for build.rc, so no phase runs beside the compiler.
  setsid nohup nice -n 19 bash -c "cmake -S $G/llama.cpp -B $G/sbuild -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DBUILD_SHARED_LIBS=ON -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_OPENSSL=OFF -Wno-dev && cmake --build $G/sbuild -j 16 --target llama-server; \
    echo \$? > $G/build.rc.tmp; date +%s > $G/build.end; mv $G/build.rc.tmp $G/build.rc" \
    > "$G/build.log" 2>&1 < /dev/null &
  echo "llama-server build started in the background ($G/build.log)"
}

tree() {  # the committed tree, and the environment every run uses
  [ -f "$S/installed" ] || { echo "vLLM is not installed on this machine: send the parts again from part 1"; exit 3; }
  rm -rf "$T" && mkdir -p "$T" && tar xzf .gbench/tree.tar.gz -C "$T" || exit 4
  COMMIT=$(cat .gbench/COMMIT)
  cd "$T" || exit 4
  export PYTHONPATH=/tmp/site:$T PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
  export VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
  echo "tree $COMMIT; $(nvidia-smi -L); $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg)"
}

bench() {  # bench TAG ARGS...: bench_gpu.py with the common options; profile folder packed as one file
  local tag=$1; shift
  rm -rf /tmp/outpost-gpu-* "$G/prof-$tag"
  timeout "${BENCH_TIMEOUT:-540}" python3 bench/bench_gpu.py "$@" --seconds "$SECONDS_PER" --repeats "$REPEATS" \
    --profile-streams "$PROFILE_STREAMS" --profile-seconds 15 --profile-dir "$G/prof-$tag" \
    --commit "$COMMIT" --json "$OUT/bench-$tag.json" --keep --no-write
  local rc=$?
  echo "### bench $tag exit $rc"
  tar czf "$OUT/prof-$tag.tar.gz" -C "$G" "prof-$tag" 2>/dev/null
  local st; st=$(ls -d /tmp/outpost-gpu-* 2>/dev/null | tail -1)
  if [ -n "$st" ]; then
    tail -c 3000 "$st/runner/runner.log"
    { tail -c 8000 "$st/runner/logs/engine.log" "$st/llama-server.log" 2>/dev/null
      tail -c 8000 "$st"/cp/control-plane-*.log; } > "$OUT/logs-$tag.txt" 2>&1
  fi
  return $rc
}

case "${1:-}" in
  part)
    N=$((10#$2))
    bash scripts/gpu/vllm_part.sh "$N" || exit $?
    [ "$N" = 1 ] && { start_build || exit 5; }
    [ -f "$G/build.rc" ] && echo "build finished: rc $(cat $G/build.rc)" || echo "build: $(tail -c 200 $G/build.log | tr '\r\n' '  ' | grep -o '\[[0-9]*/[0-9]*\]' | tail -1)"
    ;;
  vllm)
    tree
    HF=/tmp/models/SmolLM2-135M-Instruct
    if [ ! -f "$HF/model.safetensors" ]; then
      python3 scripts/gpu/gguf_to_hf.py "$(ls $S/pack/*.gguf)" "$HF" 2>&1 | grep -v -E "de-quantizing|Loading weights|Writing model" || exit 5
    fi
    echo "### runner plan --model $HF"; COLUMNS=130 python3 -m outpost.runner.cli plan --model "$HF" | head -4
    bench vllm --engine vllm --model "$HF" --streams "${VLLM_STREAMS:-1,16,64,256}" --rounds 8 --rounds-single 32 \
      --max-tokens 128 --ready-timeout 420 --wait-file "$G/build.rc"
    ;;
  llama)
    tree
    while [ ! -f "$G/build.rc" ] && [ $SECONDS -lt 300 ]; do sleep 5; done
    echo "### llama-server build rc=$(cat $G/build.rc 2>/dev/null || echo running) in $(( $(cat $G/build.end 2>/dev/null || date +%s) - $(cat $G/build.start) )) s"
    [ "$(cat $G/build.rc 2>/dev/null)" = 0 ] || { tail -c 3000 "$G/build.log"; exit 5; }
    "$G/sbuild/bin/llama-server" --version 2>&1 | tail -2
    bench llama --model "$(ls $S/pack/*.gguf)" --llama-server "$G/sbuild/bin/llama-server" \
      --parallel "${PARALLEL:-64}" --streams "${LLAMA_STREAMS:-1,16,64}" --max-tokens 128 --ready-timeout 120
    ;;
  *)
    echo "usage: bash scripts/gpu/bench_all.sh part N | vllm | llama"; exit 2 ;;
esac
