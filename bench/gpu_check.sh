#!/usr/bin/env bash
# The GPU check on a GPU node (docs/gpu-check.md): wheels carried in $GPU_CHECK_WHEELS (default
# .whl/) are installed into a private directory first, then bench/gpu_check.py runs under an
# outer time limit. Arguments after the optional output directory go to gpu_check.py.
#
#   bash bench/gpu_check.sh                    # -> bench/results_gpu.json + bench/results_gpu.log
#   bash bench/gpu_check.sh "$OUT_DIR"         # -> $OUT_DIR/results_gpu.{json,log}
#   bash bench/gpu_check.sh "$OUT_DIR" --dry-run --set model.encoder=vit_tiny_patch16_224
#
# Environment: PYTHON (default python3), GPU_CHECK_WHEELS, GPU_CHECK_TIMEOUT_S (default 540:
# the script's own --deadline-s stops starting sections at 420 s).
set -euo pipefail
cd "$(dirname "$0")/.."

out_dir=bench
if [[ $# -gt 0 && $1 != -* ]]; then
    out_dir=$1
    shift
fi
python=${PYTHON:-python3}
wheels=${GPU_CHECK_WHEELS:-.whl}
site=""
if compgen -G "$wheels/*.whl" >/dev/null; then
    site=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-site.XXXXXX")
    echo "gpu_check.sh: installing $(ls "$wheels"/*.whl | wc -l) carried wheel(s) into $site" >&2
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --target "$site" "$wheels"/*.whl
fi
# The working tree's packages first, then the carried wheels, then the interpreter's own.
export PYTHONPATH="$PWD${site:+:$site}${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
mkdir -p "$out_dir"
exec timeout --signal=TERM --kill-after=20 "${GPU_CHECK_TIMEOUT_S:-540}" \
    "$python" bench/gpu_check.py --out "$out_dir/results_gpu.json" "$@"
