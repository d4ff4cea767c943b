#!/usr/bin/env bash
# On the device machine, after receive.sh has kept every part: the GPU check of issue 5.
#   1. onnxruntime-gpu installed from the carried wheel (the machine reaches no registry);
#   2. `igrec parity` with the CUDA provider on the whole Diginetica test split (the export's bar);
#   3. the same with the float16 item product (figures only: fp16 is not held to the fp32 bar);
#   4. bench/bench_scorer.py on the GPU: PyTorch eager CUDA against onnxruntime CUDA, batch 1/32/256/4096.
# Everything it prints is also written under $OUT (check.log, parity_*.json, bench.json); it ends with a
# summary of the parity figures and of issue 5's GPU targets.
# Rehearsal on a CPU machine: IGREC_DEVICE_PROVIDER=cpu IGREC_DEVICE_PYTHON=.venv/bin/python OUT=/tmp/o \
#   bash -c 'for i in .device/*/; do bash bench/gpu/receive.sh $(basename $i); done; bash bench/gpu/check.sh'
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/igrec-device-out}
hold=${IGREC_DEVICE_HOLD:-/tmp/igrec-device}
provider=${IGREC_DEVICE_PROVIDER:-cuda}
py=${IGREC_DEVICE_PYTHON:-python3}
cases=${IGREC_DEVICE_CASES:-0}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
say() { echo "[$(date -u +%T)] $*" | tee -a "$OUT/check.log"; }
step() { say "\$ $*"; "$@" 2>&1 | tee -a "$OUT/check.log"; local rc=${PIPESTATUS[0]}; say "exit $rc"; return "$rc"; }

cat "$hold"/part.* > "$hold/payload.tgz"
(cd "$hold" && sha256sum -c payload.sha256) || { say "payload checksum mismatch: a part is missing"; exit 3; }
tar xzf "$hold/payload.tgz" -C "$hold" || exit 3
if [ -z "${IGREC_DEVICE_PYTHON:-}" ]; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$hold"/wheel/*.whl || { say "onnxruntime-gpu did not install"; exit 4; }
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if [ "$provider" != cpu ]; then
  # the CUDA 13 libraries of the machine's own nvidia-* packages (those its torch uses)
  purelib=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  libs=$(find "$purelib/nvidia" -maxdepth 3 -type d -name lib 2>/dev/null | paste -sd:)
  export LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  cuda_ep=$(find /tmp/site/onnxruntime/capi -name 'libonnxruntime_providers_cuda.so' 2>/dev/null | head -1)
  [ -n "$cuda_ep" ] && step bash -c "ldd '$cuda_ep' | grep -E 'not found|cublas|cudart|curand' || true"
fi
say "code at $(cat "$hold/commit" 2>/dev/null || echo unknown); $(nproc) cores"
command -v nvidia-smi >/dev/null && step nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
step "$py" -c "import torch, onnxruntime as o; print('torch', torch.__version__, torch.cuda.is_available(), \
'| onnxruntime', o.__version__, o.get_available_providers())"

common=(--checkpoint "$hold/best.pt" --data "$hold/data" --provider "$provider")
step timeout 240 "$py" -m export.cli parity "$hold/artefact" "${common[@]}" --cases "$cases" \
  --json "$OUT/parity_$provider.json"
parity=$?
if [ "$provider" != cpu ]; then
  step timeout 120 "$py" -m export.cli parity "$hold/artefact" "${common[@]}" --cases 20000 --fp16 \
    --min-identical 0 --min-same-set 0 --max-diff 1 --json "$OUT/parity_${provider}_fp16.json"
  fp16=(--fp16)
else
  fp16=()
fi
step timeout 240 "$py" bench/bench_scorer.py --artefact "$hold/artefact" "${common[@]}" "${fp16[@]}" \
  --threads "$(nproc)" --json "$OUT/bench.json"
bench=$?
step "$py" - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for name in sorted(out.glob("parity_*.json")):
    r = json.loads(name.read_text())
    print(f"{name.stem}: identical {100 * r['identical']:.3f} %, same set {100 * r['same_set']:.3f} %, "
          f"max |score diff| {r['max_score_diff']:.2e}, {r['cases']} cases, passed {r['passed']}")
bench = out / "bench.json"
rows = {r["batch"]: r for r in json.loads(bench.read_text())["rows"]} if bench.exists() else {}
for runtime in ("onnxruntime", "onnxruntime + buckets", "onnxruntime fp16", "onnxruntime fp16 + buckets"):
    big, one = rows.get(4096, {}).get(runtime), rows.get(1, {}).get(runtime)
    big_txt = f"{big['sessions_per_s']:,.0f} sessions/s at batch 4096 (target >= 1,000,000)" if big else "no batch 4096"
    one_txt = f"p99 {one['p99_ms']:.2f} ms at batch 1 (target <= 2)" if one else "no batch 1"
    print(f"{runtime}: {big_txt}; {one_txt}")
PY
say "parity exit $parity, bench exit $bench"
[ "$parity" -eq 0 ] && [ "$bench" -eq 0 ]
