"""The GPU path of the pipeline: the int16 volume goes up once, the labels come down once.

The volume goes up in slabs through two pinned host buffers on a copy stream, so that the upload of the next slab
overlaps the compute of this one (events order the two streams); preprocessing, inference, decoding and
postprocessing run on our compute stream. GPU memory is the int16 volume, the labels and one slab of network
input and logits, whatever the number of slices. Stage times come from CUDA events.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from ._progress import progress as _progress
from .slab_plan import slab_upload_needs, slabs

if TYPE_CHECKING:  # pragma: no cover
    from .io import CTVolume
    from .report import Lesion
    from .segmenter import Segmenter

__all__ = ["run_gpu"]


def run_gpu(
    seg: Segmenter, volume: CTVolume, timings: dict[str, float]
) -> tuple[np.ndarray, list[Lesion], tuple[int, int]]:
    """The GPU twin of :func:`resunet_trt.cpu_path.run_cpu` (same arguments and return value), on ``seg.device``.

    ``timings`` gets the device stages from CUDA events, ``upload`` with the host staging, and ``device_wall``.
    """
    import cupy as cp

    from . import kernels
    from .confidence import log_odds_floor, sure_tumor
    from .report import build_lesions

    meta = seg.metadata
    hu = np.ascontiguousarray(volume.hu)
    depth, height, width = hu.shape
    vplan = seg._plan(volume)
    bs = seg.batch_size
    plan = slabs(depth, bs)
    # Context slices reach slice_step input slices apart (interpolated): the upload halo grows with it.
    needs = slab_upload_needs(depth, bs, math.ceil((meta.context // 2) * vplan.slice_step))
    slice_bytes = height * width * hu.itemsize
    device_index = int(seg.device.split(":")[1])

    with cp.cuda.Device(device_index):
        compute = cp.cuda.Stream(non_blocking=True)
        copy = cp.cuda.Stream(non_blocking=True)
        with compute:  # CuPy's pool keeps blocks per stream: allocate where they will be used and freed
            d_hu = cp.empty((depth, height, width), dtype=cp.int16)
            d_labels = cp.empty((depth, height, width), dtype=cp.uint8)
            floor = log_odds_floor(seg.min_lesion_confidence)  # None: keep every lesion
            # one bool per network pixel: where the network was sure of tumor (the lesion confidence floor)
            d_sure = None if floor is None else cp.zeros((depth, *vplan.out_size), dtype=cp.bool_)
        # Two pinned staging buffers: the host fills one while the copy engine drains the other.
        pinned = [cp.cuda.alloc_pinned_memory(bs * slice_bytes) for _ in range(2)]
        staging = [np.frombuffer(p, dtype=np.int16, count=bs * height * width) for p in pinned]
        copied: list[Any] = []  # event per upload chunk, recorded on the copy stream
        upload_events: list[tuple[Any, Any]] = []
        host_staging_s = 0.0

        def enqueue_upload(chunk: int) -> None:
            nonlocal host_staging_s
            start, stop = plan[chunk]
            n = stop - start
            buf = chunk % 2
            if chunk >= 2:
                copied[chunk - 2].synchronize()  # its staging buffer is free once that copy has run
            t0 = time.perf_counter()
            staging[buf][: n * height * width] = hu[start:stop].reshape(-1)
            host_staging_s += time.perf_counter() - t0
            begin, done = cp.cuda.Event(), cp.cuda.Event()
            begin.record(copy)
            d_hu[start:stop].data.copy_from_host_async(pinned[buf].ptr, n * slice_bytes, stream=copy)
            done.record(copy)
            copied.append(done)
            upload_events.append((begin, done))

        stage_events: list[tuple[Any, Any, Any, Any]] = []
        t_wall = time.perf_counter()
        try:
            bar = seg.progress and not seg._in_files
            for k, (start, stop) in enumerate(_progress(plan, enabled=bar, desc="slabs", leave=False)):
                # Queue uploads up to one chunk past what this slab reads, so the next copy overlaps compute.
                while len(copied) <= min(len(plan) - 1, needs[k] + 1):
                    enqueue_upload(len(copied))
                compute.wait_event(copied[needs[k]])
                with compute:
                    e0, e1, e2, e3 = (cp.cuda.Event() for _ in range(4))
                    e0.record(compute)
                    batch = seg._net_input(d_hu, start, stop, vplan)
                    e1.record(compute)
                    logits = seg._infer(batch)
                    e2.record(compute)
                    d_labels[start:stop] = kernels.logits_to_labels(
                        logits, out_size=(height, width), **vplan.kernel_mapping()
                    )
                    if d_sure is not None:
                        d_sure[start:stop] = sure_tumor(logits, floor)
                    e3.record(compute)
                    stage_events.append((e0, e1, e2, e3))
                    del batch, logits
            with compute:
                d_hu = None  # the CT is no longer needed on the device; its memory serves postprocessing
                p0, p1 = cp.cuda.Event(), cp.cuda.Event()
                p0.record(compute)
                d_post = kernels.postprocess(
                    d_labels, min_lesion_voxels=seg._lesion_floor(volume), connectivity=seg.connectivity
                )
                del d_labels
                stats = kernels.lesion_stats(d_post, connectivity=seg.connectivity)
                liver_voxels_d = cp.count_nonzero(d_post)
                p1.record(compute)
                labels = np.empty((depth, height, width), dtype=np.uint8)
                t_down = time.perf_counter()
                d_post.get(stream=compute, out=labels)
                sure = None if d_sure is None else d_sure.get(stream=compute)
                liver_voxels = int(liver_voxels_d.get(stream=compute))
                compute.synchronize()
                timings["download"] = time.perf_counter() - t_down
        finally:
            # Never hand the pinned buffers back to CuPy's pool while a copy from them may be pending.
            copy.synchronize()
        t_device = time.perf_counter() - t_wall
        t0 = time.perf_counter()
        # The rules after the argmax run on the host, on the labels already brought down.
        refined = seg._refine(labels, volume, sure, vplan, inplace=True)
        if refined is not None:
            labels = refined
            stats = kernels.lesion_stats(labels, connectivity=seg.connectivity)
            liver_voxels = int(np.count_nonzero(labels))
        t_refine = time.perf_counter() - t0

        for e0, e1, e2, e3 in stage_events:
            timings["preprocess"] += cp.cuda.get_elapsed_time(e0, e1) / 1e3
            timings["infer"] += cp.cuda.get_elapsed_time(e1, e2) / 1e3
            timings["decode"] += cp.cuda.get_elapsed_time(e2, e3) / 1e3
        timings["upload"] = host_staging_s + sum(
            cp.cuda.get_elapsed_time(b, d) / 1e3 for b, d in upload_events
        )
        timings["postprocess"] = cp.cuda.get_elapsed_time(p0, p1) / 1e3 + t_refine
        timings["device_wall"] = t_device
        del d_post
        t0 = time.perf_counter()
        with compute:  # the lesion crop of the component labels comes down here
            lesions = build_lesions(stats, volume=volume)
        timings["postprocess"] += time.perf_counter() - t0
    tumor_voxels = int(sum(les.voxels for les in lesions))
    return labels, lesions, (liver_voxels, tumor_voxels)
