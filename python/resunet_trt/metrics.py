"""Segmentation scores per volume and per class, as the LiTS challenge computes them, and their aggregation.

Axis order is (D, H, W), spacing is (dz, dy, dx) in mm, labels are 0 background, 1 liver, 2 tumor.
Classes are scored as LiTS scores them: **liver = labels >= 1** (liver with its tumors), **tumor = labels == 2**.

Overlap scores (on voxel counts TP, FP, FN of one class; P = TP + FP predicted voxels, G = TP + FN reference):

==========  ================================  ===========================================================
key         formula                           note
==========  ================================  ===========================================================
dice        2 TP / (2 TP + FP + FN)
iou         TP / (TP + FP + FN)               Jaccard index
precision   TP / P
recall      TP / G                            sensitivity
voe         1 - iou                           volumetric overlap error
rvd         (P - G) / G                       relative volume difference, signed (LiTS); > 0 = too big
==========  ================================  ===========================================================

Surface distances, in mm, exact Euclidean with the anisotropic spacing:

- The **surface** of a mask is the set of its voxels that have at least one of their 6 face neighbours outside the
  mask; the volume is taken as surrounded by background, so mask voxels on the volume border are surface voxels.
  A mask one voxel thick is all surface.
- For each surface voxel of the prediction, its distance to the nearest surface voxel of the reference (voxel
  centre to voxel centre), and the other way round. These come from a Euclidean distance transform
  (``scipy.ndimage.distance_transform_edt`` with ``sampling=spacing``) of the complement of each surface, computed
  only inside the bounding box of both masks: every surface voxel lies in that box, so the distances are
  exact, and a liver in a 512 x 512 x 800 volume costs a box of the liver's size, not of the volume's.
- ``assd``: the mean of both directed sets pooled (sum of all distances / number of surface voxels of both);
  ``msd``: the maximum symmetric surface distance (the Hausdorff distance between the surfaces);
  ``hd95``: the larger of the two directed 95th percentiles (numpy's linear interpolation), the symmetric robust
  Hausdorff distance as in MONAI and DeepMind's surface-distance package (medpy pools both sets instead, which
  can give a slightly smaller number).

Empty masks, decided once here:

- **Both empty** (e.g. tumor in a tumor-free case, predicted tumor-free): a perfect answer. dice = iou = precision =
  recall = 1, voe = rvd = 0, assd = msd = hd95 = 0.
- **Exactly one empty**: dice = iou = 0, voe = 1. The ratio whose denominator is zero is undefined and is NaN
  (precision when nothing was predicted, recall when the reference is empty); the other is 0. rvd = -1 when the
  prediction is empty, +inf when the reference is empty. assd = msd = hd95 = +inf: there is no surface to be near.

:func:`aggregate` keeps these cases visible: Dice, IoU and VOE are always finite and averaged over all cases;
for the other scores the mean, median, std, min and max are over the finite values only, and ``n_nan`` and
``n_inf`` count the cases left out. Two Dice aggregates are given, as LiTS reports them: **dice_per_case** (mean of
the per-case Dice) and **dice_global** (one Dice from the TP/FP/FN voxel counts pooled over all cases).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ._checks import checked_spacing

__all__ = [
    "CLASSES",
    "OVERLAP_KEYS",
    "SCORE_KEYS",
    "SURFACE_KEYS",
    "aggregate",
    "class_masks",
    "evaluate_case",
    "score_masks",
    "surface_distances",
    "surface_mask",
]

#: Class name -> how the class mask is read from a label volume (LiTS convention).
CLASSES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "liver": lambda labels: labels >= 1,
    "tumor": lambda labels: labels == 2,
}
OVERLAP_KEYS = ("dice", "iou", "precision", "recall", "voe", "rvd")
SURFACE_KEYS = ("assd", "msd", "hd95")
SCORE_KEYS = OVERLAP_KEYS + SURFACE_KEYS


def _checked_labels(labels: object, name: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 3:
        raise ValueError(f"{name} must be a 3D (D, H, W) label volume, got shape {arr.shape}")
    if not (arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(
            f"{name} must hold integer labels (0 background, 1 liver, 2 tumor), got dtype {arr.dtype}"
        )
    return arr


def _checked_mask(mask: object, name: str) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim != 3:
        raise ValueError(f"{name} must be a 3D (D, H, W) mask, got shape {arr.shape}")
    if arr.dtype != np.bool_:
        if not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"{name} must be a boolean or integer mask, got dtype {arr.dtype}")
        arr = arr != 0
    return arr


def class_masks(labels: np.ndarray) -> dict[str, np.ndarray]:
    """The LiTS class masks of a label volume.

    Args:
        labels: (D, H, W) integer labels, 0 background, 1 liver, 2 tumor.

    Returns:
        ``{"liver": labels >= 1, "tumor": labels == 2}``, each (D, H, W) bool.
    """
    arr = _checked_labels(labels, "labels")
    return {name: rule(arr) for name, rule in CLASSES.items()}


def surface_mask(mask: np.ndarray) -> np.ndarray:
    """Surface voxels of a mask: voxels inside with at least one 6-neighbour outside (the volume border is outside).

    Args:
        mask: (D, H, W) bool (or integer, nonzero = inside).

    Returns:
        (D, H, W) bool, True on the surface.
    """
    m = _checked_mask(mask, "mask")
    padded = np.pad(m, 1, constant_values=False)
    interior = m.copy()
    for axis in range(3):
        for step in (-1, 1):
            interior &= np.roll(padded, step, axis=axis)[1:-1, 1:-1, 1:-1]
    return m & ~interior


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Smallest box holding every True voxel, or None for an empty mask."""
    if not mask.any():
        return None
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        box.append(slice(int(idx[0]), int(idx[-1]) + 1))
    return tuple(box)


def surface_distances(
    pred_mask: np.ndarray, gt_mask: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances between two non-empty masks, exact Euclidean, in mm.

    Args:
        pred_mask: (D, H, W) bool predicted mask.
        gt_mask: (D, H, W) bool reference mask, same shape.
        spacing: (dz, dy, dx) voxel spacing in mm.

    Returns:
        ``(pred_to_gt, gt_to_pred)``: float64 1D arrays; for every surface voxel of the prediction its distance to
        the nearest reference surface voxel, and the other way round (surfaces as in :func:`surface_mask`).

    Raises:
        ValueError: shapes differ, a mask is empty, or ``spacing`` is not three positive numbers.
    """
    from scipy import ndimage  # lazy: scipy is only needed for surface distances

    pred = _checked_mask(pred_mask, "pred_mask")
    gt = _checked_mask(gt_mask, "gt_mask")
    if pred.shape != gt.shape:
        raise ValueError(f"pred_mask and gt_mask must have the same shape, got {pred.shape} and {gt.shape}")
    sampling = checked_spacing(spacing)
    box = _bounding_box(pred | gt)
    if box is None or not pred.any() or not gt.any():
        raise ValueError("surface distances need two non-empty masks; handle empty masks before calling")
    # Outside the box both masks are empty, so cropping changes neither surface (surface_mask treats the
    # outside of its input as background, as the volume border is) nor any nearest-surface distance.
    pred_c = pred[box]
    gt_c = gt[box]
    pred_surface = surface_mask(pred_c)
    gt_surface = surface_mask(gt_c)
    # EDT of the complement of a surface = distance of every voxel to its nearest surface voxel.
    to_gt = ndimage.distance_transform_edt(~gt_surface, sampling=sampling)
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=sampling)
    return to_gt[pred_surface], to_pred[gt_surface]


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


def score_masks(
    pred_mask: np.ndarray, gt_mask: np.ndarray, spacing: Sequence[float], *, surface: bool = True
) -> dict[str, Any]:
    """All scores of one binary mask pair (one class of one case).

    Args:
        pred_mask: (D, H, W) bool predicted mask.
        gt_mask: (D, H, W) bool reference mask, same shape.
        spacing: (dz, dy, dx) in mm.
        surface: compute assd/msd/hd95 (the slow part); when False they are NaN.

    Returns:
        dict with the :data:`SCORE_KEYS` scores, the voxel counts ``tp``, ``fp``, ``fn``, and ``pred_ml`` /
        ``gt_ml`` (mask volumes in mL). Empty masks follow the rules in the module docstring.
    """
    pred = _checked_mask(pred_mask, "pred_mask")
    gt = _checked_mask(gt_mask, "gt_mask")
    if pred.shape != gt.shape:
        raise ValueError(f"pred_mask and gt_mask must have the same shape, got {pred.shape} and {gt.shape}")
    sp = checked_spacing(spacing)
    voxel_ml = sp[0] * sp[1] * sp[2] / 1000.0
    n_pred = int(np.count_nonzero(pred))
    n_gt = int(np.count_nonzero(gt))
    tp = int(np.count_nonzero(pred & gt))
    fp, fn = n_pred - tp, n_gt - tp
    out: dict[str, Any] = {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "pred_ml": n_pred * voxel_ml,
        "gt_ml": n_gt * voxel_ml,
    }

    if n_pred == 0 and n_gt == 0:
        out.update(dice=1.0, iou=1.0, precision=1.0, recall=1.0, voe=0.0, rvd=0.0)
        out.update(dict.fromkeys(SURFACE_KEYS, 0.0 if surface else math.nan))
        return out

    iou = tp / (tp + fp + fn)
    out.update(
        dice=2 * tp / (2 * tp + fp + fn),
        iou=iou,
        precision=_ratio(tp, n_pred),
        recall=_ratio(tp, n_gt),
        voe=1.0 - iou,
        rvd=(n_pred - n_gt) / n_gt if n_gt else math.inf,
    )
    if not surface:
        out.update(dict.fromkeys(SURFACE_KEYS, math.nan))
    elif n_pred == 0 or n_gt == 0:
        out.update(dict.fromkeys(SURFACE_KEYS, math.inf))
    elif fp == 0 and fn == 0:  # identical masks have identical surfaces: skip the distance transforms
        out.update(dict.fromkeys(SURFACE_KEYS, 0.0))
    else:
        d_pg, d_gp = surface_distances(pred, gt, sp)
        out.update(
            assd=float((d_pg.sum() + d_gp.sum()) / (d_pg.size + d_gp.size)),
            msd=float(max(d_pg.max(), d_gp.max())),
            hd95=float(max(np.percentile(d_pg, 95), np.percentile(d_gp, 95))),
        )
    return out


def evaluate_case(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float],
    *,
    classes: Sequence[str] = ("liver", "tumor"),
    surface: bool = True,
) -> dict[str, Any]:
    """Score one predicted label volume against its reference.

    Args:
        pred: (D, H, W) integer labels, 0 background, 1 liver, 2 tumor.
        gt: (D, H, W) reference labels, same shape.
        spacing: (dz, dy, dx) in mm.
        classes: which of :data:`CLASSES` to score.
        surface: compute the surface distances (assd, msd, hd95).

    Returns:
        ``{"shape": [D, H, W], "spacing": [dz, dy, dx], "<class>": {scores}}`` with one :func:`score_masks` dict
        per class.

    Raises:
        ValueError: shapes differ, not 3D, unknown class, or bad spacing.
        TypeError: labels are not integer.
    """
    p = _checked_labels(pred, "pred")
    g = _checked_labels(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred and gt must have the same shape, got {p.shape} and {g.shape}")
    sp = checked_spacing(spacing)
    unknown = [c for c in classes if c not in CLASSES]
    if unknown:
        raise ValueError(f"classes must be among {sorted(CLASSES)}, got {unknown}")
    out: dict[str, Any] = {"shape": list(p.shape), "spacing": list(sp)}
    for name in classes:
        rule = CLASSES[name]
        out[name] = score_masks(rule(p), rule(g), sp, surface=surface)
    return out


def _summary(values: Sequence[float]) -> dict[str, Any]:
    arr = np.asarray(values, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    stats: dict[str, Any] = {
        "n": int(finite.size),
        "n_nan": int(np.isnan(arr).sum()),
        "n_inf": int(np.isinf(arr).sum()),
    }
    if finite.size:
        stats.update(
            mean=float(finite.mean()),
            median=float(np.median(finite)),
            std=float(finite.std()),
            min=float(finite.min()),
            max=float(finite.max()),
        )
    else:
        stats.update(dict.fromkeys(("mean", "median", "std", "min", "max"), math.nan))
    return stats


def aggregate(cases: Sequence[Mapping[str, Any]] | Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Aggregate per-case results of :func:`evaluate_case`.

    Args:
        cases: a list of :func:`evaluate_case` dicts, or a mapping case name -> such dict.

    Returns:
        ``{"n_cases": n, "<class>": {"dice_per_case", "dice_global", "tp", "fp", "fn", "scores": {key: summary}}}``
        where each summary has ``mean``, ``median``, ``std``, ``min``, ``max`` over the finite values and ``n``,
        ``n_nan``, ``n_inf`` (see the module docstring). ``dice_global`` is 1.0 when no case has a voxel of that
        class in either mask, like the per-case Dice of two empty masks.

    Raises:
        ValueError: ``cases`` is empty.
    """
    items = list(cases.values()) if isinstance(cases, Mapping) else list(cases)
    if not items:
        raise ValueError("cases must hold at least one evaluate_case result, got none")
    out: dict[str, Any] = {"n_cases": len(items)}
    for name in CLASSES:
        per_class = [case[name] for case in items if name in case]
        if not per_class:
            continue
        tp = sum(int(c["tp"]) for c in per_class)
        fp = sum(int(c["fp"]) for c in per_class)
        fn = sum(int(c["fn"]) for c in per_class)
        denom = 2 * tp + fp + fn
        out[name] = {
            "n_cases": len(per_class),
            "dice_per_case": float(np.mean([c["dice"] for c in per_class])),
            "dice_global": 2 * tp / denom if denom else 1.0,
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "scores": {key: _summary([c[key] for c in per_class]) for key in SCORE_KEYS},
        }
    return out
