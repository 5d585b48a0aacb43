"""The CPU path of the pipeline: slabs that overlap, so pre- and postprocessing hide behind inference.

The network runs one slab in a worker thread while the next slab is preprocessed and the previous one decoded
(every backend and our kernels release the GIL); beside the CT and the label volume only two slabs of network
input and one of logits exist.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from ._progress import progress as _progress
from .slab_plan import slabs

if TYPE_CHECKING:  # pragma: no cover
    from .io import CTVolume
    from .report import Lesion
    from .segmenter import Segmenter

__all__ = ["run_cpu"]


def run_cpu(
    seg: Segmenter, volume: CTVolume, timings: dict[str, float]
) -> tuple[np.ndarray, list[Lesion], tuple[int, int]]:
    """Segment ``volume`` with ``seg``'s model on the CPU, adding each stage's seconds to ``timings``.

    Returns:
        (labels uint8 (D, H, W), lesions, (liver voxels, tumor voxels)).
    """
    from . import kernels
    from .anatomy import tumor_box
    from .confidence import log_odds_floor, sure_tumor
    from .report import build_lesions

    hu = volume.hu
    depth, height, width = hu.shape
    plan = seg._plan(volume)
    labels = np.empty((depth, height, width), dtype=np.uint8)
    bar = seg.progress and not seg._in_files
    floor = log_odds_floor(seg.min_lesion_confidence)  # None: keep every lesion
    # Where the network was sure of tumor, at its own plane: one bit per pixel, for the lesion confidence floor.
    sure = None if floor is None else np.zeros((depth, *plan.out_size), dtype=bool)

    def decode(logits: Any, start: int, stop: int) -> None:
        seg._decode_cpu(logits, labels, start, stop, timings, plan)
        if sure is not None:
            t = time.perf_counter()
            sure[start:stop] = sure_tumor(logits, floor)
            timings["decode"] += time.perf_counter() - t

    def infer(batch: np.ndarray) -> tuple[Any, float]:
        t = time.perf_counter()
        return seg._infer(batch), time.perf_counter() - t

    # The stages overlap: the network runs slab i in a worker thread while this thread preprocesses slab
    # i + 1 and decodes slab i - 1 (every backend and our kernels release the GIL). Alive at once: the
    # input of the slab in the network, the input being prepared and the logits being decoded.
    t_loop = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="resunet-infer") as pool:
        pending: tuple[int, int, Future[tuple[Any, float]]] | None = None
        for start, stop in _progress(slabs(depth, seg.batch_size), enabled=bar, desc="slabs", leave=False):
            t0 = time.perf_counter()
            batch = seg._net_input(hu, start, stop, plan)
            timings["preprocess"] += time.perf_counter() - t0
            previous, logits = pending, None
            if previous is not None:
                logits, t_net = previous[2].result()
                timings["infer"] += t_net
            pending = (start, stop, pool.submit(infer, batch))
            del batch
            if previous is not None:
                decode(logits, previous[0], previous[1])
                del logits
        if pending is not None:
            logits, t_net = pending[2].result()
            timings["infer"] += t_net
            decode(logits, pending[0], pending[1])
    timings["slabs_wall"] = time.perf_counter() - t_loop
    t0 = time.perf_counter()
    labels = kernels.postprocess(
        labels, min_lesion_voxels=seg._lesion_floor(volume), connectivity=seg.connectivity
    )
    refined = seg._refine(labels, volume, sure, plan, inplace=True)
    if refined is not None:
        labels = refined
    # Components are measured inside the box of the tumor voxels only: the same components in the same order as
    # in the whole volume, without a (D, H, W) int32 component volume (420 MB for 400 x 512 x 512).
    box = tumor_box(labels)
    lesions = []
    if box is not None:
        stats = kernels.lesion_stats(np.ascontiguousarray(labels[box]), connectivity=seg.connectivity)
        lesions = build_lesions(stats, volume=volume, origin=tuple(s.start for s in box))
    liver_voxels = int(np.count_nonzero(labels))
    tumor_voxels = int(sum(les.voxels for les in lesions))
    timings["postprocess"] = time.perf_counter() - t0
    return labels, lesions, (liver_voxels, tumor_voxels)
