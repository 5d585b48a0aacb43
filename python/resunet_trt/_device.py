"""Array plumbing shared by the ops: where an array lives, raw pointers, the caller's CUDA stream.

numpy arrays (and anything with the buffer protocol) run on the CPU. Arrays that expose
``__cuda_array_interface__`` (CuPy, PyTorch CUDA tensors, Numba) run on the GPU; results come back
as CuPy arrays on the caller's current CuPy stream.
"""

from __future__ import annotations

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


def cuda_ptr(x: Any) -> int:
    """Device pointer of a CUDA array."""
    return int(x.__cuda_array_interface__["data"][0])


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
