"""Lesion geometry and lesion-level detection scores.

Axis order is (D, H, W), spacing is (dz, dy, dx) in mm, labels are 0 background, 1 liver, 2 tumor.

- :func:`longest_axial_diameter_mm` — the RECIST-style size of one lesion: the largest in-plane distance between
  voxel centres over all axial slices.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["longest_axial_diameter_mm"]

# Above this many candidate points in one slice, reduce them to their convex hull before the pairwise search.
_HULL_THRESHOLD = 64


def _checked_spacing(spacing: Sequence[float], name: str = "spacing") -> tuple[float, float, float]:
    """Spacing as three positive finite floats (dz, dy, dx), or a ValueError naming ``name``."""
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be three numbers (dz, dy, dx) in mm, got {spacing!r}") from exc
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"{name} must be three positive finite numbers (dz, dy, dx) in mm, got {spacing!r}")
    return values  # type: ignore[return-value]


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
    their convex hull when many remain, and only the hull is searched pairwise.

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
    _, dy, dx = _checked_spacing(spacing)
    if not mask.any():
        return 0.0
    # Crop to the bounding box so that huge, mostly empty masks cost little.
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    ys = np.flatnonzero(mask.any(axis=(0, 2)))
    xs = np.flatnonzero(mask.any(axis=(0, 1)))
    crop = mask[zs[0] : zs[-1] + 1, ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1]
    width = crop.shape[2]
    row_has = crop.any(axis=2)  # (d, h)
    left = crop.argmax(axis=2)  # first True per row
    right = width - 1 - crop[:, :, ::-1].argmax(axis=2)  # last True per row

    best = 0.0
    for z in range(crop.shape[0]):
        rows = np.flatnonzero(row_has[z])
        if rows.size == 0:
            continue
        y_mm = rows * dy
        points = np.concatenate(
            [np.stack([y_mm, left[z, rows] * dx], axis=1), np.stack([y_mm, right[z, rows] * dx], axis=1)]
        )
        if len(points) > _HULL_THRESHOLD:
            points = _convex_hull(points)
        best = max(best, _max_pairwise_distance(points))
    return best
