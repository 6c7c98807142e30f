#!/usr/bin/env bash
# Make what one device call needs for issue 16's figures, here, once (both are git-ignored):
#   .whl/      the cp312 wheels of bench/device_wheels.txt (the device has Python 3.12 and no network);
#   .devdata/  synth (from data/synth, after `dvc repro`) and FER+ dev faces (../shared/realdata), each with
#              labels, plan, VA and KNN, shards and tables only (about 40 MB with the wheels).
# usage: bench/device_prep.sh [FERPLUS_ARCHIVE]    then: bench/gpu_figures.sh (see its header)
set -euo pipefail
cd "$(dirname "$0")/.."
archive=${1:-../shared/realdata/ferplus-dev.tar.gz}
export NO_ALBUMENTATIONS_UPDATE=1 DVC_NO_ANALYTICS=1
for ignored in /.whl/ /.devdata/; do grep -qxF "$ignored" .git/info/exclude 2>/dev/null || echo "$ignored" >>.git/info/exclude; done

platforms=()
for p in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do platforms+=(--platform "${p}_x86_64"); done
grep -v '^#' bench/device_wheels.txt | xargs python3 -m pip download -q --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp "${platforms[@]}" --platform any -d .whl

slim() {  # copy a built dataset folder without its raw and aligned images
  mkdir -p "$2" && cp "$1"/*.parquet "$2"/ && cp -r "$1"/shards "$2"/
}
[ -f data/synth/plan.parquet ] || { echo "data/synth is not built: run dvc repro first" >&2; exit 1; }
rm -rf .devdata && slim data/synth .devdata/synth

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
F=(--data "$work/ferplus" --params pipelines/ferplus/params.yaml)
ferdata download ferplus --from "$archive" --data "$work/ferplus"
ferdata align "${F[@]}" --detector none --size 64
ferdata shard "${F[@]}"
ferdata noise "${F[@]}" --ratio 0
ferdata sample "${F[@]}" --per-class 3000   # 8 classes: epochs of 24,000 samples, as issue 16 measured
ferdata prior "${F[@]}" --folds 2 --epochs 3   # out-of-fold CE posteriors -> pseudo VA, so LDLVA has
                                                # neighbours to time (their quality does not matter here)
ferdata va "${F[@]}" --source circumplex
slim "$work/ferplus" .devdata/ferplus
du -sh .whl .devdata
