"""Liver by anatomy: split off an organ that the network called liver and that touches the liver.

"Keep the largest liver component" fails when a wrongly labelled organ touches the liver: the heart lies on the
liver dome with only the diaphragm between them, and a network that calls the right atrium liver joins both into
one component. Such a join is a thin bridge (the diaphragm, a few millimetres), while the organs themselves are
thick. So, on a coarse grid (about 3 mm):

1. the cores of the liver mask are its voxels deeper than ``core_radius_mm`` (Euclidean distance to the
   background, physical spacing): a bridge thinner than twice that radius has no core, and the organs it joins
   fall apart into separate cores;
2. the largest core is the liver's; a second core of at least ``min_core_ml`` whose centroid lies above the top
   of the liver core's bulk (superior to its ``superior_quantile`` slice: where the heart sits, above the dome)
   is another organ. A second core beside the liver (a thick left lobe on a thin neck, say) is kept: the rule
   removes only what anatomy says cannot be liver;
3. every mask voxel nearer to a removed core than to the liver core is removed (a Voronoi split of the mask
   between the cores), then the largest component is kept again and tumor only inside it, as before.

Nothing changes when the mask has a single core, which is the usual case. Runs on the host (numpy and SciPy's
exact Euclidean distance transform) over the mask's bounding box on the coarse grid: tens of milliseconds for a
512x512x119 volume.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)


def drop_organs_above_liver(
    labels: np.ndarray,
    spacing: Sequence[float],
    *,
    core_radius_mm: float = 6.0,
    min_core_ml: float = 10.0,
    superior_quantile: float = 0.9,
    grid_mm: float = 3.0,
) -> tuple[np.ndarray, float]:
    """Remove from a 0/1/2 label volume an organ joined to the liver above its dome (see the module docstring).

    Args:
        labels: uint8 (D, H, W), 0 background, 1 liver, 2 tumor, canonical orientation (D inferior to superior).
        spacing: (dz, dy, dx) in mm.
        core_radius_mm: depth below which the mask is a bridge, not an organ.
        min_core_ml: a second core smaller than this is left alone.
        superior_quantile: a second core whose centroid lies above this quantile of the liver core's slices is
            removed.
        grid_mm: the coarse grid's voxel size (never finer than the volume's own).

    Returns:
        (labels, removed mL): the input itself when nothing was removed, else a new array.
    """
    from scipy import ndimage

    if labels.ndim != 3:
        raise ValueError(f"labels must be 3-D (D, H, W), got shape {labels.shape}")
    fg = labels >= 1
    if not fg.any():
        return labels, 0.0
    nz = [np.flatnonzero(fg.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    box = tuple(slice(int(n[0]), int(n[-1]) + 1) for n in nz)
    sub = fg[box]
    strides = tuple(max(1, int(grid_mm // float(s))) for s in spacing)
    coarse = sub[:: strides[0], :: strides[1], :: strides[2]]
    cell = tuple(float(s) * k for s, k in zip(spacing, strides))
    cell_ml = math.prod(cell) / 1000.0
    # Pad with background so that the box edge counts as outside the mask.
    depth = ndimage.distance_transform_edt(np.pad(coarse, 1), sampling=cell)[1:-1, 1:-1, 1:-1]
    cores, n = ndimage.label(depth > core_radius_mm, structure=np.ones((3, 3, 3), bool))
    if n < 2:
        return labels, 0.0
    sizes = np.bincount(cores.ravel())[1:] * cell_ml
    order = np.argsort(sizes)[::-1]
    main = int(order[0]) + 1
    main_z = np.flatnonzero((cores == main).any(axis=(1, 2)))
    top = np.quantile(main_z, superior_quantile)
    drop = []
    for i in order[1:]:
        if sizes[i] < min_core_ml:
            break
        z_centre = ndimage.center_of_mass(cores == i + 1)[0]
        if z_centre > top:
            drop.append(int(i) + 1)
    if not drop:
        return labels, 0.0
    to_main = ndimage.distance_transform_edt(cores != main, sampling=cell)
    to_dropped = ndimage.distance_transform_edt(~np.isin(cores, drop), sampling=cell)
    # Every cell is assigned (not only the sampled mask cells), so that the full-resolution voxels a cell stands
    # for all follow its nearest core.
    remove = to_dropped < to_main
    for axis, k in enumerate(strides):
        remove = np.repeat(remove, k, axis=axis)
    remove = remove[: sub.shape[0], : sub.shape[1], : sub.shape[2]] & sub
    out = labels.copy()
    out[box][remove] = 0
    removed_ml = float(np.count_nonzero(remove)) * math.prod(float(s) for s in spacing) / 1000.0
    logger.info("removed %.1f mL joined to the liver above its dome (%d core(s))", removed_ml, len(drop))
    return out, removed_ml


__all__ = ["drop_organs_above_liver"]
