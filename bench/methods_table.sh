#!/usr/bin/env bash
# The methods table of issue 15 as parallel jobs on one machine (a GPU box, or CPU cores, slowly):
#   synth (rated VA) at 0 and 30% symmetric noise: every method, LDLVA with the dataset's VA and with
#   pseudo VA (circumplex from the out-of-fold CE prior), cleanlab on that prior, LDLVA bank vs forward;
#   ARBEx with the official confidence gradient and with corrected prediction;
#   real FER+ faces (ferplus-dev, resnet18, 30% noise, pseudo VA): LDLVA's lambda_lr and CE.
# usage: bench/methods_table.sh SYNTH_DIR FERPLUS_DIR OUT   (built folders: download, align, shard, va)
# env: EPOCHS (20), LIMIT (seconds per job, 0: none), JOBS_ONLY (space-separated job names to run)
set -uo pipefail
synth=$1 ferplus=$2 out=$3
epochs=${EPOCHS:-20} limit=${LIMIT:-0}
mkdir -p "$out"
bench() {  # name, then the arguments of bench/noise_robustness.py
  local name=$1; shift
  if [ -n "${JOBS_ONLY:-}" ] && [[ " $JOBS_ONLY " != *" $name "* ]]; then return; fi
  local cmd=("${PYTHON:-python}" bench/noise_robustness.py --epochs "$epochs" --out "$out/$name.json" "$@")
  if [ "$limit" -gt 0 ]; then cmd=(timeout "$limit" "${cmd[@]}"); fi
  OMP_NUM_THREADS=2 "${cmd[@]}" >"$out/$name.log" 2>&1 &
}
S=(--data "$synth" --params params.yaml)
F=(--data "$ferplus" --params pipelines/ferplus/params.yaml --set train.backbone=resnet18 --va circumplex)
bench synth_r0.3_a "${S[@]}" --ratios 0.3 --methods ce ls ldlva --va dataset,circumplex
bench synth_r0.3_b "${S[@]}" --ratios 0.3 --methods arbex akt --va dataset --folds 0
bench synth_r0_a "${S[@]}" --ratios 0 --methods ce ls ldlva --va dataset,circumplex
bench synth_r0_b "${S[@]}" --ratios 0 --methods arbex akt --va dataset --folds 0
bench synth_arbex_variants "${S[@]}" --ratios 0.3 --methods arbex:confidence_grad=true arbex:predict=corrected --va dataset --folds 0
bench synth_forward "${S[@]}" --ratios 0.3 --methods ldlva:neighbour_mode=forward --va dataset --folds 0
bench synth_lambda100 "${S[@]}" --ratios 0.3 --methods ldlva:lambda_lr=100 --va dataset,circumplex
bench ferplus_a "${F[@]}" --ratios 0.3 --methods ce ldlva:lambda_lr=20
bench ferplus_b "${F[@]}" --ratios 0.3 --methods ldlva:lambda_lr=50 ldlva:lambda_lr=100
wait
"${PYTHON:-python}" - "$out" <<'PY'
import json, sys
from pathlib import Path
sys.path.insert(0, "bench")
from noise_robustness import print_table
for p in sorted(Path(sys.argv[1]).glob("*.json")):
    print(f"\n{p.stem}")
    print_table(json.loads(p.read_text()))
PY
