#!/usr/bin/env bash
# Rebuild the bundled default model from scratch, as it was made (training/configs/default_model.yaml and
# default_model_phase2/3_lowres/4/6_swa.yaml say which data and why), export its ONNX variants, score it on the held-out
# sample and on every real case, and run the ablations (lits117_roi128 held out: synthetic tumors only; the phase-1
# recipe without synthetic tumors, without the MSD slices, without the TotalSegmentator cases; the whole chain without
# one fold of the MSD slice patients, scored on them).
#   scripts/make_default_model.sh              train + export + evaluate (about 6 h on a 2-core CPU)
#   SKIP_TRAIN=1 scripts/make_default_model.sh export + evaluate the existing runs/default_model_phase6_swa
#   SKIP_ABLATION=1 ...                         without the ablation training runs
# The shared data folder (shared/data beside the repository) must be there: the training cases list reads it.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python}
out=python/resunet_trt/models/default
run=runs/default_model_phase6_swa  # phases 1-4 and 6 (default_model*.yaml), each from the previous weights: the shipped model
# One thread each: on a shared CPU, two OpenMP threads spin-wait for each other (training/configs: threads 1).
export OMP_NUM_THREADS=1
if [ -z "${SKIP_TRAIN:-}" ]; then
  "$python" training/train.py --config training/configs/default_model.yaml --no-progress
  "$python" training/train.py --config training/configs/default_model_phase2.yaml --no-progress
  "$python" training/train.py --config training/configs/default_model_phase3_lowres.yaml --no-progress
  "$python" training/train.py --config training/configs/default_model_phase4.yaml --no-progress
  # Phase 6: 24 epochs at a constant low rate, the weights of the last 21 averaged (SWA); its last.pt is the average.
  "$python" training/train.py --config training/configs/default_model_phase6_swa.yaml --no-progress
  if [ -z "${SKIP_ABLATION:-}" ]; then
    "$python" training/train.py --config training/configs/ablation_no_lits117.yaml --no-progress
    "$python" training/train.py --config training/configs/ablation_no_synthetic.yaml --no-progress
    # each liver-only source left out of the phase-1 recipe in turn
    "$python" training/train.py --config training/configs/ablation_no_msd2d.yaml --no-progress
    "$python" training/train.py --config training/configs/ablation_no_totalseg.yaml --no-progress
    # phases 2-4 without synthetic tumors, from the no-synthetic phase 1
    prev=runs/ablation_no_synthetic
    for phase in phase2 phase3_lowres phase4; do
      "$python" training/train.py --config "training/configs/default_model_$phase.yaml" --no-progress \
        --run-dir "runs/no_synthetic_$phase" --override synthetic_tumors.probability=0.0 \
        --override "init_from=$prev/last.pt"
      prev="runs/no_synthetic_$phase"
    done
    # the whole chain without one fold of the MSD slice patients (their liver scored below), as shipped and with the
    # slices' clipped zeros given back air and fat, and the latter on every patient
    FOLD=0 PREFIX=runs/msd_fold0 scripts/msd_fold_chain.sh
    FOLD=0 ZERO_HU=-1000:-100 PREFIX=runs/msd_fold0_zero_hu scripts/msd_fold_chain.sh
    FOLD=none ZERO_HU=-1000:-100 PREFIX=runs/zero_hu_all scripts/msd_fold_chain.sh
    # the shipped recipe again with only the seed changed: how far one run moves the scores
    FOLD=none SEED=1 PREFIX=runs/seed1 scripts/msd_fold_chain.sh
  fi
fi
cp "$run/last.pt" "$out/resunet_default.pt"

# INT8 calibration on training cases only: the held-out case never shapes the model.
calib=$(mktemp -d)
trap 'rm -rf "$calib"' EXIT
mkdir -p "$calib/lits117" "$calib/totalseg"
cp tests/data/lits117_roi128/ct.nii.gz "$calib/lits117/ct.nii.gz"
cp tests/data/totalseg_abdomen3mm/ct.nii.gz "$calib/totalseg/ct.nii.gz"
# Coarse copies of the same two CTs (4 and 6 mm pixels): on the averaged weights of phase 6, float nodes chosen on
# the fine slices alone left OpenVINO INT8 at 99.24 % agreement on the coarse held-out case; with these it passes.
"$python" scripts/coarse_calibration_copy.py "$calib/lits117/ct.nii.gz" 4 "$calib/lits117_coarse/ct.nii.gz"
"$python" scripts/coarse_calibration_copy.py "$calib/totalseg/ct.nii.gz" 2 "$calib/totalseg_coarse/ct.nii.gz"
# Entropy and percentile calibration reach the same score on the calibration slices with their float nodes chosen
# (0.9889); entropy needs 15 float nodes instead of 23.
"$python" -m resunet_trt.export "$out/resunet_default.pt" -o "$out" --stem resunet_default --calib-data "$calib" \
  --method entropy --int8-float-nodes auto

# Every real case, every variant (benchmarks/results/real_cases_*.json), overlays of the fp32 model in docs/img/cases.
export OMP_NUM_THREADS=2
"$python" benchmarks/eval_real_cases.py --model "$out/resunet_default.pt" --backend torch \
  --json benchmarks/results/real_cases_default_pt.json --overlays docs/img/cases
"$python" benchmarks/eval_real_cases.py --model "$out/resunet_default.pt" --backend torch --tta \
  --json benchmarks/results/real_cases_default_pt_tta.json
# Without the lesion confidence floor (the phase and ablation rows below were measured so, before it existed).
"$python" benchmarks/eval_real_cases.py --model "$out/resunet_default.pt" --backend torch --min-lesion-confidence 0 \
  --json benchmarks/results/real_cases_default_pt_no_confidence_floor.json
"$python" benchmarks/lesion_confidence.py --json benchmarks/results/lesion_confidence.json
for variant in resunet_default.onnx resunet_default.fp16.onnx resunet_default.int8.onnx; do
  "$python" benchmarks/eval_real_cases.py --model "$out/$variant" --backend onnxruntime \
    --json "benchmarks/results/real_cases_${variant//./_}.json"
done
for ablation in ablation_no_lits117 ablation_no_synthetic no_synthetic_phase4 ablation_no_msd2d ablation_no_totalseg; do
  if [ -f "runs/$ablation/last.pt" ]; then
    "$python" benchmarks/eval_real_cases.py --model "runs/$ablation/last.pt" --backend torch --min-lesion-confidence 0 \
      --json "benchmarks/results/real_cases_$ablation.json"
  fi
done
# Each phase of the shipped model, as the model card's table shows them.
for r in default_model:phase1 default_model_phase2:phase2 default_model_phase3_lowres:phase3 default_model_phase4:phase4; do
  "$python" benchmarks/eval_real_cases.py --model "runs/${r%%:*}/last.pt" --backend torch --min-lesion-confidence 0 \
    --json "benchmarks/results/real_cases_${r##*:}.json"
done
# Phase 6 without the averaging: its plain last epoch (best.pt: the last validation, val.select_best is false).
"$python" benchmarks/eval_real_cases.py --model runs/default_model_phase6_swa/best.pt --backend torch --min-lesion-confidence 0 \
  --json benchmarks/results/real_cases_phase6_plain_epoch24.json

# The MSD slice patients of fold 0 (model card: "Unseen patients"): the bundled model (it saw them), the fold chains
# (they did not), the phase-1 recipe without any MSD slice on the slices as stored and with air and fat given back.
"$python" benchmarks/eval_slice_set.py --model "$out/resunet_default.pt" --json benchmarks/results/msd_fold0_default_pt_seen.json
if [ -f runs/ablation_no_msd2d/last.pt ]; then
  "$python" benchmarks/eval_slice_set.py --model runs/ablation_no_msd2d/last.pt --json benchmarks/results/msd_fold0_ablation_no_msd2d.json
  "$python" benchmarks/eval_slice_set.py --model runs/ablation_no_msd2d/last.pt --zero-hu=-1000:-100 \
    --json benchmarks/results/msd_fold0_ablation_no_msd2d_zero_hu_input.json
fi
for r in msd_fold0:recipe_fold0: msd_fold0_zero_hu:zero_hu_fold0:-1000:-100 zero_hu_all:zero_hu_all:-1000:-100 \
         seed1:seed1:; do
  IFS=: read -r dir label zero <<<"$r"
  [ -f "runs/$dir/phase6/last.pt" ] || continue
  zero_arg=()
  [ -n "$zero" ] && zero_arg=(--zero-hu="$zero")
  "$python" benchmarks/eval_slice_set.py --model "runs/$dir/phase6/last.pt" "${zero_arg[@]}" \
    --json "benchmarks/results/msd_fold0_$label.json"
  "$python" benchmarks/eval_real_cases.py --model "runs/$dir/phase6/last.pt" --backend torch \
    --json "benchmarks/results/real_cases_$label.json"
  "$python" benchmarks/eval_real_cases.py --model "runs/$dir/phase6/last.pt" --backend torch --min-lesion-confidence 0 \
    --json "benchmarks/results/real_cases_${label}_no_confidence_floor.json"
done
