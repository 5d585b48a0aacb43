"""Array plumbing shared by the ops: where an array lives, its layout, the caller's CUDA stream.

numpy arrays (and anything with the buffer protocol) run on the CPU. Arrays that expose
``__cuda_array_interface__`` (CuPy, PyTorch CUDA tensors, Numba) run on the GPU; results come back
as CuPy arrays on the caller's current CuPy stream. The GPU ops run on the array's own device and hand
array objects (never raw pointers) to the compiled bindings, which check dtype, shape, contiguity, device and
the producer's stream again (csrc/bind_cuda_array.h).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


def is_cuda_array(x: Any) -> bool:
    """True when ``x`` lives on a CUDA device (exposes ``__cuda_array_interface__``)."""
    return hasattr(x, "__cuda_array_interface__")


def core():
    """The compiled module, with a clear error when the package was installed without it."""
    try:
        from . import _core
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError(
            "resunet_trt._core (the compiled kernels) is not importable; reinstall with `pip install .` "
            f"from the source tree so the C++ core is built ({exc})"
        ) from exc
    return _core


def require_cuda_build(op: str) -> Any:
    """Return ``_core`` if it was built with CUDA, else raise a RuntimeError naming ``op``."""
    mod = core()
    if not mod.built_with_cuda:
        raise RuntimeError(
            f"{op}: got a CUDA array but resunet_trt was built without CUDA "
            "(rebuild with nvcc on PATH, or RESUNET_WITH_CUDA=ON)"
        )
    return mod


def cupy():
    """Import CuPy, or explain how to get it."""
    try:
        import cupy as cp
    except ImportError as exc:
        raise ImportError(
            "CUDA arrays need CuPy for the results: pip install cupy-cuda13x (or the build for your CUDA)"
        ) from exc
    return cp


def as_cupy(x: Any):
    """View any CUDA array as a CuPy array without copying."""
    cp = cupy()
    if isinstance(x, cp.ndarray):
        return x
    return cp.asarray(x)


def current_stream_ptr() -> int:
    """Raw handle of CuPy's current stream (0 is the legacy default stream)."""
    cp = cupy()
    return int(cp.cuda.get_current_stream().ptr)


@dataclass(frozen=True)
class CudaLayout:
    """What ``__cuda_array_interface__`` says about a CUDA array.

    Attributes:
        shape: the extents.
        dtype: the element type.
        contiguous: C-contiguous (extents of 1 may have any stride).
        ptr: the device pointer (0 for some empty arrays).
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    contiguous: bool
    ptr: int


def cuda_layout(x: Any, name: str) -> CudaLayout:
    """Shape, dtype, contiguity and pointer of a CUDA array, read from its interface (no CuPy needed).

    Raises:
        TypeError: when ``x`` has no usable ``__cuda_array_interface__`` or an unknown typestr.
    """
    cai = getattr(x, "__cuda_array_interface__", None)
    if not isinstance(cai, dict) or not {"shape", "typestr", "data"} <= cai.keys():
        raise TypeError(
            f"{name} must be a CUDA array with a __cuda_array_interface__ dict (shape, typestr, data), "
            f"got {type(x).__name__}"
        )
    try:
        shape = tuple(int(s) for s in cai["shape"])
        dtype = np.dtype(cai["typestr"])
        ptr = int(cai["data"][0])
    except (TypeError, ValueError, IndexError) as exc:
        raise TypeError(f"{name}: malformed __cuda_array_interface__ ({exc})") from exc
    strides = cai.get("strides")
    contiguous = True
    if strides is not None:
        expected = dtype.itemsize
        for extent, stride in zip(reversed(shape), reversed(tuple(strides))):
            if extent > 1 and int(stride) != expected:
                contiguous = False
            expected *= extent
    return CudaLayout(shape=shape, dtype=dtype, contiguous=contiguous, ptr=ptr)


def cuda_device_of(x: Any) -> int:
    """The CUDA device that holds ``x`` (the current device for an empty array without a pointer)."""
    cp = cupy()
    if isinstance(x, cp.ndarray):
        return int(x.device.id)
    ptr = cuda_layout(x, "array").ptr
    if ptr == 0:
        return int(cp.cuda.runtime.getDevice())
    return int(cp.cuda.runtime.pointerGetAttributes(ptr).device)


def cuda_operand(x: Any, dtype: np.dtype, name: str) -> Any:
    """``x`` itself when it is C-contiguous ``dtype`` already, else a C-contiguous CuPy copy of that dtype.

    Passing ``x`` itself lets the binding order the op after the stream ``x`` names (interface v3) on the device,
    without the host synchronisation CuPy does when it imports a foreign array. Call inside the array's device.
    """
    layout = cuda_layout(x, name)
    if layout.contiguous and layout.dtype == dtype:
        return x
    return cupy().ascontiguousarray(as_cupy(x), dtype=dtype)


def as_numpy(x: Any, name: str) -> np.ndarray:
    """Turn CPU array-likes (numpy, CPU torch tensors, lists) into a numpy array.

    Raises:
        TypeError: when ``x`` cannot be viewed as an array.
    """
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach") and hasattr(x, "numpy"):  # CPU torch tensor
        return x.detach().numpy()
    try:
        return np.asarray(x)
    except Exception as exc:
        raise TypeError(f"{name} must be an array, got {type(x).__name__}") from exc
