#!/usr/bin/env bash
# Train the default model's chain (phases 1-4 and 6, training/configs/default_model*.yaml) with one fold of the MSD
# slice set's patients held out, so that the recipe can be scored on ~24 patients it never saw
# (benchmarks/eval_slice_set.py). The shipped model trains on every patient; this run measures its recipe.
#   scripts/msd_fold_chain.sh                       fold 0 of 5, the recipe as shipped -> runs/msd_fold0
#   FOLD=1 MSD_WEIGHT=0.6 PREFIX=runs/x scripts/msd_fold_chain.sh   another fold, MSD slices weighted 0.6 per slice
#   ZERO_HU=-1000:-100 PREFIX=runs/msd_fold0_zero_hu scripts/msd_fold_chain.sh   the slices' clipped zeros given back
#                                                   as air outside the body and fat inside it (case-list zero_hu)
#   FOLD=none ZERO_HU=... PREFIX=runs/y scripts/msd_fold_chain.sh   every patient (no fold held out): a model to ship
#   FOLD=none SEED=1 PREFIX=runs/seed1 scripts/msd_fold_chain.sh   the shipped recipe again with another seed (its spread)
# Each phase's case list is the shipped one with the slice-set row given "fold=!FOLD/5" (and MSD_WEIGHT, ZERO_HU
# if set); the lists are written into the run folder with absolute paths.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python}
fold=${FOLD:-0}
prefix=${PREFIX:-runs/msd_fold$fold}
export OMP_NUM_THREADS=1
mkdir -p "$prefix"

# case list with the MSD patients of fold $fold left out: $1 the shipped list, $2 the output
held_out_list() {
  "$python" - "$1" "$2" "$fold" "${MSD_WEIGHT:-}" "${ZERO_HU:-}" <<'PY'
import csv, sys
from pathlib import Path
src, dst, fold, weight, zero_hu = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
rows = [r for r in csv.reader(src.open(newline="")) if r and not r[0].lstrip().startswith("#")]
header, body = rows[0], rows[1:]
header = header + [c for c in ("fold", "zero_hu") if c not in header]
out, found = [], 0
for r in body:
    cells = dict(zip(header, r + [""] * (len(header) - len(r))))
    for col in ("image", "label"):
        if cells[col]:
            cells[col] = str((src.parent / cells[col]).resolve())
    if (Path(cells["image"]) / "images").is_dir():  # the slice set
        cells["fold"] = "" if fold == "none" else f"!{fold}/5"
        cells["weight"] = weight or cells["weight"]
        cells["zero_hu"] = zero_hu
        found += 1
    out.append([cells[c] for c in header])
if found != 1:
    sys.exit(f"{src}: expected one slice-set row, found {found}")
with dst.open("w", newline="") as f:
    csv.writer(f).writerows([header] + out)
PY
}

prev=""
for step in default_model:phase1:default_model_cases default_model_phase2:phase2:default_model_phase2_cases \
            default_model_phase3_lowres:phase3:default_model_phase3_cases default_model_phase4:phase4:default_model_phase3_cases \
            default_model_phase6_swa:phase6:default_model_phase3_cases; do
  IFS=: read -r config phase cases <<<"$step"
  held_out_list "training/configs/$cases.csv" "$prefix/${phase}_cases.csv"
  args=(--config "training/configs/$config.yaml" --no-progress --run-dir "$prefix/$phase"
        --override "data.sources=[$prefix/${phase}_cases.csv]")
  [ -n "$prev" ] && args+=(--override "init_from=$prev/last.pt")
  [ -n "${SEED:-}" ] && args+=(--override "seed=$SEED")
  if [ -f "$prefix/$phase/last.pt" ] && [ -f "$prefix/$phase/done" ]; then
    echo "== $phase: done already ($prefix/$phase/last.pt)"
  else
    echo "== $phase: $(date -u +%H:%M:%S)"
    "$python" training/train.py "${args[@]}"
    touch "$prefix/$phase/done"
  fi
  prev="$prefix/$phase"
done
echo "== finished $(date -u +%H:%M:%S): $prev/last.pt"
