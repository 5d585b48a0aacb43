"""How a volume is cut into slabs and sampled for the network: small pure functions of shapes and metadata."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["VolumePlan", "slab_upload_needs", "slabs", "volume_plan"]


def slabs(depth: int, batch_size: int) -> list[tuple[int, int]]:
    """Split ``depth`` slices into consecutive ``[start, stop)`` slabs of at most ``batch_size`` slices.

    Args:
        depth: number of slices D (>= 0).
        batch_size: slices per slab (>= 1).

    Returns:
        list of (start, stop) pairs covering ``range(depth)`` in order.
    """
    return [(s, min(depth, s + batch_size)) for s in range(0, depth, batch_size)]


def slab_upload_needs(depth: int, batch_size: int, halo: int) -> list[int]:
    """For each compute slab, the last upload chunk it reads (preprocess needs ``halo`` slices past its end).

    Upload chunks and compute slabs are the same ``batch_size`` slices; preprocessing slab ``[s, e)`` reads
    slices up to ``e - 1 + halo`` (clamped to the volume), so it must wait for the chunk holding that slice.

    Args:
        depth: number of slices D.
        batch_size: slices per slab and per upload chunk.
        halo: neighbouring slices each side a network input stacks (``context // 2``).

    Returns:
        list, one entry per slab, of upload chunk indices.
    """
    return [min(depth - 1, stop - 1 + halo) // batch_size for _, stop in slabs(depth, batch_size)]


@dataclass(frozen=True)
class VolumePlan:
    """How one volume is sampled for the network: the plane (h, w), the in-plane mapping and the context step.

    ``step``/``origin`` are None for the whole-plane resize of models without ``pixel_mm``.
    """

    out_size: tuple[int, int]
    step: tuple[float, float] | None
    origin: tuple[float, float] | None
    slice_step: float

    def kernel_mapping(self) -> dict[str, Any]:
        """The ``step``/``origin`` keywords of ``kernels.preprocess`` and ``kernels.logits_to_labels``."""
        return {} if self.step is None else {"step": self.step, "origin": self.origin}


def volume_plan(metadata: Any, shape: Sequence[int], spacing: Sequence[float]) -> VolumePlan:
    """The network plane and sampling of a (D, H, W) volume with ``spacing`` (dz, dy, dx) mm, as ``metadata`` says.

    Models with ``pixel_mm`` see 1 pixel = ``pixel_mm`` mm (the plane grows past ``plane_size`` for a large field of
    view, in multiples of the network's ``2**depth``); models with ``slice_mm`` see context slices that far apart.
    Older models resize the whole plane to ``plane_size`` and stack neighbouring slices.
    """
    from . import kernels

    dz, dy, dx = (float(s) for s in spacing)
    slice_step = 1.0 if metadata.slice_mm is None else float(metadata.slice_mm) / dz
    if metadata.pixel_mm is None:
        return VolumePlan(tuple(int(v) for v in metadata.plane_size), None, None, slice_step)  # type: ignore[arg-type]
    mapping = kernels.plane_mapping(
        tuple(shape[1:]), (dy, dx), float(metadata.pixel_mm), min_size=min(metadata.plane_size),
        divisor=metadata.plane_divisor,
    )
    return VolumePlan(tuple(mapping.out_size), tuple(mapping.step), tuple(mapping.origin), slice_step)  # type: ignore[arg-type]
