#!/usr/bin/env bash
# Pack what the GPU check (issue 5) needs on a lent device machine, in parts that each fit one device call.
#
# The device machine reaches no package registry and has no onnxruntime-gpu; its wheel (~245 MiB, CUDA 13,
# the version requirements.lock pins) travels with the checkpoint, its artefact and the Diginetica split
# as one gzip payload cut into parts under .device/<i>/ (ignored by git), one part per call, since a call
# carries at most 64 MiB. The device keeps /tmp between calls only while it is warm (30 s after a call), so
# the calls must follow each other at once. See docs/export.md, "On a GPU".
#
# Usage: bash bench/gpu/pack.sh [CHECKPOINT] [ARTEFACT] [SPLIT]
#   defaults: runs/dig_refit_rec10x2_e6/best.pt artifacts/diginetica_rec ../shared/data/diginetica/srgnn_split
set -euo pipefail
cd "$(dirname "$0")/../.."
CHECKPOINT=${1:-runs/dig_refit_rec10x2_e6/best.pt}
ARTEFACT=${2:-artifacts/diginetica_rec}
SPLIT=${3:-../shared/data/diginetica/srgnn_split}
PART_MIB=${PART_MIB:-60}
PY=${PY:-.venv/bin/python}
for need in "$CHECKPOINT" "$ARTEFACT/card.json" "$SPLIT/test.tsv" "$SPLIT/train_sessions.txt"; do
  [ -e "$need" ] || { echo "pack.sh: $need is missing" >&2; exit 1; }
done
version=$(sed -n 's/^onnxruntime-gpu==//p' requirements.lock)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/payload/wheel" "$stage/payload/data"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  -d "$stage/payload/wheel" "onnxruntime-gpu==$version"
cp "$CHECKPOINT" "$stage/payload/best.pt"
cp -r "$ARTEFACT" "$stage/payload/artefact"
cp "$SPLIT/test.tsv" "$SPLIT/train_sessions.txt" "$stage/payload/data/"
echo "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!docs' || echo ' (modified)')" > "$stage/payload/commit"
tar czf "$stage/payload.tgz" -C "$stage/payload" .
rm -rf .device
mkdir -p .device
(cd "$stage" && split -b "${PART_MIB}M" -d -a 2 payload.tgz part.)
parts=("$stage"/part.*)
for i in "${!parts[@]}"; do
  mkdir -p ".device/$((i + 1))"
  mv "${parts[$i]}" ".device/$((i + 1))/"
done
last=${#parts[@]}
(cd "$stage" && sha256sum payload.tgz) > ".device/$last/payload.sha256"
echo "packed onnxruntime-gpu $version, $CHECKPOINT, $ARTEFACT and $SPLIT into $last parts:"
du -sh .device/*
echo
echo "device calls, back to back (each within 30 s of the last one's reply):"
for i in $(seq 1 $((last - 1))); do
  echo "  run(carry=[\".device/$i\"], command=\"bash bench/gpu/receive.sh $i\", timeout_s=120)"
done
echo "  run(carry=[\".device/$last\"], command=\"bash bench/gpu/receive.sh $last && bash bench/gpu/check.sh\", timeout_s=600)"
