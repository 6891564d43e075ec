#!/bin/bash
# On the GPU machine: receive part N of scripts/gpu/prepare_vllm.sh's pack (carried as .vllm/part.NN
# with .vllm/SHA256SUMS and .vllm/COUNT), one part per call to the same warm machine. On the last
# part, unpack, install every wheel with `pip install --no-index --no-deps --target /tmp/site`, and
# check `import vllm` and the GGUF's SHA-256.
#
#   bash scripts/gpu/vllm_part.sh N
#
# Exit 3: part N > 1 found no earlier parts (the machine was given back and this one is fresh, or a
# call was skipped): start over from part 1, which always begins cleanly.
set -euo pipefail
N=$((10#$1))
S=/tmp/vllm-stage
P=$(printf 'part.%02d' "$N")
COUNT=$(cat .vllm/COUNT)
if [ "$N" = 1 ]; then
  rm -rf "$S" /tmp/site && mkdir -p "$S"
elif [ "$(cat "$S/next" 2>/dev/null)" != "$N" ]; then
  echo "part $N: this machine has parts up to $(( $(cat "$S/next" 2>/dev/null || echo 1) - 1 )), not $((N - 1)):" \
       "it was given back midway or a call was skipped; start over from part 1"
  exit 3
fi
[ -f ".vllm/$P" ] || { echo "part $N was not carried (.vllm/$P)"; exit 2; }
(cd .vllm && grep " $P\$" SHA256SUMS | sha256sum -c --quiet) || { echo "part $N: SHA-256 mismatch"; exit 4; }
mv ".vllm/$P" "$S/$P" 2>/dev/null || cp ".vllm/$P" "$S/$P"
echo $((N + 1)) > "$S/next"
echo "part $N of $COUNT received and checked ($(stat -c %s "$S/$P") bytes); $(df -h /tmp | awk 'NR==2{print $4}') free"
[ "$N" = "$COUNT" ] || exit 0

t0=$SECONDS
mkdir -p "$S/pack"
cat "$S"/part.* | tar xf - -C "$S/pack"
rm -f "$S"/part.*
(cd "$S/pack" && sha256sum -c --quiet model.sha256) || { echo "model SHA-256 mismatch"; exit 4; }
[ "$(ls "$S/pack/wheels" | wc -l)" = "$(cat "$S/pack/wheels.count")" ] || { echo "wheel count differs"; exit 4; }
echo "unpacked in $((SECONDS - t0)) s: $(ls "$S/pack/wheels" | wc -l) wheels, $(du -sh "$S/pack" | cut -f1)"
t1=$SECONDS
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  "$S"/pack/wheels/*.whl
echo "pip install --no-index --no-deps --target /tmp/site: $((SECONDS - t1)) s, $(du -sh /tmp/site | cut -f1)"
rm -rf "$S/pack/wheels"
PYTHONPATH=/tmp/site python3 -c "
import sys, time; t = time.time()
import torch, transformers, vllm
print('import vllm', vllm.__version__, 'from', vllm.__file__, f'({time.time() - t:.1f} s)')
print('python', sys.version.split()[0], sys.executable, '| torch', torch.__version__, 'CUDA', torch.version.cuda,
      torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '',
      '| transformers', transformers.__version__)"
touch "$S/installed"
