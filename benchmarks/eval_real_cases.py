"""Accuracy and anatomy of a model on every real CT case the project has, with overlays.

For each case: liver and tumor Dice where expert (or pseudo-) labels exist, lesions found (all, and those of at
least 0.1 mL), false-positive lesions of at least 0.1 mL against expert tumor labels, predicted liver inside other
organs (TotalSegmentator organ maps: spleen, stomach, kidneys, bowel, pancreas, vessels...), predicted liver in the
thorax slices of CRLM-CT-1006 above its liver dome (heart and lungs only; slices 42-50 by inspection) and in its four
most superior slices, and whether the model saw the case in training (from the checkpoint's training summary).

    python benchmarks/eval_real_cases.py --model python/resunet_trt/models/default/resunet_default.pt \\
        --json benchmarks/results/real_cases_default.json --overlays docs/img/cases

The shared data folder (``--shared``, default: ``shared/data`` beside the repository) holds the larger cases; the
smaller ones are read from tests/data and the bundled sample.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CRLM_THORAX = (42, 51)  # canonical slices of CRLM-CT-1006 above the liver dome: heart and lungs, no liver
LITS117_SPACING = (1.4, 1.4, 1.4)  # not recorded in the file; judged from the size of its liver


def _cases(shared: Path) -> list[dict[str, Any]]:
    tests = ROOT / "tests" / "data"
    sample = ROOT / "python" / "resunet_trt" / "samples"
    return [
        {"name": "lits_small64", "ct": sample / "lits_small64_ct.nii.gz", "label": sample / "lits_small64_label.nii.gz",
         "labels": "expert liver+tumor"},
        {"name": "lits117_roi128", "ct": tests / "lits117_roi128" / "ct.nii.gz",
         "label": tests / "lits117_roi128" / "label.nii.gz", "labels": "expert liver+tumor",
         "spacing": LITS117_SPACING},
        {"name": "dicom_ct3slice", "ct": tests / "dicom_ct3slice" / "series",
         "label": tests / "dicom_ct3slice" / "label_liver1_spine2.nii.gz", "label_map": {1: 1},
         "labels": "expert liver (no tumor annotated)"},
        {"name": "totalseg_abdomen3mm", "ct": tests / "totalseg_abdomen3mm" / "ct.nii.gz",
         "organs": shared / "totalseg_abdomen3mm" / "organs.nii.gz", "liver_value": 28,
         "labels": "model pseudo-labels (organs)"},
        {"name": "totalseg_dicom20", "ct": shared / "totalseg_dicom20" / "series",
         "organs": shared / "totalseg_dicom20" / "organs.nii.gz", "liver_value": 5,
         "labels": "model pseudo-labels (organs)"},
        {"name": "CRLM-CT-1006", "ct": shared / "crlm_dicom" / "CRLM-CT-1006", "labels": "none",
         "thorax": CRLM_THORAX},
    ]


def _dice(a: np.ndarray, b: np.ndarray) -> float | None:
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return None if total == 0 else 2.0 * int(np.count_nonzero(a & b)) / total


def evaluate(seg: Any, case: dict[str, Any], trained_on: set[str], overlays: Path | None) -> dict[str, Any]:
    from resunet_trt import io as rio
    from resunet_trt.lesions import lesion_detection

    volume = rio.load_ct(case["ct"])
    if "spacing" in case:
        volume = rio.CTVolume(hu=volume.hu, spacing=case["spacing"],
                              affine=rio.canonical_affine(case["spacing"]), source=volume.source)
    t0 = time.perf_counter()
    result = seg.segment(volume)
    seconds = time.perf_counter() - t0
    pred = result.labels
    spacing = tuple(float(s) for s in volume.spacing)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    lesion_ml = [les.volume_ml for les in result.lesions]
    out: dict[str, Any] = {
        "case": case["name"], "labels": case["labels"], "shape": list(pred.shape), "spacing_mm": list(spacing),
        "seen_in_training": case["name"] in trained_on, "seconds": round(seconds, 3),
        "liver_ml": round(result.liver_volume_ml, 1), "tumor_ml": round(result.tumor_volume_ml, 2),
        "lesions": len(lesion_ml), "lesions_ge_0.1ml": int(sum(v >= 0.1 for v in lesion_ml)),
    }
    gt = None
    if "label" in case:
        raw = rio.load_label(case["label"], volume, max_value=255 if case.get("label_map") else 2) \
            if "spacing" not in case else np.asarray(rio.load_label(case["label"], rio.load_ct(case["ct"])))
        if case.get("label_map"):
            lut = np.zeros(256, np.uint8)
            for k, v in case["label_map"].items():
                lut[k] = v
            raw = lut[raw]
        gt = raw
        out["liver_dice"] = _dice(pred >= 1, gt >= 1)
        if "tumor" in case["labels"]:
            out["tumor_dice"] = _dice(pred == 2, gt == 2)
            det = lesion_detection(pred, gt, spacing, criterion="iou")
            det_any = lesion_detection(pred, gt, spacing, criterion="overlap")
            fp_big = [p for p in det_any["pred_lesions"] if p["volume_ml"] >= 0.1 and not p["true_positive"]]
            out.update({
                "gt_lesions": det["n_gt"], "detected_iou50": det["detected"], "detected_overlap": det_any["detected"],
                "fp_lesions_ge_0.1ml": len(fp_big),
            })
    if "organs" in case:
        organs = rio.load_label(case["organs"], volume, max_value=255)
        liver_gt = organs == case["liver_value"]
        out["liver_dice_vs_pseudolabel"] = _dice(pred >= 1, liver_gt)
        other = (organs > 0) & ~liver_gt
        out["liver_in_other_organs_ml"] = round(float(np.count_nonzero((pred >= 1) & other)) * voxel_ml, 2)
    if "thorax" in case:
        a, b = case["thorax"]
        out["liver_in_thorax_ml"] = round(float(np.count_nonzero(pred[a:b] >= 1)) * voxel_ml, 2)
        out["liver_in_top4_slices_ml"] = round(float(np.count_nonzero(pred[-4:] >= 1)) * voxel_ml, 2)
        out["lesions_in_thorax"] = int(sum(a <= les.centroid_voxel[0] < b for les in result.lesions))
    if overlays is not None:
        from resunet_trt.overlay import write_overlay

        overlays.mkdir(parents=True, exist_ok=True)
        write_overlay(overlays / f"{case['name']}.png", result, case=case["name"])
        if "thorax" in case:  # the thorax end: the slices above the dome, where only the heart could be called liver
            top = rio.CTVolume(hu=volume.hu[case["thorax"][0] - 6:], spacing=volume.spacing,
                               affine=volume.affine, source=volume.source)
            write_overlay(overlays / f"{case['name']}_thorax.png", seg.segment(top), case=f"{case['name']} (top)")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="model file (.pt, .onnx)")
    p.add_argument("--backend", default="auto", help="Segmenter backend")
    p.add_argument("--tta", action="store_true", help="test-time slice-flip averaging")
    p.add_argument("--no-anatomy", action="store_true",
                   help="without the anatomy rules (organ above the dome, lesions outside the liver)")
    p.add_argument("--min-lesion-confidence", type=float, default=None,
                   help="the Segmenter's lesion confidence floor (default: its own, 0.95; 0 keeps every lesion)")
    p.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data", help="the shared data folder")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--overlays", type=Path, help="write one overlay PNG per case here")
    p.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.path.insert(0, str(ROOT / "python"))
    from resunet_trt import Segmenter
    from resunet_trt.io import atomic_write_bytes

    wanted = {c for c in args.cases.split(",") if c}
    rows = []
    options = {} if args.min_lesion_confidence is None else {"min_lesion_confidence": args.min_lesion_confidence}
    with Segmenter(model=args.model, device="cpu", backend=args.backend, tta=args.tta,
                   anatomy=not args.no_anatomy, **options) as seg:
        # The training summary travels in every model file's metadata (.pt, .onnx, engines' sidecars).
        training = seg.metadata.extra.get("training", {})
        trained_on = {str(n) for n in training.get("train_cases", [])}
        for case in _cases(args.shared):
            if wanted and case["name"] not in wanted:
                continue
            if not Path(case["ct"]).exists():
                print(f"{case['name']}: skipped ({case['ct']} not found)")
                continue
            row = evaluate(seg, case, trained_on, args.overlays)
            rows.append(row)
            print(json.dumps(row))
        info = {"model": str(args.model), "backend": seg.backend.name, "precision": seg.backend.precision,
                "tta": args.tta, "anatomy": not args.no_anatomy,
                "min_lesion_confidence": seg.min_lesion_confidence, "command": " ".join(sys.argv)}
    if args.json:
        atomic_write_bytes(args.json, (json.dumps({"info": info, "cases": rows}, indent=1) + "\n").encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
