#!/bin/bash
# Call 1, one-GPU machine: start the CUDA build of llama-cpp-python in the background
# (it outlives this call: setsid), run detect and the HF/synthetic plans meanwhile,
# then wait for the build. Carried: .whl (wheels), .gpu1 (stripped sdist, first 40 MB of the GGUF).
source scripts/gpu/common.sh
date -u; nvidia-smi -L; nvcc --version | tail -2; cmake --version | head -1; echo "ninja $(ninja --version)"
python3 --version; nproc; free -g | head -2; df -h /tmp | tail -1
cp .gpu1/smol.part1 "$G/"; tar xzf .gpu1/lcp-strip.tar.gz -C "$G"
du -sh "$G/lcp"
cd "$G/lcp" || exit 1
date +%s > "$G/build.start"
setsid nohup bash -c "cmake -S . -B $G/build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAVA_BUILD=OFF -DSKBUILD_PLATLIB_DIR=$G/plat -DCMAKE_INSTALL_PREFIX=$G/inst -Wno-dev \
  && cmake --build $G/build -j 18 && cmake --install $G/build > $G/install.log; echo \$? > $G/build.rc; date +%s > $G/build.end" \
  > "$G/build.log" 2>&1 < /dev/null &
cd "$R"
sleep 2
python3 -c "import fastapi, uvicorn, websockets, pydantic, sqlalchemy, typer, rich, gguf, pynvml, psutil, httptools; print('imports ok')"
echo "### \$ runner detect --json"; runner detect --json | tee "$OUT/detect-1gpu.json"
echo "### \$ runner detect"; COLUMNS=130 runner detect
python3 scripts/gpu/make_models.py "$G/models"
COLUMNS=130 plans 1gpu "$G/models/hf/Llama-3.1-8B-Instruct" "$G/models/hf/Llama-3.1-70B-Instruct" \
  "$G/models/synthetic/Llama-3.1-70B-Instruct-header-only.F16.gguf"
echo "### build: configure"; grep -E "CUDA|cuBLAS|cublas|Error|error" "$G/build.log" | head -20
while [ ! -f "$G/build.rc" ] && [ $SECONDS -lt 545 ]; do
  sleep 10; [ $((SECONDS % 60)) -lt 10 ] && echo "t=$SECONDS $(tail -c 300 $G/build.log | tr '\r' '\n' | grep '^\[' | tail -1)"
done
echo "### build after ${SECONDS}s of this call: rc=$(cat $G/build.rc 2>/dev/null || echo running)"
tail -c 3000 "$G/build.log"
if [ -f "$G/build.rc" ]; then
  echo "build seconds: $(( $(cat $G/build.end) - $(cat $G/build.start) ))"
  ls -la "$G/lcp/llama_cpp/lib"
  python3 -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__, 'gpu offload:', llama_cpp.llama_supports_gpu_offload())"
fi
cp "$G/build.log" "$OUT/build.log" 2>/dev/null
