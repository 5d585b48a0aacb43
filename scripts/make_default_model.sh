#!/usr/bin/env bash
# Rebuild the bundled default model from scratch, as it was made (see the header of
# training/configs/default_model.yaml for the training phases), then export and score it.
#   scripts/make_default_model.sh            train + export + evaluate
#   SKIP_TRAIN=1 scripts/make_default_model.sh  export + evaluate the existing runs/default_model
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python}
out=python/resunet_trt/models/default
run=runs/default_model
if [ -z "${SKIP_TRAIN:-}" ]; then
  "$python" training/train.py --config training/configs/default_model.yaml --no-progress
  "$python" training/train.py --run-dir "$run" --resume --override optim.epochs=14 --no-progress
  "$python" training/train.py --run-dir "$run" --resume --override optim.epochs=74 --no-progress
fi
cp "$run/last.pt" "$out/resunet_default.pt"

# INT8 calibration on the training cases only: the held-out case never shapes the model.
calib=$(mktemp -d)
trap 'rm -rf "$calib" "$heldout"' EXIT
mkdir -p "$calib/lits117" "$calib/totalseg"
cp tests/data/lits117_roi128/ct.nii.gz "$calib/lits117/ct.nii.gz"
cp tests/data/totalseg_abdomen3mm/ct.nii.gz "$calib/totalseg/ct.nii.gz"
"$python" -m resunet_trt.export "$out/resunet_default.pt" -o "$out" --stem resunet_default --calib-data "$calib"

# Held-out score on the bundled sample (LiTS-derived, corrected spacing), one line per model variant.
heldout=$(mktemp -d)
mkdir -p "$heldout/lits_small64"
cp python/resunet_trt/samples/lits_small64_ct.nii.gz "$heldout/lits_small64/ct.nii.gz"
cp python/resunet_trt/samples/lits_small64_label.nii.gz "$heldout/lits_small64/label.nii.gz"
for variant in resunet_default.pt resunet_default.onnx resunet_default.int8.onnx; do
  "$python" -m resunet_trt.cli.eval --data "$heldout" --model "$out/$variant" --device cpu \
    -o "benchmarks/results/heldout_${variant//./_}" --no-progress
done
