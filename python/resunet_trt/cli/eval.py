"""``resunet-eval``: score predicted masks against reference labels, LiTS style.

Examples::

    resunet-eval --pred out/ --gt labels/ -o eval/          # masks already written (e.g. by resunet-seg)
    resunet-eval --model model.onnx --data LiTS/ -o eval/    # segment every CT of a labelled folder, then score
    resunet-eval --data tests/data -o eval/ --device cpu     # the bundled default model

Scores per case and class (liver = labels >= 1, tumor = labels == 2): Dice, IoU, precision, recall, VOE, RVD,
ASSD, MSD, HD95 (mm) as in :mod:`resunet_trt.metrics`, and lesion detection (precision, recall, F1 by size
bucket, tumor-burden error) as in :mod:`resunet_trt.lesions`. Aggregates: Dice per case (mean) and Dice global
(pooled voxels) per class, summaries of every score, pooled lesion detection.

**How files become cases.** NIfTI files (``.nii``, ``.nii.gz``) are searched in the folder and its subfolders
(two levels). A file is a *label* when its name (extension stripped) is ``segmentation-N``, or is or ends in
``label``, ``labels``, ``mask``, ``seg``, ``segmentation``, ``gt`` or ``pred`` (``case_mask``, ``case-label``...),
or when it sits in a ``labelsTr``/``labelsTs`` folder; it is an *image* when its name is ``volume-N``, ``ct``,
``image`` or ends in ``_ct``, ``_image`` or ``_0000`` (nnU-Net channel), or it sits in ``imagesTr``/``imagesTs``;
any other NIfTI is *unclassified*. The case name of a file is:

- its subfolder's path when it sits in a subfolder holding one case (one label, at most one image), as in
  ``data/case_07/ct.nii.gz`` + ``data/case_07/label.nii.gz`` -> ``case_07``; the same for the folder given
  itself when it holds just such a pair with generic names (``ct``, ``label``, ``mask``...): its own name;
- otherwise its name without the label/image suffix, with the LiTS and MSD names reduced to their number, so
  that they match each other: ``volume-12``, ``segmentation-12``, ``liver_12``, ``liver_12_0000``,
  ``segmentation-12_mask`` -> ``12``; ``case7_mask`` -> ``case7``.

``--pred``/``--gt`` use the label and unclassified files of each folder; ``--data`` pairs each case's image (an
image file, else the unclassified one) with its label. Files that match nothing on the other side are listed
and skipped (with ``--strict`` a reference case without prediction is a failure).

**Geometry.** Each label file is read with :func:`resunet_trt.io.load_label` in the canonical orientation
(D inferior -> superior, so "axial" means what it should for the lesion diameters), the prediction checked
against the reference's grid; the spacing (dz, dy, dx) comes from the reference file's header.

**Outputs** (``-o DIR``, written atomically): ``metrics_per_case.csv`` (one row per case), ``metrics_aggregate.csv``
(one row per class and score), ``metrics.json`` (everything: arguments, per-case scores and lesion lists,
aggregates, failures, versions). In the JSON, an undefined score (NaN) is ``null`` and an infinite one the
string ``"inf"``. Exit code: 0 when every matched case was scored, 1 when a case failed, 2 when nothing
matched or the arguments are wrong.
"""

from __future__ import annotations

import argparse
import csv
import io as _stdio
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._progress import progress as progress_bar

logger = logging.getLogger("resunet_trt.eval")

NIFTI_SUFFIXES = (".nii.gz", ".nii")
_LABEL_WORDS = ("segmentation", "labels", "label", "mask", "seg", "gt", "pred", "prediction")
_IMAGE_WORDS = ("volume", "ct", "image", "img", "0000")
_LABEL_DIRS = ("labelstr", "labelsts", "labels")
_IMAGE_DIRS = ("imagestr", "imagests", "images")
_SUFFIX_RE = re.compile(r"[_\-.](" + "|".join(_LABEL_WORDS + _IMAGE_WORDS) + r")$", re.IGNORECASE)
_LITS_RE = re.compile(r"^(?:volume|segmentation|liver)[_\-](\d+)$", re.IGNORECASE)
_MAX_DEPTH = 2


# ----------------------------------------------------------------------------------------- case discovery


def strip_nifti_suffix(name: str) -> str:
    """``case.nii.gz`` -> ``case``; names without a NIfTI suffix are returned unchanged."""
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def file_kind(path: Path) -> str:
    """``"label"``, ``"image"`` or ``"unknown"`` for a NIfTI file, from its name and folder (see the module doc)."""
    stem = strip_nifti_suffix(path.name).lower()
    parent = path.parent.name.lower()
    if parent in _LABEL_DIRS:
        return "label"
    if parent in _IMAGE_DIRS:
        return "image"
    last = re.split(r"[_\-.]", stem)[-1]
    # The suffix wins over a LiTS prefix: resunet-seg writes volume-N_mask for volume-N.
    if stem.startswith("segmentation-") or stem in _LABEL_WORDS or last in _LABEL_WORDS:
        return "label"
    if stem.startswith("volume-") or stem in _IMAGE_WORDS or last in _IMAGE_WORDS:
        return "image"
    return "unknown"


def case_key(name: str) -> str:
    """Case name from a file name: extension and label/image suffixes stripped, LiTS/MSD names to their number.

    ``segmentation-12.nii`` -> ``12``, ``liver_012_0000.nii.gz`` -> ``12``, ``case7_mask.nii.gz`` -> ``case7``.
    """
    stem = strip_nifti_suffix(name)
    while True:
        stripped = _SUFFIX_RE.sub("", stem)
        if stripped == stem or not stripped:
            break
        stem = stripped
    match = _LITS_RE.match(stem)
    if match:
        return str(int(match.group(1)))
    return stem


def _nifti_files(root: Path) -> list[Path]:
    found: list[Path] = []

    def walk(folder: Path, depth: int) -> None:
        try:
            entries = sorted(folder.iterdir())
        except OSError as exc:
            logger.warning("cannot list %s: %s", folder, exc)
            return
        for entry in entries:
            if entry.is_dir() and not entry.name.startswith("."):
                if depth < _MAX_DEPTH:
                    walk(entry, depth + 1)
            elif entry.is_file() and entry.name.lower().endswith(NIFTI_SUFFIXES):
                found.append(entry)

    walk(root, 0)
    return found


@dataclass
class CaseFiles:
    """The files of one case found in a folder."""

    key: str
    label: Path | None = None
    image: Path | None = None
    extra: list[Path] = field(default_factory=list)


def discover(root: str | os.PathLike[str]) -> tuple[dict[str, CaseFiles], list[str]]:
    """Find the cases of a folder (rules in the module docstring).

    Args:
        root: a folder.

    Returns:
        ``(cases by key, problems)``: ``problems`` lists files that could not be given a unique role.

    Raises:
        ValueError: ``root`` is not a folder.
    """
    base = Path(root)
    if not base.is_dir():
        raise ValueError(f"expected a folder of NIfTI files, got {str(root)!r} (not a folder)")
    files = _nifti_files(base)
    by_folder: dict[Path, list[Path]] = {}
    for f in files:
        by_folder.setdefault(f.parent, []).append(f)

    cases: dict[str, CaseFiles] = {}
    problems: list[str] = []

    def put(key: str, path: Path, kind: str) -> None:
        case = cases.setdefault(key, CaseFiles(key=key))
        slot = "label" if kind == "label" else "image" if kind == "image" else None
        if slot is None:
            case.extra.append(path)
        elif getattr(case, slot) is None:
            setattr(case, slot, path)
        else:
            problems.append(
                f"case {key!r}: two {slot} files, {getattr(case, slot)} and {path}; keeping the first"
            )

    for folder, members in by_folder.items():
        kinds = {m: file_kind(m) for m in members}
        n_label = sum(k == "label" for k in kinds.values())
        n_image = sum(k == "image" for k in kinds.values())
        n_unknown = sum(k == "unknown" for k in kinds.values())
        small = n_label <= 1 and n_image <= 1 and (n_label + n_image + n_unknown) <= 2
        generic = all(strip_nifti_suffix(m.name).lower() in _LABEL_WORDS + _IMAGE_WORDS for m in members)
        collection = folder.name.lower() in _LABEL_DIRS + _IMAGE_DIRS  # MSD imagesTr/labelsTr hold many cases
        if small and not collection and (folder != base or generic) and n_label + n_unknown >= 1:
            key = folder.relative_to(base).as_posix() if folder != base else base.resolve().name
            for m, kind in kinds.items():
                put(key, m, kind)
        else:
            for m, kind in kinds.items():
                put(case_key(m.name), m, kind)
    # An unclassified file stands in for a missing label (label folders) or image (data folders) later.
    return cases, problems


def label_files(root: str | os.PathLike[str]) -> tuple[dict[str, Path], list[str]]:
    """Label file per case key in a folder of masks (a label file, else the case's only unclassified file)."""
    cases, problems = discover(root)
    out: dict[str, Path] = {}
    for key, case in cases.items():
        if case.label is not None:
            out[key] = case.label
        elif len(case.extra) == 1:
            out[key] = case.extra[0]
        elif case.extra:
            problems.append(
                f"case {key!r}: several unclassified files {[str(p) for p in case.extra]}; skipped"
            )
    return out, problems


def data_cases(root: str | os.PathLike[str]) -> tuple[dict[str, tuple[Path, Path]], list[str]]:
    """(image, label) per case key in a labelled data folder; cases lacking either are reported in ``problems``."""
    cases, problems = discover(root)
    out: dict[str, tuple[Path, Path]] = {}
    for key, case in cases.items():
        image = case.image if case.image is not None else (case.extra[0] if len(case.extra) == 1 else None)
        if case.label is None or image is None:
            what = "label" if case.label is None else "image"
            problems.append(f"case {key!r}: no {what} file found; skipped")
            continue
        out[key] = (image, case.label)
    return out, problems


# ----------------------------------------------------------------------------------------- scoring


def reference_geometry(gt_path: Path) -> Any:
    """A :class:`resunet_trt.io.CTVolume` that carries only the geometry of a label file (its header).

    Its ``hu`` is an all-zero placeholder (``np.zeros`` pages are not touched, so it costs no memory); it exists so
    that :func:`resunet_trt.io.load_label` can reorient the reference and check the prediction's grid against it.
    """
    import nibabel as nib

    from resunet_trt.io import CTVolume, DiskGeometry

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
    from resunet_trt.io import load_label

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
    from resunet_trt.lesions import lesion_detection
    from resunet_trt.metrics import evaluate_case

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


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    from ..io import atomic_write_bytes

    atomic_write_bytes(path, text.encode("utf-8"))


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
    from resunet_trt.lesions import aggregate_lesion_detection
    from resunet_trt.metrics import aggregate

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
    from resunet_trt.config import build_info, machine_info, versions

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


# ----------------------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resunet-eval",
        description="Score liver/tumor masks against reference labels (LiTS metrics, lesion detection).",
        epilog="Case matching rules and output files: see the module documentation (python -m pydoc "
        "resunet_trt.cli.eval).",
    )
    parser.add_argument("--pred", help="folder of predicted masks (e.g. resunet-seg output)")
    parser.add_argument("--gt", help="folder of reference label files")
    parser.add_argument("--data", help="labelled data folder: segment each CT with --model, then score")
    parser.add_argument(
        "--model", help="model file (.pt, .onnx, .plan) for --data; default: the bundled model"
    )
    parser.add_argument(
        "--device", default="auto", help="auto, cpu, cuda or cuda:N (for --data; default auto)"
    )
    parser.add_argument("--backend", default="auto",
                        help="auto, tensorrt, onnxruntime or torch (for --data; default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="slices per inference batch (for --data; default: %(default)s)")
    parser.add_argument(
        "--save-masks", action="store_true", help="with --data: write <case>_mask.nii.gz into -o"
    )
    parser.add_argument("-o", "--out", "--output", dest="out", help="folder for the CSV and JSON files")
    parser.add_argument(
        "--criterion",
        choices=("iou", "overlap"),
        default="iou",
        help="lesion detection rule: iou, IoU > 0.5 (LiTS), or overlap, any overlap (default: %(default)s)",
    )
    parser.add_argument(
        "--connectivity", type=int, choices=(6, 18, 26), default=26,
        help="lesion connectivity (default: %(default)s)",
    )
    parser.add_argument("--no-surface", action="store_true", help="skip surface distances (ASSD, MSD, HD95)")
    parser.add_argument(
        "--strict", action="store_true", help="a reference case without prediction is a failure"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("-q", "--quiet", action="store_true", help="no table on screen")
    return parser


def _pairs_from_folders(args: argparse.Namespace) -> tuple[list[tuple[str, Path | None, Path]], list[str]]:
    preds, notes = label_files(args.pred)
    gts, gt_notes = label_files(args.gt)
    notes += gt_notes
    pairs: list[tuple[str, Path | None, Path]] = []
    for key in sorted(gts, key=_natural):
        if key in preds:
            pairs.append((key, preds[key], gts[key]))
        elif args.strict:
            pairs.append((key, None, gts[key]))
        else:
            notes.append(f"case {key!r}: reference {gts[key]} has no prediction; skipped")
    for key in sorted(set(preds) - set(gts), key=_natural):
        notes.append(f"case {key!r}: prediction {preds[key]} has no reference; skipped")
    return pairs, notes


def _natural(key: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def _evaluate_folders(
    args: argparse.Namespace, pairs: Sequence[tuple[str, Path | None, Path]]
) -> list[CaseOutcome]:
    outcomes = []
    for key, pred_path, gt_path in progress_bar(
        pairs, enabled=not args.no_progress, desc="eval", unit="case"
    ):
        o = CaseOutcome(case=key, pred=str(pred_path) if pred_path else None, gt=str(gt_path))
        t0 = time.perf_counter()
        try:
            if pred_path is None:
                raise FileNotFoundError(f"no prediction for reference {gt_path}")
            pred, gt, spacing = load_pair(pred_path, gt_path)
            o.scores = score_case(
                pred,
                gt,
                spacing,
                criterion=args.criterion,
                surface=not args.no_surface,
                connectivity=args.connectivity,
            )
            o.ok = True
        except Exception as exc:  # noqa: BLE001 - one bad case is reported, the others go on
            o.error = f"{type(exc).__name__}: {exc}"
            logger.error("case %s: %s", key, o.error)
        o.seconds = time.perf_counter() - t0
        outcomes.append(o)
    return outcomes


def _evaluate_model(args: argparse.Namespace, cases: Mapping[str, tuple[Path, Path]]) -> list[CaseOutcome]:
    from resunet_trt import Segmenter
    from resunet_trt.io import load_label, save_mask

    try:
        segmenter = Segmenter(
            model=args.model,
            device=args.device,
            backend=args.backend,
            batch_size=args.batch_size,
            connectivity=args.connectivity,
        )
    except (OSError, ValueError, TypeError, RuntimeError, ImportError) as exc:
        raise ModelError(f"cannot open the model {args.model or '(bundled default)'}: {exc}") from exc
    outcomes = []
    with segmenter as seg:
        keys = sorted(cases, key=_natural)
        for key in progress_bar(keys, enabled=not args.no_progress, desc="segment+eval", unit="case"):
            image, label = cases[key]
            o = CaseOutcome(case=key, pred=None, gt=str(label), image=str(image))
            t0 = time.perf_counter()
            try:
                result = seg.segment(image)
                gt = load_label(label, like=result.volume)
                if args.save_masks and args.out:
                    mask_path = Path(args.out) / "masks" / f"{_safe_name(key)}_mask.nii.gz"
                    mask_path.parent.mkdir(parents=True, exist_ok=True)
                    save_mask(mask_path, result.labels, like=result.volume)
                    o.pred = str(mask_path)
                spacing = tuple(float(s) for s in result.volume.spacing)
                o.scores = score_case(
                    result.labels,
                    gt,
                    spacing,
                    criterion=args.criterion,
                    surface=not args.no_surface,
                    connectivity=args.connectivity,
                )
                o.scores["timings"] = dict(result.timings)
                o.ok = True
            except Exception as exc:  # noqa: BLE001 - one bad case is reported, the others go on
                o.error = f"{type(exc).__name__}: {exc}"
                logger.error("case %s: %s", key, o.error)
            o.seconds = time.perf_counter() - t0
            outcomes.append(o)
    return outcomes


class ModelError(Exception):
    """The model could not be opened: reported with exit code 2."""


def _safe_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``resunet-eval``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    folders = args.pred is not None or args.gt is not None
    if folders and args.data is not None:
        parser.print_usage(sys.stderr)
        print(
            "resunet-eval: error: use either --pred/--gt or --data (with --model), not both", file=sys.stderr
        )
        return 2
    if folders and (args.pred is None or args.gt is None):
        parser.print_usage(sys.stderr)
        print("resunet-eval: error: --pred and --gt go together", file=sys.stderr)
        return 2
    if not folders and args.data is None:
        parser.print_usage(sys.stderr)
        print("resunet-eval: error: give --pred DIR --gt DIR, or --data DIR [--model M]", file=sys.stderr)
        return 2
    if args.save_masks and (args.data is None or args.out is None):
        print("resunet-eval: error: --save-masks needs --data and -o", file=sys.stderr)
        return 2
    if args.batch_size < 1:
        print(f"resunet-eval: error: --batch-size must be >= 1, got {args.batch_size}", file=sys.stderr)
        return 2

    try:
        if folders:
            pairs, notes = _pairs_from_folders(args)
            n_matched = len(pairs)
        else:
            cases, notes = data_cases(args.data)
            n_matched = len(cases)
    except ValueError as exc:
        print(f"resunet-eval: error: {exc}", file=sys.stderr)
        return 2
    for note in notes:
        logger.warning("%s", note)
    if n_matched == 0:
        where = f"--pred {args.pred} and --gt {args.gt}" if folders else f"--data {args.data}"
        print(
            f"resunet-eval: error: no case matched in {where} (see the case naming rules in --help)",
            file=sys.stderr,
        )
        return 2

    t0 = time.perf_counter()
    try:
        outcomes = _evaluate_folders(args, pairs) if folders else _evaluate_model(args, cases)
    except ModelError as exc:
        print(f"resunet-eval: error: {exc}", file=sys.stderr)
        return 2
    summary = summarise(outcomes)
    if not args.quiet:
        print(render_table(outcomes, summary))
    if args.out:
        meta = {
            "tool": "resunet-eval",
            "mode": "folders" if folders else "model",
            "arguments": {k: v for k, v in vars(args).items()},
            "notes": notes,
            "seconds": time.perf_counter() - t0,
        }
        paths = write_outputs(Path(args.out), outcomes, summary, meta)
        if not args.quiet:
            print("wrote " + ", ".join(str(p) for p in paths.values()))
    failed = [o.case for o in outcomes if not o.ok]
    if failed:
        print(
            f"resunet-eval: {len(failed)} of {len(outcomes)} case(s) failed: {', '.join(failed)}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
