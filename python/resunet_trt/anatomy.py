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

A lesion cannot lie outside the liver either (:func:`drop_lesions_outside_liver`): a small tumor component (up to
10 mL) whose surface borders background more than liver (the gallbladder, a bowel loop or fat against the liver's
edge) is not a liver lesion; a larger one is kept, since a large tumor can bulge out of the liver. On the expert labels of the project's real cases every lesion borders liver over at least two thirds of
its surface, most over more than four fifths.
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
    inplace: bool = False,
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
        inplace: remove from ``labels`` itself instead of a copy.

    Returns:
        (labels, removed mL): the input itself when nothing was removed (or ``inplace``), else a new array.
    """
    from scipy import ndimage

    if labels.ndim != 3:
        raise ValueError(f"labels must be 3-D (D, H, W), got shape {labels.shape}")
    # The coarse grid is a strided view of the mask's bounding box; the full-resolution mask is only made when
    # something is removed.
    box = _box_of_labels_from(labels, 1)
    if box is None:
        return labels, 0.0
    sub_shape = tuple(b.stop - b.start for b in box)
    strides = tuple(max(1, int(grid_mm // float(s))) for s in spacing)
    coarse = labels[box][:: strides[0], :: strides[1], :: strides[2]] >= 1
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
    remove = remove[: sub_shape[0], : sub_shape[1], : sub_shape[2]] & (labels[box] >= 1)
    out = labels if inplace else labels.copy()
    out[box][remove] = 0
    removed_ml = float(np.count_nonzero(remove)) * math.prod(float(s) for s in spacing) / 1000.0
    logger.info("removed %.1f mL joined to the liver above its dome (%d core(s))", removed_ml, len(drop))
    return out, removed_ml


def _box_of_labels_from(labels: np.ndarray, lowest: int) -> tuple[slice, ...] | None:
    """The bounding box (D, H, W slices) of the voxels labelled ``lowest`` or higher, or None when there are none.

    Found from maxima (per slice, then over the slices in range), without the full-size boolean temporary that
    ``labels >= lowest`` would allocate.
    """
    z_hit = np.flatnonzero(np.max(labels, axis=(1, 2)) >= lowest)
    if z_hit.size == 0:
        return None
    z0, z1 = int(z_hit[0]), int(z_hit[-1]) + 1
    plane = np.max(labels[z0:z1], axis=0) >= lowest  # (H, W): where any slice of the range holds such a voxel
    ys, xs = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
    return (slice(z0, z1), slice(int(ys[0]), int(ys[-1]) + 1), slice(int(xs[0]), int(xs[-1]) + 1))


def tumor_box(labels: np.ndarray) -> tuple[slice, ...] | None:
    """The bounding box of the tumor voxels grown by one voxel (within the volume), or None without tumor.

    ``labels`` holds 0, 1 and 2 only, so the tumor voxels are those labelled 2 or higher.
    """
    box = _box_of_labels_from(labels, 2)
    if box is None:
        return None
    return tuple(slice(max(b.start - 1, 0), min(b.stop + 1, n)) for b, n in zip(box, labels.shape))


def liver_border_fractions(
    labels: np.ndarray, spacing: Sequence[float], *, connectivity: int = 26
) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray]:
    """For each tumor component, the share of its surface that borders liver rather than background.

    The surface is the set of voxel faces between a tumor voxel and a non-tumor voxel (its six face neighbours),
    each weighted by its physical area, so anisotropic voxels count as the scan's geometry says. Faces on the
    volume's edge do not count. The work is done inside the tumor's bounding box.

    Args:
        labels: uint8 (D, H, W), 0 background, 1 liver, 2 tumor.
        spacing: (dz, dy, dx) in mm.
        connectivity: 6, 18 or 26, for the tumor components.

    Returns:
        (box, components, fractions): the box (slices into ``labels``, the tumor's bounding box grown by one
        voxel), int32 component ids of ``labels[box]`` (0 = no tumor, 1..n) and float64 (n,) fractions (1.0 for
        a component without any bordering face). Without tumor: an empty box, an empty array and no fractions.
    """
    from scipy import ndimage

    from . import kernels

    if labels.ndim != 3:
        raise ValueError(f"labels must be 3-D (D, H, W), got shape {labels.shape}")
    box = tumor_box(labels)
    if box is None:
        return (slice(0, 0),) * 3, np.zeros((0, 0, 0), np.int32), np.zeros(0)
    sub = np.ascontiguousarray(labels[box])
    comps, n = kernels.connected_components(sub == 2, connectivity=connectivity)
    comps = np.asarray(comps)
    dz, dy, dx = (float(v) for v in spacing)
    face_area = (dy * dx, dz * dx, dz * dy)  # faces normal to z, y, x
    frac = np.ones(n)
    for i, lesion in enumerate(ndimage.find_objects(comps), start=1):
        if lesion is None:
            continue
        # The lesion's box grown by one voxel (within the tumor box): every face of the lesion lies inside it.
        grown = tuple(slice(max(b.start - 1, 0), min(b.stop + 1, size)) for b, size in zip(lesion, sub.shape))
        inside = comps[grown] == i
        lab = sub[grown]
        liver = total = 0.0
        for axis in range(3):
            for a, b in ((slice(None, -1), slice(1, None)), (slice(1, None), slice(None, -1))):
                here, there = [slice(None)] * 3, [slice(None)] * 3
                here[axis], there[axis] = a, b
                other = lab[tuple(there)]
                face = inside[tuple(here)] & (other != 2)
                total += float(np.count_nonzero(face)) * face_area[axis]
                liver += float(np.count_nonzero(face & (other == 1))) * face_area[axis]
        if total > 0:
            frac[i - 1] = liver / total
    return box, comps, frac


def drop_lesions_outside_liver(
    labels: np.ndarray,
    spacing: Sequence[float],
    *,
    min_liver_border: float = 0.5,
    max_lesion_ml: float = 10.0,
    connectivity: int = 26,
    inplace: bool = False,
) -> tuple[np.ndarray, int]:
    """Remove small tumor components that border liver over less than ``min_liver_border`` of their surface.

    Such a "lesion" lies mostly outside the liver (a gallbladder, a bowel loop, fat at the liver's edge), so its
    voxels become background, not liver. A lesion larger than ``max_lesion_ml`` is kept whatever its border: a
    large tumor can bulge out of the liver, and a network that calls a whole liver tumor must not lose it.

    Args:
        labels: uint8 (D, H, W), 0 background, 1 liver, 2 tumor.
        spacing: (dz, dy, dx) in mm.
        min_liver_border: the least share of a lesion's surface (by area) that must border liver, in [0, 1].
        max_lesion_ml: only lesions up to this volume (mL) are judged by their border.
        connectivity: 6, 18 or 26, for the tumor components.
        inplace: remove from ``labels`` itself instead of a copy.

    Returns:
        (labels, removed): the input itself when nothing was removed (or ``inplace``), else a new array; the number
        of lesions removed.
    """
    if not 0.0 <= float(min_liver_border) <= 1.0:
        raise ValueError(f"min_liver_border must be in [0, 1], got {min_liver_border!r}")
    if not float(max_lesion_ml) >= 0.0:
        raise ValueError(f"max_lesion_ml must be >= 0, got {max_lesion_ml!r}")
    from scipy import ndimage

    box, comps, frac = liver_border_fractions(labels, spacing, connectivity=connectivity)
    candidates = np.flatnonzero(frac < float(min_liver_border)) + 1
    if candidates.size == 0:
        return labels, 0
    # Volumes and removal inside each candidate's own box: the tumor box can span most of the volume.
    voxel_ml = math.prod(float(v) for v in spacing) / 1000.0
    objects = ndimage.find_objects(comps)
    drop = []
    for i in candidates:
        inside = comps[objects[i - 1]] == i
        if np.count_nonzero(inside) * voxel_ml <= float(max_lesion_ml):
            drop.append((objects[i - 1], inside))
    if not drop:
        return labels, 0
    out = labels if inplace else labels.copy()
    for lesion, inside in drop:
        out[box][lesion][inside] = 0
    logger.info("removed %d lesion(s) lying mostly outside the liver", len(drop))
    return out, len(drop)


__all__ = ["drop_lesions_outside_liver", "drop_organs_above_liver", "liver_border_fractions"]
