"""How sure the network is of each lesion it reports, on the real cases: a diagnostic, not part of the pipeline.

For every lesion of at least 0.1 mL that :class:`resunet_trt.Segmenter` reports, the tumor log-odds
``l_tumor - log(exp(l_background) + exp(l_liver))`` of the network's own logits, at the network pixel nearest to each
of the lesion's voxels (the same mapping the decode uses), summarised as its maximum and median over the lesion.
Where an expert label exists, each lesion is marked true (it touches an expert lesion) or false positive.

    python benchmarks/lesion_confidence.py [--model FILE] [--json out.json]

The question it answers: could a confidence floor per lesion remove false positives without losing real lesions?
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
LITS117_SPACING = (1.4, 1.4, 1.4)


def _cases() -> list[tuple[str, Path, Path | None]]:
    from resunet_trt import samples

    cases: list[tuple[str, Path, Path | None]] = [
        ("lits_small64", samples.sample_ct_path(), samples.sample_label_path()),
        ("lits117_roi128", ROOT / "tests/data/lits117_roi128/ct.nii.gz", ROOT / "tests/data/lits117_roi128/label.nii.gz"),
    ]
    for name, path in (("CRLM-CT-1006", SHARED / "crlm_dicom" / "CRLM-CT-1006"),
                       ("totalseg_dicom20", SHARED / "totalseg_dicom20" / "series")):
        if path.exists():
            cases.append((name, path, None))
    return cases


def lesion_confidences(seg, volume, truth: np.ndarray | None = None) -> list[dict]:
    """One dict per reported lesion >= 0.1 mL: volume_ml, max and median tumor log-odds, and with ``truth`` (an
    expert 0/1/2 label volume) whether it touches an expert lesion."""
    from resunet_trt.confidence import nearest_source_index
    from scipy import ndimage

    plan = seg._plan(volume)
    depth = volume.hu.shape[0]
    log_odds = []
    for start in range(0, depth, seg.batch_size):
        batch = seg._net_input(volume.hu, start, min(depth, start + seg.batch_size), plan)
        logits = np.asarray(seg._infer(batch), dtype=np.float32)
        log_odds.append(logits[:, 2] - np.logaddexp(logits[:, 0], logits[:, 1]))
    odds = np.concatenate(log_odds)
    labels = seg.segment(volume).labels
    height, width = labels.shape[1:]
    step = (None, None) if plan.step is None else tuple(plan.step)
    origin = (0.0, 0.0) if plan.step is None else tuple(plan.origin)
    rows = nearest_source_index(height, odds.shape[1], step[0], origin[0])
    cols = nearest_source_index(width, odds.shape[2], step[1], origin[1])
    comps, _ = ndimage.label(labels == 2, structure=np.ones((3, 3, 3), bool))
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    out = []
    for i, box in enumerate(ndimage.find_objects(comps), start=1):
        inside = comps[box] == i
        ml = float(inside.sum()) * voxel_ml
        if ml < 0.1:
            continue
        z, y, x = np.nonzero(inside)
        values = odds[z + box[0].start, rows[y + box[1].start], cols[x + box[2].start]]
        row = {"volume_ml": round(ml, 3), "max_log_odds": round(float(values.max()), 2),
               "median_log_odds": round(float(np.median(values)), 2)}
        if truth is not None:
            row["true_lesion"] = bool((truth[box][inside] == 2).any())
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model file (default: the bundled .pt on PyTorch)")
    parser.add_argument("--json", default=None, help="write the per-lesion table here")
    args = parser.parse_args(argv)

    from resunet_trt import Segmenter
    from resunet_trt import io as rio
    from resunet_trt.backends import default_model_path

    model = args.model or str(default_model_path("pt"))
    # Every lesion the argmax makes: the confidence floor itself is what this measures for.
    seg = Segmenter(model=model, device="cpu", backend="torch" if model.endswith(".pt") else "auto",
                    min_lesion_confidence=0.0)
    shown = Path(model).resolve()
    report = {"model": str(shown.relative_to(ROOT)) if shown.is_relative_to(ROOT) else shown.name, "cases": {}}
    for name, ct, label in _cases():
        volume = rio.load_ct(ct)
        truth = np.asarray(rio.load_label(label, volume)) if label is not None else None
        if name == "lits117_roi128":  # its header's 1 mm is wrong: 1.4 mm, as in eval_real_cases.py
            volume = rio.CTVolume(hu=volume.hu, spacing=LITS117_SPACING, affine=rio.canonical_affine(LITS117_SPACING),
                                  source=volume.source)
        rows = lesion_confidences(seg, volume, truth)
        rows.sort(key=lambda r: r["max_log_odds"])
        report["cases"][name] = rows
        text = ", ".join(
            f"{r['max_log_odds']:.1f}" + ("" if "true_lesion" not in r else (" T" if r["true_lesion"] else " FP"))
            for r in rows
        )
        print(f"{name}: {len(rows)} lesions >= 0.1 mL, max tumor log-odds: {text}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
