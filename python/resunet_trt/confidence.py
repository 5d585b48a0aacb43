"""A lesion is reported only where the network was sure of tumor somewhere inside it.

The argmax labels a pixel tumor as soon as tumor beats liver and background, by however little; lesions made only of
such pixels are where the network hesitated (vessels darker than the parenchyma, partial volume at the liver's edge).
During decoding every network pixel is marked "sure" when its tumor probability (softmax over the classes) reaches
``min_confidence``; afterwards a lesion none of whose voxels maps to a sure pixel becomes liver, like a lesion under
the size floor. The voxel-to-pixel mapping is the decode's own (``VolumePlan.kernel_mapping``), rounded to the
nearest network pixel.

``benchmarks/lesion_confidence.py`` measures the peak tumor log-odds of every lesion on the real cases.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["drop_unsure_lesions", "log_odds_floor", "nearest_source_index", "refine_labels", "sure_tumor"]

#: Class index of tumor in the network's logits (background, liver, tumor).
TUMOR_CLASS = 2


def log_odds_floor(min_confidence: float) -> float | None:
    """The tumor log-odds ``log(p / (1 - p))`` of a probability ``p`` in [0, 1); None for 0 (no floor)."""
    p = float(min_confidence)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"min_confidence must be in [0, 1), got {min_confidence!r}")
    return None if p == 0.0 else math.log(p / (1.0 - p))


def refine_labels(
    labels: np.ndarray,
    spacing: Any,
    *,
    anatomy: bool,
    sure: np.ndarray | None,
    mapping: Mapping[str, Any],
    connectivity: int,
    inplace: bool = False,
) -> np.ndarray | None:
    """The rules after the argmax and the largest component: the anatomy rules (:mod:`resunet_trt.anatomy`), then
    the confidence floor (:func:`drop_unsure_lesions`, skipped when ``sure`` is None). ``inplace``: the rules
    change ``labels`` itself (a pipeline's own array) instead of copies of it.

    Returns:
        the new labels (postprocessed again: the liver's largest component), or None when nothing changed.
    """
    from . import kernels

    refined, changed = labels, False
    if anatomy:
        from .anatomy import drop_lesions_outside_liver, drop_organs_above_liver

        refined, removed_ml = drop_organs_above_liver(refined, spacing, inplace=inplace)
        changed = removed_ml > 0
        refined, removed_lesions = drop_lesions_outside_liver(
            refined, spacing, connectivity=connectivity, inplace=inplace or changed
        )
        changed = changed or removed_lesions > 0
    if sure is not None:
        refined, unsure = drop_unsure_lesions(refined, sure, mapping, connectivity=connectivity,
                                              inplace=inplace or changed)
        changed = changed or unsure > 0
    if not changed:
        return None
    return kernels.postprocess(refined, min_lesion_voxels=0, connectivity=connectivity)


def sure_tumor(logits: Any, min_log_odds: float) -> Any:
    """Where the tumor probability reaches the floor: bool (N, h, w) from logits (N, C, h, w).

    The tumor log-odds ``l_tumor - log(sum of exp(l_c) over the other classes)`` is compared with ``min_log_odds``
    (see :func:`log_odds_floor`); the same as ``softmax(logits)[:, tumor] >= p``, without overflow. numpy or CuPy
    in, the same kind out (float16 logits are computed in float32).
    """
    from . import _device

    if _device.is_cuda_array(logits):  # CuPy, or a torch/DLPack CUDA tensor from a backend
        logits, xp = _device.as_cupy(logits), _device.cupy()
    else:
        logits, xp = np.asarray(logits), np
    if logits.ndim != 4 or logits.shape[1] <= TUMOR_CLASS:
        raise ValueError(f"logits must be (N, C, h, w) with C > {TUMOR_CLASS}, got shape {tuple(logits.shape)}")
    values = logits.astype(xp.float32, copy=False)
    tumor = values[:, TUMOR_CLASS]
    others = [values[:, c] for c in range(values.shape[1]) if c != TUMOR_CLASS]
    top = others[0]
    for plane in others[1:]:
        top = xp.maximum(top, plane)
    # log-sum-exp of the others lies in [top, top + log(C - 1)]: the margin over the best other class decides
    # most pixels; the exponentials are taken only where it does not.
    margin = tumor - top
    floor = xp.float32(min_log_odds)
    sure = margin >= floor + xp.float32(math.log(len(others)))
    unsure = (margin >= floor) & ~sure
    if bool(unsure.any()):
        best = top[unsure]
        total = sum(xp.exp(plane[unsure] - best) for plane in others)
        sure[unsure] = (tumor[unsure] - (best + xp.log(total))) >= floor
    return sure


def nearest_source_index(n_out: int, n_in: int, step: float | None = None, origin: float = 0.0) -> np.ndarray:
    """For each of ``n_out`` label rows (or columns), the nearest of the ``n_in`` network rows the decode samples.

    ``step`` None: the whole-plane mapping (``(Y + 0.5) * n_in / n_out - 0.5``); else the general one
    (``(Y + 0.5 - origin) / step - 0.5``); rounded and clamped to the network plane.
    """
    y = np.arange(n_out, dtype=np.float64) + 0.5
    src = y * (n_in / n_out) - 0.5 if step is None else (y - float(origin)) / float(step) - 0.5
    return np.clip(np.rint(src), 0, n_in - 1).astype(np.intp)


def drop_unsure_lesions(
    labels: np.ndarray, sure: np.ndarray, mapping: Mapping[str, Any], *, connectivity: int = 26, inplace: bool = False
) -> tuple[np.ndarray, int]:
    """Turn into liver every tumor component none of whose voxels maps to a sure network pixel.

    Args:
        labels: uint8 (D, H, W), 0 background, 1 liver, 2 tumor.
        sure: bool (D, h, w) from :func:`sure_tumor`, slice for slice with ``labels``, at the network plane.
        mapping: ``VolumePlan.kernel_mapping()``: ``{}`` (whole-plane resize) or ``{"step": (sy, sx), "origin":
            (oy, ox)}``, the mapping the labels were decoded with.
        connectivity: 6, 18 or 26, for the tumor components.
        inplace: change ``labels`` itself instead of a copy.

    Returns:
        (labels, removed): the input itself when every lesion is kept (or ``inplace``), else a new array; the
        number of lesions turned into liver.
    """
    from . import kernels
    from .anatomy import tumor_box

    if labels.ndim != 3 or sure.ndim != 3 or sure.shape[0] != labels.shape[0]:
        raise ValueError(f"labels (D, H, W) and sure (D, h, w) must share D, got {labels.shape} and {sure.shape}")
    box = tumor_box(labels)
    if box is None:
        return labels, 0
    comps, n = kernels.connected_components(np.ascontiguousarray(labels[box] == 2), connectivity=connectivity)
    comps = np.asarray(comps)
    step = mapping.get("step") or (None, None)
    origin = mapping.get("origin") or (0.0, 0.0)
    rows = nearest_source_index(labels.shape[1], sure.shape[1], step[0], origin[0])
    cols = nearest_source_index(labels.shape[2], sure.shape[2], step[1], origin[1])
    z, y, x = np.nonzero(comps)
    hit = sure[z + box[0].start, rows[y + box[1].start], cols[x + box[2].start]]
    sure_ids = np.unique(comps[z[hit], y[hit], x[hit]])
    unsure = np.setdiff1d(np.arange(1, n + 1), sure_ids)
    if unsure.size == 0:
        return labels, 0
    from scipy import ndimage

    out = labels if inplace else labels.copy()
    objects = ndimage.find_objects(comps)
    for i in unsure:  # inside each lesion's own box: the tumor box can span most of the volume
        lesion = objects[i - 1]
        out[box][lesion][comps[lesion] == i] = 1
    logger.info("%d lesion(s) without a pixel the network was sure of became liver", int(unsure.size))
    return out, int(unsure.size)

