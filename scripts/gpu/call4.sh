#!/bin/bash
# Call 4, a fresh one-GPU machine: build llama.cpp (the same source llama-cpp-python 0.3.36
# vendors) standalone with CUDA for sm_90: libllama/libggml* and llama-server (no web UI).
# The libraries also go under the llama_cpp Python package, so llama-cpp-python's server
# runs on this same build. Carried: .whl, .gpu3 (sources, first 40 MB of the GGUF).
source scripts/gpu/common.sh
date -u; nvidia-smi -L; nvcc --version | tail -1; cmake --version | head -1
cp .gpu3/smol.part1 "$G/"; tar xzf .gpu3/srv.tar.gz -C "$G"
date +%s > "$G/build.start"
setsid nohup bash -c "cmake -S $G/llama.cpp -B $G/sbuild -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90 -DBUILD_SHARED_LIBS=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -Wno-dev \
  && cmake --build $G/sbuild -j 18 --target llama-server; echo \$? > $G/build.rc; date +%s > $G/build.end" \
  > "$G/build.log" 2>&1 < /dev/null &
while [ ! -f "$G/build.rc" ] && [ $SECONDS -lt 560 ]; do
  sleep 10; [ $((SECONDS % 60)) -lt 10 ] && echo "t=$SECONDS $(tail -c 300 $G/build.log | tr '\r' '\n' | grep '^\[' | tail -1)"
done
echo "### build after ${SECONDS}s: rc=$(cat $G/build.rc 2>/dev/null || echo running)"
tail -c 2500 "$G/build.log"; cp "$G/build.log" "$OUT/build4.log"
if [ "$(cat $G/build.rc 2>/dev/null)" = 0 ]; then
  echo "build seconds: $(( $(cat $G/build.end) - $(cat $G/build.start) ))"
  mkdir -p "$G/lcp/llama_cpp/lib"; cp -a "$G"/sbuild/bin/lib*.so* "$G/lcp/llama_cpp/lib/"; ls -la "$G/lcp/llama_cpp/lib" "$G/sbuild/bin"
  "$G/sbuild/bin/llama-server" --version
  python3 -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__, 'gpu offload:', llama_cpp.llama_supports_gpu_offload())"
fi
