"""Liver Dice of a model on the MSD liver slice set, per patient, for a patient fold held out of its training.

The slice set (``shared/data/msd_liver_2d``: 643 8-bit slices of ~122 MSD Task03 patients, liver and tumor merged in
its masks) is the only source here with many patients. ``scripts/msd_fold_chain.sh`` trains the default recipe with
one fold of those patients left out (case-list column ``fold``, patient number modulo 5); this script segments each
slice of that fold as a one-slice volume at the slice set's assumed spacing, exactly as training saw the set (with
the Segmenter's default postprocess, so the largest liver component is kept within the slice), and scores the
predicted liver-or-tumor against the mask:

    python benchmarks/eval_slice_set.py --model runs/msd_fold0/phase6/last.pt --fold 0/5 \\
        --json benchmarks/results/msd_fold0_recipe.json

Reported: pooled Dice over each patient's slices, their mean, median and minimum over patients, how many patients
reach 0.95, and the pooled Dice of every slice together. The bundled model was trained on every patient of the set,
so on any fold it scores patients it has seen; only a model of ``msd_fold_chain.sh`` scores unseen ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def slice_set_fold(
    folder: Path, fold: str, zero_hu: str | None = None
) -> tuple[np.ndarray, np.ndarray, list[int], tuple[float, float, float]]:
    """(hu, liver mask, patient number per slice, spacing) of one patient fold, as training loads it (``zero_hu``:
    the case-list cell that gives the clipped zeros back air and fat, as the model was trained)."""
    if str(ROOT) not in sys.path:  # training/ is a folder of the repository, not an installed package
        sys.path.insert(0, str(ROOT))
    from resunet_trt.datasets import parse_fold, parse_zero_hu, slice_set_case
    from training.data import SLICE_SET_SPACING, load_slice_set, slice_patient, slice_set_files

    spec = dataclasses.replace(slice_set_case(folder), fold=parse_fold(fold),
                               zero_hu=parse_zero_hu(zero_hu, "--zero-hu") if zero_hu else None)
    case = load_slice_set(spec)
    patients = [slice_patient(f.name) for f in slice_set_files(spec)]
    return case.hu, case.labels.astype(bool), patients, SLICE_SET_SPACING


def dice(pred: np.ndarray, ref: np.ndarray) -> float | None:
    total = int(pred.sum()) + int(ref.sum())
    return None if total == 0 else 2.0 * int((pred & ref).sum()) / total


def score(pred: np.ndarray, ref: np.ndarray, patients: list[int]) -> dict[str, Any]:
    """Per-patient pooled Dice and their summary; ``pred``/``ref`` are (N, H, W) booleans."""
    ids = np.asarray(patients)
    per_patient = {}
    for pid in sorted(set(patients)):
        sel = ids == pid
        d = dice(pred[sel], ref[sel])
        if d is not None:
            per_patient[str(pid)] = round(d, 4)
    values = list(per_patient.values())
    return {
        "patients": len(values), "slices": int(len(patients)),
        "mean_dice": round(statistics.fmean(values), 4), "median_dice": round(statistics.median(values), 4),
        "min_dice": min(values), "patients_ge_0.95": int(sum(v >= 0.95 for v in values)),
        "pooled_dice": round(dice(pred, ref) or 0.0, 4), "per_patient": per_patient,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="model file (.pt, .onnx)")
    p.add_argument("--backend", default="torch", help="Segmenter backend")
    p.add_argument("--fold", default="0/5", help="the patient fold to score: 'k/n' (patient number modulo n == k)")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "msd_liver_2d",
                   help="the slice set folder (images/ + masks/)")
    p.add_argument("--zero-hu", metavar="OUTSIDE:INSIDE",
                   help="give the clipped zeros these HU outside and inside the body, as a model trained with the "
                        "case-list cell zero_hu saw the slices (e.g. -1000:-100)")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    if args.fold.startswith("!"):
        p.error("--fold names the fold to score ('k/n'), not the ones to leave out")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # every one-slice "volume" holds an implausibly small whole liver; the Segmenter's warning says so each time
    logging.getLogger("resunet_trt.segmenter").setLevel(logging.ERROR)
    try:
        import resunet_trt  # noqa: F401  (the installed package, with its compiled core)
    except ImportError:
        sys.path.insert(0, str(ROOT / "python"))
    from resunet_trt import Segmenter
    from resunet_trt import io as rio

    hu, ref, patients, spacing = slice_set_fold(args.data, args.fold, args.zero_hu)
    pred = np.zeros_like(ref)
    t0 = time.perf_counter()
    with Segmenter(model=args.model, device="cpu", backend=args.backend) as seg:
        training = seg.metadata.extra.get("training", {})
        for i in range(hu.shape[0]):
            volume = rio.CTVolume(hu=hu[i:i + 1], spacing=spacing, affine=rio.canonical_affine(spacing),
                                  source=f"{args.data.name}[{i}]")
            pred[i] = seg.segment(volume).labels[0] > 0
        info = {"model": str(args.model), "backend": seg.backend.name, "precision": seg.backend.precision,
                "fold": args.fold, "zero_hu": args.zero_hu, "spacing_mm": list(spacing), "seconds": round(time.perf_counter() - t0, 1),
                "train_cases": training.get("train_cases", []), "command": " ".join(sys.argv)}
    result = score(pred, ref, patients)
    print(f"{args.model}: fold {args.fold}, {result['patients']} patients, {result['slices']} slices: liver Dice "
          f"mean {result['mean_dice']:.3f}, median {result['median_dice']:.3f}, min {result['min_dice']:.3f}, "
          f"{result['patients_ge_0.95']} patients >= 0.95, pooled {result['pooled_dice']:.3f}")
    if args.json:
        from resunet_trt.io import atomic_write_bytes

        atomic_write_bytes(args.json, (json.dumps({"info": info, **result}, indent=1) + "\n").encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
