"""Lesion geometry and lesion-level detection scores.

Axis order is (D, H, W), spacing is (dz, dy, dx) in mm, labels are 0 background, 1 liver, 2 tumor.

- :func:`longest_axial_diameter_mm` — the RECIST-style size of one lesion: the largest in-plane distance between
  voxel centres over all axial slices.
- :func:`lesion_detection` — lesion-level detection scores of one case (LiTS rule), by size bucket, and the
  tumor-burden error; :func:`aggregate_lesion_detection` pools them over cases.
- :func:`match_lesions` — the matching step alone, on component label volumes.

Lesions are the 3D connected components (26-connectivity by default) of ``labels == 2``, found with
:func:`resunet_trt.kernels.connected_components`.

Matching rules:

- ``criterion="iou"`` (the LiTS rule, default): a reference lesion is **detected** when some predicted lesion
  has IoU > ``iou_threshold`` (0.5) with it; a predicted lesion is a **true positive** when it has IoU >
  threshold with some reference lesion. With a threshold of 0.5 or more the pairing is one-to-one (two disjoint
  lesions cannot both cover more than half of a third), so a lesion split in two halves, or two lesions merged
  into one prediction, count as missed (and the predictions as false positives).
- ``criterion="overlap"``: any shared voxel is enough, so split and merged lesions count as found; one prediction
  may then detect several reference lesions and several predictions may detect one.

Scores: precision = true-positive predictions / predictions, recall = detected reference lesions / reference
lesions, F1 = their harmonic mean. With no reference lesions recall is NaN; with no predictions precision is NaN;
F1 is 0 when exactly one side has lesions and NaN when neither has.

Size buckets (by longest axial diameter, :func:`longest_axial_diameter_mm`): ``"<10mm"`` (d < 10),
``"10-20mm"`` (10 <= d <= 20), ``">20mm"`` (d > 20). A reference lesion goes in the bucket of its own diameter; a
true-positive prediction in the bucket of the reference lesion it matches best (highest IoU), so per-bucket
precision and recall speak of the same lesions; a false-positive prediction in the bucket of its own diameter.

Tumor burden = tumor volume / liver volume, liver = labels >= 1 (it includes the tumors); burden error =
|predicted burden - reference burden| (NaN when the reference has no liver; a predicted burden with no predicted
liver is 0).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._checks import checked_spacing

__all__ = [
    "BUCKETS",
    "aggregate_lesion_detection",
    "lesion_detection",
    "longest_axial_diameter_mm",
    "match_lesions",
    "size_bucket",
]

#: Size buckets by longest axial diameter in mm, in report order.
BUCKETS = ("<10mm", "10-20mm", ">20mm")
CRITERIA = ("iou", "overlap")

# Above this many candidate points in one slice, reduce them to their convex hull before the pairwise search.
_HULL_THRESHOLD = 64


def _checked_mask(mask: object, name: str) -> np.ndarray:
    """A (D, H, W) boolean view of ``mask``; nonzero means inside."""
    arr = np.asarray(mask)
    if arr.ndim != 3:
        raise ValueError(f"{name} must be a 3D (D, H, W) array, got shape {arr.shape}")
    if arr.dtype != np.bool_:
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise TypeError(f"{name} must be a boolean or numeric array, got dtype {arr.dtype}")
        arr = arr != 0
    return arr


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """Vertices of the 2D convex hull of ``points`` (N, 2) by Andrew's monotone chain (collinear points dropped)."""
    pts = np.unique(points, axis=0)  # sorted lexicographically, as the chain needs
    if len(pts) <= 2:
        return pts

    def half(seq: np.ndarray) -> list[tuple[float, float]]:
        chain: list[tuple[float, float]] = []
        for x, y in seq:
            while len(chain) >= 2:
                (ax, ay), (bx, by) = chain[-2], chain[-1]
                if (bx - ax) * (y - ay) - (by - ay) * (x - ax) > 0:
                    break
                chain.pop()
            chain.append((float(x), float(y)))
        return chain

    lower = half(pts)
    upper = half(pts[::-1])
    return np.asarray(lower[:-1] + upper[:-1])


def _max_pairwise_distance(points: np.ndarray) -> float:
    """Largest Euclidean distance between any two rows of ``points`` (N, 2)."""
    if len(points) < 2:
        return 0.0
    diff = points[:, None, :] - points[None, :, :]
    return float(np.sqrt((diff * diff).sum(axis=-1).max()))


def longest_axial_diameter_mm(component_mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Longest axial (in-plane) diameter of one lesion, in mm.

    The diameter is the largest distance between the centres of two voxels of the component that lie on the same
    axial slice, taken over all slices; distances use the in-plane spacing (dy, dx), so anisotropic pixels are
    measured correctly. This is the RECIST longest-diameter convention on voxel centres: a single voxel, or a lesion
    one voxel wide in every slice, measures 0 mm, and any lesion measures about one pixel less than its outer
    extent (a disc of radius r voxels measures 2r pixels, not 2r + 1). The component need not be connected inside
    a slice; every voxel of the mask counts.

    Why it is fast: the farthest pair of a point set lies on its convex hull, and every hull vertex of a set of pixel
    centres is the leftmost or rightmost pixel of its row. So each slice is reduced to two points per row, those to
    their convex hull when many remain, and only the hull is searched pairwise. Slices are searched widest bounding
    box first, and a slice whose box diagonal cannot beat the best diameter so far is not searched at all.

    Args:
        component_mask: (D, H, W) bool (or integer, nonzero = inside) mask of one lesion; it may be a crop of the
            volume (only in-plane distances matter, so cropping does not change the result).
        spacing: (dz, dy, dx) voxel spacing in mm; dz is validated but unused.

    Returns:
        The diameter in mm; 0.0 for an empty mask.

    Raises:
        ValueError: ``component_mask`` is not 3D, or ``spacing`` is not three positive finite numbers.
        TypeError: ``component_mask`` is not boolean or numeric.
    """
    mask = _checked_mask(component_mask, "component_mask")
    _, dy, dx = checked_spacing(spacing)
    box = _bounding_box(mask)
    if box is None:
        return 0.0
    crop = mask[box]  # huge, mostly empty masks cost little
    width = crop.shape[2]
    row_has = np.asarray(crop.any(axis=2))  # (d, h)
    left = crop.argmax(axis=2)  # first True per row
    right = width - 1 - crop[:, :, ::-1].argmax(axis=2)  # last True per row

    # No two points of a slice lie farther apart than the corners of the slice's own bounding box, so the slices
    # are visited widest box first and the search stops once no remaining box can beat the best diameter found.
    slice_rows = row_has.any(axis=1)
    first_row = np.where(slice_rows, row_has.argmax(axis=1), 0)
    last_row = np.where(slice_rows, row_has.shape[1] - 1 - row_has[:, ::-1].argmax(axis=1), 0)
    big = np.iinfo(np.int64).max
    lo_col = np.where(row_has, left, big).min(axis=1)
    hi_col = np.where(row_has, right, -1).max(axis=1)
    bound = np.where(slice_rows, np.hypot((last_row - first_row) * dy, (hi_col - lo_col) * dx), -1.0)
    best = 0.0
    for z in np.argsort(-bound, kind="stable"):
        if bound[z] <= best:
            break
        rows = np.flatnonzero(row_has[z])
        y_mm = rows * dy
        points = np.concatenate(
            [np.stack([y_mm, left[z, rows] * dx], axis=1), np.stack([y_mm, right[z, rows] * dx], axis=1)]
        )
        if len(points) > _HULL_THRESHOLD:
            points = _convex_hull(points)
        best = max(best, _max_pairwise_distance(points))
    return best


def size_bucket(diameter_mm: float) -> str:
    """Size bucket of a lesion: ``"<10mm"`` (d < 10), ``"10-20mm"`` (10 <= d <= 20) or ``">20mm"`` (d > 20)."""
    if diameter_mm < 10.0:
        return BUCKETS[0]
    if diameter_mm <= 20.0:
        return BUCKETS[1]
    return BUCKETS[2]


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice, slice] | None:
    """Smallest box holding every True voxel of a (D, H, W) mask, or None when it is empty."""
    bounds = []
    for axis in range(3):
        idx = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        if idx.size == 0:
            return None
        bounds.append(slice(int(idx[0]), int(idx[-1]) + 1))
    return bounds[0], bounds[1], bounds[2]


def _components_of(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    from .kernels import connected_components

    labels, count = connected_components(
        np.ascontiguousarray(mask, dtype=np.uint8), connectivity=connectivity
    )
    return np.asarray(labels), int(count)


def _checked_components(components: object, name: str) -> tuple[np.ndarray, int]:
    arr = np.asarray(components)
    if arr.ndim != 3:
        raise ValueError(f"{name} must be a 3D (D, H, W) component label volume, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must hold integer component ids, got dtype {arr.dtype}")
    count = int(arr.max()) if arr.size else 0
    if arr.size and int(arr.min()) < 0:
        raise ValueError(f"{name} must hold ids >= 0 (0 background), got a minimum of {int(arr.min())}")
    return arr, count


def _lesion_geometry(components: np.ndarray, count: int, spacing: tuple[float, float, float]) -> list[dict]:
    """Voxel count, volume and longest axial diameter of components 1..count."""
    flat = components.ravel()
    idx = np.flatnonzero(flat)
    ids = flat[idx]
    order = np.argsort(ids, kind="stable")
    idx, ids = idx[order], ids[order]
    sizes = np.bincount(ids, minlength=count + 1)
    starts = np.concatenate([[0], np.cumsum(sizes[1:])])
    voxel_ml = spacing[0] * spacing[1] * spacing[2] / 1000.0
    out = []
    for k in range(1, count + 1):
        z, y, x = np.unravel_index(idx[starts[k - 1] : starts[k]], components.shape)
        diameter = 0.0
        if z.size:
            lo = (z.min(), y.min(), x.min())
            crop = np.zeros((z.max() - lo[0] + 1, y.max() - lo[1] + 1, x.max() - lo[2] + 1), bool)
            crop[z - lo[0], y - lo[1], x - lo[2]] = True
            diameter = longest_axial_diameter_mm(crop, spacing)
        out.append(
            {
                "id": k,
                "voxels": int(sizes[k]),
                "volume_ml": float(sizes[k] * voxel_ml),
                "diameter_mm": diameter,
            }
        )
    return out


def _ratio(num: int, den: int) -> float:
    return num / den if den else math.nan


def _f1(precision: float, recall: float, n_pred: int, n_gt: int) -> float:
    if n_pred == 0 and n_gt == 0:
        return math.nan
    if n_pred == 0 or n_gt == 0 or precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def _scores(n_gt: int, detected: int, n_pred: int, tp_pred: int) -> dict[str, Any]:
    precision = _ratio(tp_pred, n_pred)
    recall = _ratio(detected, n_gt)
    return {
        "n_gt": n_gt,
        "detected": detected,
        "missed": n_gt - detected,
        "n_pred": n_pred,
        "tp_pred": tp_pred,
        "fp": n_pred - tp_pred,
        "precision": precision,
        "recall": recall,
        "f1": _f1(precision, recall, n_pred, n_gt),
    }


def match_lesions(
    gt_components: np.ndarray,
    pred_components: np.ndarray,
    *,
    criterion: str = "iou",
    iou_threshold: float = 0.5,
) -> dict[str, Any]:
    """Match reference and predicted lesions given as component label volumes.

    Args:
        gt_components: (D, H, W) integer, 0 background, reference lesions numbered 1..n_gt.
        pred_components: (D, H, W) integer, predicted lesions numbered 1..n_pred, same shape.
        criterion: ``"iou"`` (IoU > ``iou_threshold``, LiTS) or ``"overlap"`` (any shared voxel).
        iou_threshold: the IoU a pair must exceed under ``criterion="iou"``, in [0, 1).

    Returns:
        ``{"n_gt", "n_pred", "pairs", "gt_best_iou", "pred_best_iou", "gt_matches", "pred_matches"}``: ``pairs`` is
        a list of ``(gt_id, pred_id, intersection, iou)`` for every overlapping pair; ``gt_best_iou`` /
        ``pred_best_iou`` (index = id, entry 0 unused) the highest IoU of each lesion with any lesion of the other
        side; ``gt_matches[g]`` / ``pred_matches[p]`` the ids on the other side that match under the criterion,
        best IoU first.

    Raises:
        ValueError: shapes differ, unknown criterion, threshold outside [0, 1), negative ids.
        TypeError: component volumes are not integer.
    """
    gt, n_gt = _checked_components(gt_components, "gt_components")
    pred, n_pred = _checked_components(pred_components, "pred_components")
    if gt.shape != pred.shape:
        raise ValueError(
            f"gt_components and pred_components must have the same shape, got {gt.shape} and {pred.shape}"
        )
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    if not 0.0 <= float(iou_threshold) < 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1), got {iou_threshold!r}")

    gt_sizes = np.bincount(gt.ravel(), minlength=n_gt + 1)
    pred_sizes = np.bincount(pred.ravel(), minlength=n_pred + 1)
    both = (gt > 0) & (pred > 0)
    # Joint histogram of (gt id, pred id) over overlapping voxels: one pass, no per-lesion masks.
    keys = gt[both].astype(np.int64) * (n_pred + 1) + pred[both].astype(np.int64)
    pair_keys, inters = np.unique(keys, return_counts=True)
    pairs = []
    gt_best = [0.0] * (n_gt + 1)
    pred_best = [0.0] * (n_pred + 1)
    gt_matches: list[list[tuple[float, int]]] = [[] for _ in range(n_gt + 1)]
    pred_matches: list[list[tuple[float, int]]] = [[] for _ in range(n_pred + 1)]
    for key, inter in zip(pair_keys.tolist(), inters.tolist()):
        g, p = divmod(key, n_pred + 1)
        iou = inter / (int(gt_sizes[g]) + int(pred_sizes[p]) - inter)
        pairs.append((g, p, inter, iou))
        gt_best[g] = max(gt_best[g], iou)
        pred_best[p] = max(pred_best[p], iou)
        if criterion == "overlap" or iou > iou_threshold:
            gt_matches[g].append((iou, p))
            pred_matches[p].append((iou, g))
    return {
        "n_gt": n_gt,
        "n_pred": n_pred,
        "pairs": pairs,
        "gt_best_iou": gt_best,
        "pred_best_iou": pred_best,
        "gt_matches": [[p for _, p in sorted(m, reverse=True)] for m in gt_matches],
        "pred_matches": [[g for _, g in sorted(m, reverse=True)] for m in pred_matches],
    }


def _burden(labels: np.ndarray) -> float:
    liver = int(np.count_nonzero(labels >= 1))
    return int(np.count_nonzero(labels == 2)) / liver if liver else math.nan


def lesion_detection(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float],
    *,
    criterion: str = "iou",
    iou_threshold: float = 0.5,
    connectivity: int = 26,
) -> dict[str, Any]:
    """Lesion-level detection scores of one case, overall and by size bucket, and the tumor-burden error.

    Args:
        pred: (D, H, W) integer labels (0 background, 1 liver, 2 tumor), the prediction.
        gt: (D, H, W) reference labels, same shape.
        spacing: (dz, dy, dx) in mm.
        criterion: ``"iou"`` (LiTS: IoU > ``iou_threshold``) or ``"overlap"`` (any shared voxel).
        iou_threshold: see :func:`match_lesions`.
        connectivity: 6, 18 or 26, for the lesion components.

    Returns:
        dict with the overall counts and scores (``n_gt``, ``detected``, ``missed``, ``n_pred``, ``tp_pred``,
        ``fp``, ``precision``, ``recall``, ``f1``), ``buckets`` (the same per size bucket), ``gt_burden``,
        ``pred_burden``, ``burden_error``, and per-lesion lists ``gt_lesions`` / ``pred_lesions`` (id, voxels,
        volume_ml, diameter_mm, bucket, best_iou, matched ids). Rules in the module docstring.

    Raises:
        ValueError: shapes differ, not 3D, bad spacing, criterion or threshold.
        TypeError: labels are not integer.
    """
    p = np.asarray(pred)
    g = np.asarray(gt)
    for name, arr in (("pred", p), ("gt", g)):
        if arr.ndim != 3:
            raise ValueError(f"{name} must be a 3D (D, H, W) label volume, got shape {arr.shape}")
        if not (arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer)):
            raise TypeError(
                f"{name} must hold integer labels (0 background, 1 liver, 2 tumor), got {arr.dtype}"
            )
    if p.shape != g.shape:
        raise ValueError(f"pred and gt must have the same shape, got {p.shape} and {g.shape}")
    sp = checked_spacing(spacing)
    if connectivity not in (6, 18, 26):
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity!r}")
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")

    gt_tumor, pred_tumor = g == 2, p == 2
    # Every lesion lies inside the bounding box of all tumor voxels: work there. Cropping keeps the components
    # and their raster-order numbering, so ids are those of the full volume.
    box = _bounding_box(gt_tumor | pred_tumor) or (slice(0, 0),) * 3
    gt_cc, _ = _components_of(gt_tumor[box], connectivity)
    pred_cc, _ = _components_of(pred_tumor[box], connectivity)
    match = match_lesions(gt_cc, pred_cc, criterion=criterion, iou_threshold=iou_threshold)
    gt_les = _lesion_geometry(gt_cc, match["n_gt"], sp)
    pred_les = _lesion_geometry(pred_cc, match["n_pred"], sp)
    for les in gt_les:
        les["bucket"] = size_bucket(les["diameter_mm"])
        les["best_iou"] = match["gt_best_iou"][les["id"]]
        les["matched_pred"] = match["gt_matches"][les["id"]]
        les["detected"] = bool(les["matched_pred"])
    for les in pred_les:
        les["best_iou"] = match["pred_best_iou"][les["id"]]
        les["matched_gt"] = match["pred_matches"][les["id"]]
        les["true_positive"] = bool(les["matched_gt"])
        # A hit speaks of the reference lesion it found; a false alarm of its own size.
        source = gt_les[les["matched_gt"][0] - 1]["diameter_mm"] if les["matched_gt"] else les["diameter_mm"]
        les["bucket"] = size_bucket(source)

    def counts(bucket: str | None) -> dict[str, Any]:
        gl = [x for x in gt_les if bucket is None or x["bucket"] == bucket]
        pl = [x for x in pred_les if bucket is None or x["bucket"] == bucket]
        return _scores(len(gl), sum(x["detected"] for x in gl), len(pl), sum(x["true_positive"] for x in pl))

    gt_burden, pred_burden = _burden(g), _burden(p)
    if math.isnan(pred_burden):
        pred_burden = 0.0
    out: dict[str, Any] = {
        "criterion": criterion,
        "iou_threshold": float(iou_threshold) if criterion == "iou" else None,
        "connectivity": connectivity,
        **counts(None),
        "buckets": {b: counts(b) for b in BUCKETS},
        "gt_burden": gt_burden,
        "pred_burden": pred_burden,
        "burden_error": abs(pred_burden - gt_burden),
        "gt_lesions": gt_les,
        "pred_lesions": pred_les,
    }
    return out


_COUNT_KEYS = ("n_gt", "detected", "n_pred", "tp_pred")


def aggregate_lesion_detection(
    cases: Sequence[Mapping[str, Any]] | Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    """Pool :func:`lesion_detection` results over cases.

    Lesion counts are summed over all cases before precision, recall and F1 are taken (each lesion weighs the
    same, whichever case it is in), overall and per size bucket.

    Args:
        cases: a list of :func:`lesion_detection` dicts, or a mapping case name -> such dict.

    Returns:
        ``{"n_cases", <pooled counts and scores>, "buckets": {...}, "burden_error": {"mean", "median", "max", "n"}}``
        (the burden summary is over the cases with a finite error).

    Raises:
        ValueError: ``cases`` is empty.
    """
    items = list(cases.values()) if isinstance(cases, Mapping) else list(cases)
    if not items:
        raise ValueError("cases must hold at least one lesion_detection result, got none")

    def pooled(get: Any) -> dict[str, Any]:
        totals = {k: sum(int(get(c)[k]) for c in items) for k in _COUNT_KEYS}
        return _scores(totals["n_gt"], totals["detected"], totals["n_pred"], totals["tp_pred"])

    errors = np.asarray([c["burden_error"] for c in items], dtype=np.float64)
    finite = errors[np.isfinite(errors)]
    burden = {
        "n": int(finite.size),
        "mean": float(finite.mean()) if finite.size else math.nan,
        "median": float(np.median(finite)) if finite.size else math.nan,
        "max": float(finite.max()) if finite.size else math.nan,
    }
    return {
        "n_cases": len(items),
        **pooled(lambda c: c),
        "buckets": {b: pooled(lambda c, b=b: c["buckets"][b]) for b in BUCKETS},
        "burden_error": burden,
    }
