"""The compiled ops, one Python name each; numpy input runs on the CPU, CUDA arrays on the GPU.

Axis order is (D, H, W) for volumes (slices first) and (N, C, h, w) for network tensors.

- :func:`preprocess` — HU window, scale to [0, 1], bilinear resample, 2.5D slice stacking.
- :func:`plane_mapping` / :class:`PlaneMapping` — the network plane for a volume's spacing (mm per pixel).
- :func:`logits_to_labels` — bilinear upsample of logits fused with argmax.
- :func:`connected_components` — 6/18/26-connected labelling.
- :func:`postprocess` / :func:`lesion_stats` — largest liver component, tumor clean-up, per-lesion numbers.
"""

from ._component_ops import connected_components, lesion_stats, postprocess
from ._image_ops import PlaneMapping, logits_to_labels, plane_mapping, preprocess

__all__ = [
    "PlaneMapping",
    "connected_components",
    "lesion_stats",
    "logits_to_labels",
    "plane_mapping",
    "postprocess",
    "preprocess",
]
