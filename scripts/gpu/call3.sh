#!/bin/bash
# Call 3, two-GPU machine: detect and plan. The SmolLM2 GGUF travels only in part here
# (the carry limit): its first 40 MB (header and metadata) are extended as a sparse file to
# the real size, which is all the planner reads. Carried: .whl, .gpu1.
source scripts/gpu/common.sh
date -u; nvidia-smi -L; python3 --version; nproc; free -g | head -2
M="$G/models/SmolLM2-135M-Instruct.Q4_1.gguf"; mkdir -p "$G/models"
cp .gpu1/smol.part1 "$M"; truncate -s 98362432 "$M"
python3 -c "import fastapi, uvicorn, websockets, pydantic, sqlalchemy, typer, rich, gguf, pynvml, psutil; print('imports ok')"
echo "### \$ runner detect --json"; runner detect --json | tee "$OUT/detect-2gpu.json"
echo "### \$ runner detect"; COLUMNS=130 runner detect
python3 scripts/gpu/make_models.py "$G/models"
COLUMNS=130 plans 2gpu "$M" "$G/models/hf/Llama-3.1-8B-Instruct" "$G/models/hf/Llama-3.1-70B-Instruct" \
  "$G/models/synthetic/Llama-3.1-70B-Instruct-header-only.F16.gguf"
