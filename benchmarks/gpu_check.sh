#!/usr/bin/env bash
# Run ON the lent GPU machine, after benchmarks/gpu_wheels.sh filled .gpu-bundle/ here:
#   device run: command "bash benchmarks/gpu_check.sh", carry [".gpu-bundle"], timeout_s 600
# Installs the carried wheels offline into /tmp, then runs benchmarks/gpu_check.py (520 s on an H200 at first; now capped at 420 s)
# on the carried Beauty files and tokenizer. Writes $OUT/gpu_check.json (rewritten after every section) and
# $OUT/gpu_check.log. Extra arguments go to gpu_check.py (e.g. --sections paper_p5 --budget-s paper_p5=300).
set -uo pipefail
cd "$(dirname "$0")/.."
BUNDLE=${BUNDLE:-.gpu-bundle}
OUT=${OUT:-.}
SITE=/tmp/elmrec-site
if [ ! -d "$BUNDLE/wheels" ]; then
    echo "no $BUNDLE/wheels: run 'bash benchmarks/gpu_wheels.sh' on the development machine and carry $BUNDLE" >&2
    exit 2
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$BUNDLE"/wheels/*.whl || exit 2
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | tee "$OUT/gpu_check.log"
# 560 s: the device's 600 s per command, minus the install and a margin; the JSON keeps finished sections
timeout 560 python3 benchmarks/gpu_check.py --mirror "$BUNDLE/data" --model-mirror "$BUNDLE" \
    --json "$OUT/gpu_check.json" "$@" 2>&1 | tee -a "$OUT/gpu_check.log"
