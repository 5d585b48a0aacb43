"""Scoring labelled cases and writing what ``resunet-eval`` reports: per-case rows, aggregates, a table, strict JSON.

Scores per case and class come from :mod:`resunet_trt.metrics` and :mod:`resunet_trt.lesions`; the outputs
(``metrics_per_case.csv``, ``metrics_aggregate.csv``, ``metrics.json``) are written atomically. In the JSON, an
undefined score (NaN) is ``null`` and an infinite one the string ``"inf"``.
"""

from __future__ import annotations

import csv
import io as _stdio
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .files import atomic_write_text as write_text_atomic

# ----------------------------------------------------------------------------------------- scoring


def reference_geometry(gt_path: Path) -> Any:
    """A :class:`resunet_trt.io.CTVolume` that carries only the geometry of a label file (its header).

    Its ``hu`` is an all-zero placeholder (``np.zeros`` pages are not touched, so it costs no memory); it exists so
    that :func:`resunet_trt.io.load_label` can reorient the reference and check the prediction's grid against it.
    """
    import nibabel as nib

    from .io import CTVolume, DiskGeometry

    try:
        img: Any = nib.load(str(gt_path))
    except Exception as exc:
        raise ValueError(f"{gt_path}: cannot read as a NIfTI image ({type(exc).__name__}: {exc})") from exc
    if len(img.shape) != 3:
        raise ValueError(f"{gt_path}: a label volume needs 3 dimensions, got shape {img.shape}")
    geometry = DiskGeometry.from_affine(img.shape, np.asarray(img.affine, dtype=np.float64))
    affine = geometry.canonical_affine()
    dz, dy, dx = (float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
    hu = np.zeros(geometry.canonical_shape(), dtype=np.int16)
    return CTVolume(hu=hu, spacing=(dz, dy, dx), affine=affine, source=str(gt_path), geometry=geometry)


def load_pair(pred_path: Path, gt_path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Read a predicted and a reference mask in the canonical orientation of the reference's grid.

    Returns:
        ``(pred uint8 (D, H, W), gt uint8 (D, H, W), spacing (dz, dy, dx))``.

    Raises:
        ValueError: a file is unreadable or holds values other than 0, 1, 2, or the prediction does not lie on
            the reference's grid (same on-disk shape and affine), from :func:`resunet_trt.io.load_label`.
    """
    from .io import load_label

    like = reference_geometry(gt_path)
    gt = load_label(gt_path, like=like)
    pred = load_label(pred_path, like=like)
    return pred, gt, like.spacing


def score_case(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float],
    *,
    criterion: str = "iou",
    surface: bool = True,
    connectivity: int = 26,
) -> dict[str, Any]:
    """Voxel scores (:func:`resunet_trt.metrics.evaluate_case`) and lesion detection of one case."""
    from .lesions import lesion_detection
    from .metrics import evaluate_case

    scores = evaluate_case(pred, gt, spacing, surface=surface)
    scores["lesions"] = lesion_detection(pred, gt, spacing, criterion=criterion, connectivity=connectivity)
    return scores


@dataclass
class CaseOutcome:
    """One evaluated (or failed) case."""

    case: str
    pred: str | None
    gt: str | None
    ok: bool = False
    error: str | None = None
    scores: dict[str, Any] | None = None
    seconds: float = 0.0
    image: str | None = None


# ----------------------------------------------------------------------------------------- outputs

CSV_SCORES = ("dice", "iou", "precision", "recall", "voe", "rvd", "assd", "msd", "hd95")
CSV_LESION = ("n_gt", "detected", "n_pred", "tp_pred", "fp", "precision", "recall", "f1")


def json_safe(value: Any) -> Any:
    """A copy of ``value`` that strict JSON accepts: NaN -> None, +-inf -> "inf"/"-inf", paths -> str."""
    if isinstance(value, float | np.floating):
        v = float(value)
        if math.isnan(v):
            return None
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return v
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def write_json_atomic(path: Path, obj: Any) -> None:
    """Strict JSON (see :func:`json_safe`), indented, written atomically."""
    write_text_atomic(path, json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n")


def _csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buf = _stdio.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else _fmt_csv(v) for v in row])
    return buf.getvalue()


def _fmt_csv(v: Any) -> Any:
    if isinstance(v, float | np.floating):
        return (
            repr(float(v)) if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
        )
    return v


def per_case_rows(outcomes: Sequence[CaseOutcome]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of ``metrics_per_case.csv``."""
    header = ["case", "status", "error", "pred", "gt", "seconds"]
    header += [f"{cls}_{key}" for cls in ("liver", "tumor") for key in CSV_SCORES]
    header += ["liver_gt_ml", "liver_pred_ml", "tumor_gt_ml", "tumor_pred_ml"]
    header += [f"lesion_{key}" for key in CSV_LESION] + ["gt_burden", "pred_burden", "burden_error"]
    rows = []
    for o in outcomes:
        row: list[Any] = [o.case, "ok" if o.ok else "failed", o.error, o.pred, o.gt, round(o.seconds, 3)]
        s = o.scores or {}
        for cls in ("liver", "tumor"):
            row += [s.get(cls, {}).get(key) for key in CSV_SCORES]
        row += [s.get("liver", {}).get("gt_ml"), s.get("liver", {}).get("pred_ml")]
        row += [s.get("tumor", {}).get("gt_ml"), s.get("tumor", {}).get("pred_ml")]
        les = s.get("lesions", {})
        row += [les.get(key) for key in CSV_LESION]
        row += [les.get("gt_burden"), les.get("pred_burden"), les.get("burden_error")]
        rows.append(row)
    return header, rows


def aggregate_rows(summary: Mapping[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of ``metrics_aggregate.csv``: one row per class and score, then lesion detection."""
    header = ["group", "metric", "mean", "median", "std", "min", "max", "n", "n_nan", "n_inf"]
    rows: list[list[Any]] = []
    voxel = summary.get("voxel", {})
    for cls in ("liver", "tumor"):
        agg = voxel.get(cls)
        if not agg:
            continue
        rows.append(
            [cls, "dice_per_case", agg["dice_per_case"], None, None, None, None, agg["n_cases"], 0, 0]
        )
        rows.append([cls, "dice_global", agg["dice_global"], None, None, None, None, agg["n_cases"], 0, 0])
        for key, st in agg["scores"].items():
            rows.append(
                [
                    cls,
                    key,
                    st["mean"],
                    st["median"],
                    st["std"],
                    st["min"],
                    st["max"],
                    st["n"],
                    st["n_nan"],
                    st["n_inf"],
                ]
            )
    les = summary.get("lesions")
    if les:
        for group, stats in [("lesions", les)] + [(f"lesions_{b}", v) for b, v in les["buckets"].items()]:
            for key in ("precision", "recall", "f1"):
                rows.append([group, key, stats[key], None, None, None, None, stats["n_gt"], None, None])
        burden = les["burden_error"]
        rows.append(
            [
                "lesions",
                "burden_error",
                burden["mean"],
                burden["median"],
                None,
                None,
                burden["max"],
                burden["n"],
                None,
                None,
            ]
        )
    return header, rows


def summarise(outcomes: Sequence[CaseOutcome]) -> dict[str, Any]:
    """Aggregates over the cases that were scored (empty dict when none was)."""
    from .lesions import aggregate_lesion_detection
    from .metrics import aggregate

    scored = {o.case: o.scores for o in outcomes if o.ok and o.scores is not None}
    if not scored:
        return {}
    return {
        "voxel": aggregate({k: {c: v for c, v in s.items() if c != "lesions"} for k, s in scored.items()}),
        "lesions": aggregate_lesion_detection({k: s["lesions"] for k, s in scored.items()}),
    }


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float | np.floating):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf"
        return f"{v:.{digits}f}"
    return str(v)


def render_table(outcomes: Sequence[CaseOutcome], summary: Mapping[str, Any]) -> str:
    """The on-screen table: one line per case, then the aggregates."""
    head = f"{'case':<24} {'liver Dice':>10} {'ASSD mm':>8} {'tumor Dice':>10} {'HD95 mm':>8} {'lesions':>9} {'FP':>4} {'burden err':>10}"
    lines = [head, "-" * len(head)]
    for o in outcomes:
        if not o.ok or o.scores is None:
            lines.append(f"{o.case[:24]:<24} FAILED: {o.error}")
            continue
        s = o.scores
        les = s["lesions"]
        lines.append(
            f"{o.case[:24]:<24} {_fmt(s['liver']['dice']):>10} {_fmt(s['liver']['assd'], 2):>8} "
            f"{_fmt(s['tumor']['dice']):>10} {_fmt(s['tumor']['hd95'], 2):>8} "
            f"{les['detected']:>4}/{les['n_gt']:<4} {les['fp']:>4} {_fmt(les['burden_error'], 4):>10}"
        )
    if summary:
        lines.append("-" * len(head))
        for cls in ("liver", "tumor"):
            agg = summary["voxel"][cls]
            sc = agg["scores"]
            lines.append(
                f"{cls:<6} Dice per case {_fmt(agg['dice_per_case'])}  Dice global {_fmt(agg['dice_global'])}  "
                f"ASSD {_fmt(sc['assd']['mean'], 2)} mm  HD95 {_fmt(sc['hd95']['mean'], 2)} mm  "
                f"RVD {_fmt(sc['rvd']['mean'])}"
                + (
                    f"  ({sc['hd95']['n_inf']} case(s) with an empty mask on one side)"
                    if sc["hd95"]["n_inf"]
                    else ""
                )
            )
        les = summary["lesions"]
        buckets = "  ".join(
            f"{b}: {v['detected']}/{v['n_gt']} found, {v['fp']} FP" for b, v in les["buckets"].items()
        )
        lines.append(
            f"lesions: precision {_fmt(les['precision'])}  recall {_fmt(les['recall'])}  F1 {_fmt(les['f1'])}  "
            f"({les['detected']}/{les['n_gt']} found, {les['fp']} false positive)"
        )
        lines.append(f"  by size: {buckets}")
        lines.append(f"tumor burden error: mean {_fmt(les['burden_error']['mean'], 4)}")
    return "\n".join(lines)


def write_outputs(
    out_dir: Path, outcomes: Sequence[CaseOutcome], summary: Mapping[str, Any], meta: Mapping[str, Any]
) -> dict[str, Path]:
    """Write the CSV and JSON files into ``out_dir``; returns their paths by role."""
    from .config import build_info, machine_info, versions

    paths = {
        "per_case_csv": out_dir / "metrics_per_case.csv",
        "aggregate_csv": out_dir / "metrics_aggregate.csv",
        "json": out_dir / "metrics.json",
    }
    header, rows = per_case_rows(outcomes)
    write_text_atomic(paths["per_case_csv"], _csv_text(header, rows))
    header, rows = aggregate_rows(summary)
    write_text_atomic(paths["aggregate_csv"], _csv_text(header, rows))
    doc = {
        **meta,
        "n_cases": len(outcomes),
        "n_ok": sum(o.ok for o in outcomes),
        "n_failed": sum(not o.ok for o in outcomes),
        "aggregate": summary,
        "cases": [
            {
                "case": o.case,
                "ok": o.ok,
                "error": o.error,
                "pred": o.pred,
                "gt": o.gt,
                "image": o.image,
                "seconds": o.seconds,
                "scores": o.scores,
            }
            for o in outcomes
        ],
        "versions": versions(),
        "build": build_info(),
        "machine": machine_info(),
    }
    write_json_atomic(paths["json"], doc)
    return paths


