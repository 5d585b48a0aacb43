"""Type stub of the compiled module (csrc/). Use resunet_trt.kernels: it validates and dispatches."""

from typing import Any

import numpy as np

__version__: str
built_with_cuda: bool
built_with_openmp: bool
cuda_version: str | None

def openmp_max_threads() -> int: ...
def cuda_device_count() -> int: ...

# CPU ops: numpy in, numpy out; the GIL is released while they run.
def preprocess_cpu(
    volume: np.ndarray, lo: float, hi: float, out_height: int, out_width: int, context: int, dtype: str,
    start: int, stop: int, step_y: float = 0.0, step_x: float = 0.0, origin_y: float = 0.0,
    origin_x: float = 0.0, slice_step: float = 1.0,
) -> np.ndarray: ...
def logits_to_labels_cpu(
    logits: np.ndarray, out_height: int, out_width: int, step_y: float = 0.0, step_x: float = 0.0,
    origin_y: float = 0.0, origin_x: float = 0.0,
) -> np.ndarray: ...
def connected_components_cpu(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]: ...
def postprocess_cpu(labels: np.ndarray, min_lesion_voxels: int, connectivity: int) -> np.ndarray: ...
def lesion_stats_cpu(labels: np.ndarray, connectivity: int) -> dict[str, Any]: ...

# CUDA ops (CUDA builds only): CUDA array objects (__cuda_array_interface__: CuPy, PyTorch, Numba), checked for
# dtype, shape, C-contiguity and device; `stream` is the cudaStream_t (as an int) the op is enqueued on, after the
# stream each array names (interface v3).
def preprocess_cuda(
    volume: Any, out: Any, lo: float, hi: float, context: int, start: int, stop: int, stream: int,
    step_y: float = 0.0, step_x: float = 0.0, origin_y: float = 0.0, origin_x: float = 0.0,
    slice_step: float = 1.0,
) -> None: ...
def logits_to_labels_cuda(
    logits: Any, labels: Any, stream: int, step_y: float = 0.0, step_x: float = 0.0, origin_y: float = 0.0,
    origin_x: float = 0.0,
) -> None: ...
def connected_components_cuda(mask: Any, labels: Any, workspace: Any, connectivity: int, stream: int) -> int: ...
def postprocess_cuda(
    labels: Any, out: Any, workspace: Any, min_lesion_voxels: int, connectivity: int, stream: int,
) -> None: ...
def tumor_components_cuda(labels: Any, components: Any, workspace: Any, connectivity: int, stream: int) -> int: ...
def component_stats_cuda(
    components: Any, count: int, voxels: Any, bbox: Any, centroid: Any, stream: int,
) -> None: ...
