#!/usr/bin/env bash
# Issue 16's GPU figures and CUDA tests in one device call (9.5 minutes at most, by the step limits below):
#   0. the carried wheels (.whl/, see bench/device_prep.sh; WHEELS= names another folder, or none) are
#      installed when present;
#   1. the CUDA tests (tests/ -m cuda) beside
#   2. accuracy at the new precision: synth at 30% noise, ce and ldlva, precision fp32 vs auto (bf16), same
#      data, seeds and budget (bench/precision_parity.py: seeds 0-2, 20 epochs, six runs at a time; three
#      seeds catch only a gross loss, see its docstring and the README for the CPU figures over 20 seeds;
#      SEEDS=none skips it, SEEDS=0-9 runs more);
#   3. then, alone on the machine, bench/train_throughput.py on FER+ faces: resnet18, 64 px, batch 128,
#      12 workers, ce/ldlva/akt, the old path (fp32, albumentations in the workers) against the default
#      (bf16, kornia on the GPU) and bf16 with albumentations in the workers; two epochs of 24,000 each,
#      the second timed.
# Every step has its own time limit, so one that hangs cannot eat the lease; logs and JSON go to OUT.
# usage: bench/gpu_figures.sh SYNTH_DIR FERPLUS_DIR OUT   (folders from bench/device_prep.sh: .devdata/*)
# OUT gets some 30 files and a device call brings back 8, so on the device write elsewhere and pack:
#   bash bench/gpu_figures.sh .devdata/synth .devdata/ferplus /tmp/fig; tar czf $OUT/gpu_figures.tgz -C /tmp fig
# env: PYTHON (python3); SMOKE=1 runs every step at toy sizes, on a CPU too, to check the script before a
#      lease is spent on it (tests/test_bench.py does).
set -uo pipefail
mkdir -p "$3"
synth=$(realpath "$1") ferplus=$(realpath "$2") out=$(realpath "$3")  # step 3 runs from bench/
py=${PYTHON:-python3}
export NO_ALBUMENTATIONS_UPDATE=1 DVC_NO_ANALYTICS=1 PYTHONUNBUFFERED=1
export FERDATA_SUITES=off  # the great-expectations table suites check tables, not the GPU: not carried
wheels=${WHEELS-.whl}
if [ -n "$wheels" ] && compgen -G "$wheels/*.whl" >/dev/null; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$wheels"/*.whl \
    || { echo "installing $wheels/ failed" >&2; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
  torch.cuda.get_device_name() if torch.cuda.is_available() else '')" | tee "$out/device.txt"

if [ "${SMOKE:-0}" = 1 ]; then
  epochs=1 workers=2 seeds=0
  T=(--backbone small_cnn --batch 16 --workers 2 --epochs 1 --steps 2 --loader-samples 64 --methods ce akt)
else
  epochs=20 workers=4 seeds=${SEEDS:-0-2}
  T=(--backbone resnet18 --batch 128 --workers 12 --epochs 2)
fi

timeout 240 "$py" -m pytest -q -p no:cacheprovider -m cuda tests >"$out/cuda_tests.log" 2>&1 &
[ "$seeds" = none ] || OMP_NUM_THREADS=1 timeout 240 "$py" bench/precision_parity.py --data "$synth" --params params.yaml --methods ce ldlva \
  --precisions fp32,auto --seeds "$seeds" --epochs $epochs --jobs 6 --set train.workers=$workers --out "$out/precision" \
  >"$out/precision.log" 2>&1 &
wait
(cd bench && timeout 330 "$py" train_throughput.py --data "$ferplus" "${T[@]}" --out "$out/train_throughput.json") \
  >"$out/train_throughput.log" 2>&1
status=$?

echo "== CUDA tests"; tail -4 "$out/cuda_tests.log"
echo "== precision"; tail -30 "$out/precision.log"
echo "== throughput (exit $status)"; tail -40 "$out/train_throughput.log"
{ [ "$seeds" = none ] || [ -f "$out/precision/summary.json" ]; } && [ -f "$out/train_throughput.json" ]
