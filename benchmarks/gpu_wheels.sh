#!/usr/bin/env bash
# Run HERE (with network), before a device run of benchmarks/gpu_check.sh. The lent GPU machine has torch,
# transformers, numpy, scipy, pyarrow, safetensors, sentencepiece, protobuf, tqdm and huggingface_hub, but no network and
# no polars or pydantic. This fills .gpu-bundle/ (ignored by git, so it travels only when `carry` names it):
#   wheels/     polars, pydantic and their own needs, at the versions of this checkout's .venv, for the
#               device's CPython 3.12 on x86-64 (about 51 MiB of the 64 MiB a device call may carry)
#   data/       beauty/sequential.txt + datamaps.json, checked against the mirror's SHA256SUMS
#   t5-small/   the t5-small tokenizer and config (no weights: the check trains from random init)
#
#   bash benchmarks/gpu_wheels.sh [SHARED]     # SHARED: the folder holding data/ and t5-small/ (default ../shared)
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${1:-../shared}
BUNDLE=${BUNDLE:-.gpu-bundle}
PY=${PYTHON:-.venv/bin/python}
DEVICE_PYTHON=${DEVICE_PYTHON:-3.12}  # the device image's python3 (KINDS.md)
PACKAGES=(polars polars-runtime-32 pydantic pydantic-core annotated-types typing-inspection typing-extensions)

pins=()
for name in "${PACKAGES[@]}"; do
    if version=$("$PY" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$name" 2>/dev/null); then
        pins+=("$name==$version")
    else
        echo "skipping $name: not installed in $PY's environment" >&2   # e.g. polars-runtime-32 before polars 1.34
    fi
done

rm -rf "$BUNDLE/wheels"
mkdir -p "$BUNDLE/wheels" "$BUNDLE/data/beauty" "$BUNDLE/t5-small"
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$tag")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$DEVICE_PYTHON" --implementation cp \
    "${platforms[@]}" -d "$BUNDLE/wheels" "${pins[@]}"

install -m 644 "$SHARED/data/beauty/sequential.txt" "$SHARED/data/beauty/datamaps.json" "$BUNDLE/data/beauty/"
grep ' beauty/' "$SHARED/data/SHA256SUMS" | (cd "$BUNDLE/data" && sha256sum --quiet -c -)
install -m 644 "$SHARED"/t5-small/* "$BUNDLE/t5-small/"

ls "$BUNDLE/wheels"
du -sh "$BUNDLE"
# a device call carries the working tree and the bundle, 64 MiB in all: say so here rather than at the lease
bundle_bytes=$(du -sb "$BUNDLE" | cut -f1)
tree_bytes=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null | tail -n 1 | cut -f1)
total_mib=$(( (bundle_bytes + tree_bytes) / 1048576 ))
echo "bundle + working tree: ${total_mib} MiB of the 64 MiB a device call carries"
if [ "$total_mib" -ge 64 ]; then
    echo "too large for one device call: drop a package from PACKAGES or files from the tree" >&2
    exit 1
fi
echo "device run: command 'bash benchmarks/gpu_check.sh', carry ['$BUNDLE'], timeout_s 600"
