#!/usr/bin/env bash
# Rehearse a device run HERE, on the CPU, before a lease: the path of `bash benchmarks/gpu_check.sh` with what the
# lent machine has and nothing more. It makes a venv holding only the device image's packages that the check
# imports, at the image's versions where this machine's Python can take them (KINDS.md of the device tool, read
# 2026-11: transformers 5.17.0, huggingface_hub 1.33.0, safetensors 0.8.0, sentencepiece 0.2.2, tokenizers 0.23.2;
# protobuf, which transformers needs to read t5's spiece.model; torch 2.13.0, this machine's CPU build, for the
# image's 2.11.0+cu130, or TORCH=torch==2.11.0: PyPI's CUDA build, ~3 GB to fetch and 5 GB installed, which runs on the CPU too), no polars,
# pydantic, prefect or mlflow; fills a bundle for this Python with
# gpu_wheels.sh; then runs gpu_check.sh --smoke on it, which installs the bundle's wheels offline as on the device.
# Every section must end ok; the JSON and log land in $OUT (default /tmp/elmrec-gpu-rehearsal).
#
#   bash benchmarks/gpu_rehearse.sh [SHARED]    # about 3 minutes the first time (the venv), 1-2 minutes after
#   TORCH=torch==2.11.0 REHEARSAL=/tmp/elmrec-gpu-rehearsal-211 bash benchmarks/gpu_rehearse.sh   # the image's torch
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${1:-../shared}
REHEARSAL=${REHEARSAL:-/tmp/elmrec-gpu-rehearsal}
OUT=${OUT:-$REHEARSAL}
PYTHON=${BASE_PYTHON:-python3}
VENV="$REHEARSAL/venv"
TORCH=${TORCH:-torch==2.13.0}  # the CPU build this machine keeps on disk (an unpinned torch is CUDA's)
PINNED=(transformers==5.17.0 huggingface_hub==1.33.0 safetensors==0.8.0 sentencepiece==0.2.2 tokenizers==0.23.2)
OTHERS=(numpy scipy pyarrow protobuf tqdm psutil pyyaml)

mkdir -p "$REHEARSAL" "$OUT"
if [ ! -x "$VENV/bin/python3" ]; then
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install -q "$TORCH"
    "$VENV/bin/pip" install -q "${PINNED[@]}" "${OTHERS[@]}"
fi
# as bare as the device: its image has neither (here typer, which huggingface_hub's CLI needs, pulls pydantic in)
"$VENV/bin/pip" uninstall -q -y pydantic pydantic-core polars polars-runtime-32 prefect mlflow 2>/dev/null || true
version=$("$VENV/bin/python3" -c 'import sys; print(f"{sys.version_info.major}.{sys.version_info.minor}")')
BUNDLE="$REHEARSAL/bundle" DEVICE_PYTHON="$version" bash benchmarks/gpu_wheels.sh "$SHARED" > "$REHEARSAL/wheels.log"
rm -rf /tmp/elmrec-site   # gpu_check.sh's offline install target: start as bare as the device
rm -rf "$REHEARSAL/work"
PATH="$VENV/bin:$PATH" BUNDLE="$REHEARSAL/bundle" OUT="$OUT" \
    bash benchmarks/gpu_check.sh --smoke --workdir "$REHEARSAL/work" > "$OUT/rehearsal.log" 2>&1
"$VENV/bin/python3" - "$OUT/gpu_check.json" <<'EOF'
import importlib.util, json, sys
report = json.load(open(sys.argv[1]))
meta, sections = report["meta"], report["sections"]
present = [name for name in ("prefect", "mlflow", "polars", "pydantic") if importlib.util.find_spec(name)]
print(f"rehearsal: torch {meta['torch']}, transformers {meta['transformers']}; installed in the venv, of prefect, "
      f"mlflow, polars and pydantic: {present or 'none'} (the bundle's wheels bring polars and pydantic)")
failed = [name for name, section in sections.items() if not section["ok"]] + present
for name, section in sections.items():
    print(f"  {name}: {'ok' if section['ok'] else 'FAILED: ' + str(section.get('error'))}")
sys.exit(1 if failed else 0)
EOF
