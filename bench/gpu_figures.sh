#!/usr/bin/env bash
# The GPU figures of issue 16 in one call on a CUDA machine (about 6-8 minutes on one H100/H200):
#   1. bench/train_throughput.py on FER+ faces: resnet18, 64 px, batch 128, 12 workers, ce/ldlva/akt,
#      the old path (fp32, albumentations in the workers) against the default (bf16, kornia on the GPU);
#   2. accuracy at the new precision: synth at 30% noise, ce and ldlva, precision fp32 vs auto (bf16),
#      same data, seed and budget (bench/noise_robustness.py, 20 epochs, no prior: --folds 0).
# usage: bench/gpu_figures.sh SYNTH_DIR FERPLUS_DIR OUT   (built folders: download, align, shard, va)
set -uo pipefail
synth=$1 ferplus=$2 out=$3
py=${PYTHON:-python}
mkdir -p "$out"
(cd bench && "$py" train_throughput.py --data "$ferplus" --backbone resnet18 --batch 128 --workers 12 \
  --epochs 3 --out "$out/train_throughput.json") >"$out/train_throughput.log" 2>&1
for p in fp32 auto; do
  OMP_NUM_THREADS=2 "$py" bench/noise_robustness.py --data "$synth" --params params.yaml --ratios 0.3 \
    --methods ce ldlva --va dataset --folds 0 --epochs 20 --set train.precision=$p --set train.workers=6 \
    --out "$out/precision_$p.json" >"$out/precision_$p.log" 2>&1 &
done
wait
cat "$out/train_throughput.log" | tail -40
for p in fp32 auto; do echo "precision $p"; tail -6 "$out/precision_$p.log"; done
