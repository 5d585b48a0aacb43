"""Connected components, label clean-up and per-lesion statistics (CPU and CUDA).

Volumes are (D, H, W) (slices first). numpy input runs the C++/OpenMP kernels; arrays exposing
``__cuda_array_interface__`` (CuPy, PyTorch CUDA tensors) run the CUDA kernels on the caller's current CuPy
stream and come back as CuPy arrays. Both devices give the same labels bit for bit.

Components are numbered 1..count in C-order raster order of their first voxel, so the labels equal
``cc3d.connected_components`` (or ``scipy.ndimage.label``) after relabelling those in raster order.
"""

from __future__ import annotations

from typing import Any, TypedDict

import numpy as np

from ._device import (
    as_numpy,
    core,
    cuda_device_of,
    cuda_layout,
    cuda_operand,
    cupy,
    current_stream_ptr,
    is_cuda_array,
    require_cuda_build,
)

__all__ = ["LesionStats", "connected_components", "lesion_stats", "postprocess"]

_CONNECTIVITIES = (6, 18, 26)


class LesionStats(TypedDict):
    """Per tumor component numbers returned by :func:`lesion_stats` (n = ``count``).

    Row ``i`` describes component ``i + 1`` of ``component_labels``. numpy arrays on the CPU, CuPy arrays on
    the GPU (``count`` is a Python int on both).

    Attributes:
        count: number of tumor components n.
        voxels: (n,) int64 voxel count of each component.
        bbox: (n, 6) int64 bounding box ``(d0, h0, w0, d1, h1, w1)``, half-open: the component lies in
            ``labels[d0:d1, h0:h1, w0:w1]``.
        centroid: (n, 3) float64 mean voxel index ``(d, h, w)`` (voxel coordinates, not mm).
        component_labels: (D, H, W) int32, 0 outside tumor, component ids 1..n in raster order.
    """

    count: int
    voxels: Any
    bbox: Any
    centroid: Any
    component_labels: Any


def _check_connectivity(connectivity: Any) -> int:
    if isinstance(connectivity, bool) or not isinstance(connectivity, (int, np.integer)):
        raise TypeError(f"connectivity must be an int (6, 18 or 26), got {type(connectivity).__name__}")
    if int(connectivity) not in _CONNECTIVITIES:
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    return int(connectivity)


def _check_min_lesion_voxels(min_lesion_voxels: Any) -> int:
    if isinstance(min_lesion_voxels, bool) or not isinstance(min_lesion_voxels, (int, np.integer)):
        raise TypeError(f"min_lesion_voxels must be an int, got {type(min_lesion_voxels).__name__}")
    if min_lesion_voxels < 0:
        raise ValueError(f"min_lesion_voxels must be >= 0, got {min_lesion_voxels}")
    return int(min_lesion_voxels)


def _check_layout(shape: tuple[int, ...], dtype: Any, name: str, allow_bool: bool) -> None:
    if len(shape) != 3:
        raise ValueError(f"{name} must be a 3-D (D, H, W) array, got shape {tuple(shape)}")
    allowed = (np.dtype(np.bool_), np.dtype(np.uint8)) if allow_bool else (np.dtype(np.uint8),)
    if np.dtype(dtype) not in allowed:
        expected = "bool or uint8" if allow_bool else "uint8 (0 background, 1 liver, 2 tumor)"
        raise TypeError(f"{name} must be {expected}, got {np.dtype(dtype)}")


def _host_volume(x: Any, name: str, allow_bool: bool) -> np.ndarray:
    """C-contiguous uint8 (D, H, W) numpy view/copy of a CPU array."""
    arr = as_numpy(x, name)
    _check_layout(arr.shape, arr.dtype, name, allow_bool)
    return np.ascontiguousarray(arr).view(np.uint8)


def _device_layout(x: Any, name: str, allow_bool: bool) -> tuple[tuple[int, int, int], np.dtype]:
    """Shape and dtype of a CUDA (D, H, W) array, checked (no CuPy needed)."""
    layout = cuda_layout(x, name)
    _check_layout(layout.shape, layout.dtype, name, allow_bool)
    return (int(layout.shape[0]), int(layout.shape[1]), int(layout.shape[2])), layout.dtype


def connected_components(mask: Any, *, connectivity: int = 26) -> tuple[Any, int]:
    """Label the connected components of a binary volume.

    Args:
        mask: (D, H, W) bool or uint8 (nonzero = foreground), any memory order; numpy or a CUDA array.
        connectivity: 6 (faces), 18 (faces + edges) or 26 (faces + edges + corners).

    Returns:
        ``(labels, count)``: labels int32 (D, H, W) with 0 on background and components numbered 1..count in
        C-order raster order of their first voxel; numpy for numpy input, CuPy for CUDA input. On the GPU the
        work is queued on the current CuPy stream and bringing ``count`` back synchronises that stream once.

    Raises:
        TypeError: mask is not bool/uint8, or connectivity is not an int.
        ValueError: mask is not 3-D, or connectivity is not 6, 18 or 26.
        RuntimeError: a CUDA array was given to a CPU-only build, or a CUDA call failed.
    """
    connectivity = _check_connectivity(connectivity)
    if is_cuda_array(mask):
        mod = require_cuda_build("connected_components")
        shape, dtype = _device_layout(mask, "mask", allow_bool=True)
        cp = cupy()
        with cp.cuda.Device(cuda_device_of(mask)):
            vol = cuda_operand(mask, dtype, "mask")  # bool masks go in as they are: nonzero is foreground
            labels = cp.empty(shape, dtype=cp.int32)
            work = cp.empty(labels.size, dtype=cp.int32)  # from CuPy's pool, reused across calls
            count = mod.connected_components_cuda(
                mask=vol, labels=labels, workspace=work, connectivity=connectivity, stream=current_stream_ptr()
            )
        return labels, int(count)
    vol = _host_volume(mask, "mask", allow_bool=True)
    labels, count = core().connected_components_cpu(vol, connectivity)
    return labels, int(count)


def postprocess(labels: Any, *, min_lesion_voxels: int = 10, connectivity: int = 26) -> Any:
    """Clean a 0/1/2 label volume: one liver, tumor only inside it, no tiny lesions.

    1. Foreground = liver or tumor (label >= 1). Only its largest connected component is kept; on a tie in
       size the component whose first voxel comes first in C-order raster order wins. Every voxel outside the
       kept component becomes 0 (tumor there is removed together with the liver around it).
    2. Tumor components (label == 2, same ``connectivity``) of the kept component with fewer than
       ``min_lesion_voxels`` voxels become liver (1). ``min_lesion_voxels=0`` keeps every lesion.

    An all-zero volume comes back all zeros.

    Args:
        labels: (D, H, W) uint8 with 0 background, 1 liver, 2 tumor; numpy or a CUDA array.
        min_lesion_voxels: size floor for a tumor component, >= 0.
        connectivity: 6, 18 or 26, used for both the liver and the tumor components.

    Returns:
        uint8 (D, H, W), numpy or CuPy like the input. On the GPU everything runs on the current CuPy stream
        and the call synchronises it once at the end, to report invalid label values.

    Raises:
        TypeError: labels is not uint8, or an argument has the wrong type.
        ValueError: labels is not 3-D or holds a value above 2, connectivity is not 6/18/26,
            min_lesion_voxels is negative.
        RuntimeError: a CUDA array was given to a CPU-only build, or a CUDA call failed.
    """
    connectivity = _check_connectivity(connectivity)
    min_lesion_voxels = _check_min_lesion_voxels(min_lesion_voxels)
    if is_cuda_array(labels):
        mod = require_cuda_build("postprocess")
        shape, dtype = _device_layout(labels, "labels", allow_bool=False)
        cp = cupy()
        with cp.cuda.Device(cuda_device_of(labels)):
            vol = cuda_operand(labels, dtype, "labels")
            out = cp.empty(shape, dtype=cp.uint8)
            work = cp.empty(2 * out.size, dtype=cp.int32)
            mod.postprocess_cuda(
                labels=vol,
                out=out,
                workspace=work,
                min_lesion_voxels=min_lesion_voxels,
                connectivity=connectivity,
                stream=current_stream_ptr(),
            )
        return out
    vol = _host_volume(labels, "labels", allow_bool=False)
    return core().postprocess_cpu(vol, min_lesion_voxels, connectivity)


def lesion_stats(labels: Any, *, connectivity: int = 26) -> LesionStats:
    """Tumor components (label == 2) and their voxel count, bounding box and centroid.

    Args:
        labels: (D, H, W) uint8 with 0 background, 1 liver, 2 tumor; numpy or a CUDA array. Usually the
            output of :func:`postprocess`.
        connectivity: 6, 18 or 26.

    Returns:
        :class:`LesionStats` dict: ``count``, ``voxels`` (n,) int64, ``bbox`` (n, 6) int64 half-open
        ``(d0, h0, w0, d1, h1, w1)``, ``centroid`` (n, 3) float64 voxel coordinates ``(d, h, w)``,
        ``component_labels`` int32 (D, H, W) with ids 1..n in raster order (row i of the arrays is id i + 1).
        Volumes in mL or mm follow from ``voxels`` and the spacing (dz, dy, dx). On the GPU the arrays are CuPy
        and the call synchronises the current stream once (the number of components sizes the arrays).

    Raises:
        TypeError: labels is not uint8, or connectivity is not an int.
        ValueError: labels is not 3-D or holds a value above 2, or connectivity is not 6, 18 or 26.
        RuntimeError: a CUDA array was given to a CPU-only build, or a CUDA call failed.
    """
    connectivity = _check_connectivity(connectivity)
    if is_cuda_array(labels):
        mod = require_cuda_build("lesion_stats")
        shape, dtype = _device_layout(labels, "labels", allow_bool=False)
        cp = cupy()
        with cp.cuda.Device(cuda_device_of(labels)):
            vol = cuda_operand(labels, dtype, "labels")
            components = cp.empty(shape, dtype=cp.int32)
            stream = current_stream_ptr()
            work = cp.empty(components.size, dtype=cp.int32)
            count = int(
                mod.tumor_components_cuda(
                    labels=vol, components=components, workspace=work, connectivity=connectivity, stream=stream
                )
            )
            del work
            voxels = cp.zeros((count,), dtype=cp.int64)
            bbox = cp.zeros((count, 6), dtype=cp.int64)
            centroid = cp.zeros((count, 3), dtype=cp.float64)
            if count > 0:
                mod.component_stats_cuda(
                    components=components,
                    count=count,
                    voxels=voxels,
                    bbox=bbox,
                    centroid=centroid,
                    stream=stream,
                )
        return LesionStats(
            count=count, voxels=voxels, bbox=bbox, centroid=centroid, component_labels=components
        )
    vol = _host_volume(labels, "labels", allow_bool=False)
    res = core().lesion_stats_cpu(vol, connectivity)
    return LesionStats(
        count=int(res["count"]),
        voxels=res["voxels"],
        bbox=res["bbox"],
        centroid=res["centroid"],
        component_labels=res["component_labels"],
    )
