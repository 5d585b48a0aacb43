"""The image ops: CT preprocessing for the network and logit decoding back to labels.

Both run on the CPU (C++/OpenMP) for numpy input and on the GPU (CUDA) for arrays exposing
``__cuda_array_interface__``; the GPU path returns CuPy arrays and runs on the caller's current CuPy
stream without synchronising. Resizing is bilinear with half-pixel centres and no antialiasing, the
semantics of ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _device

_VOLUME_DTYPES = (np.dtype(np.int16), np.dtype(np.float32))
_LOGITS_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))
_PLANE_DTYPES = {"float16": np.dtype(np.float16), "float32": np.dtype(np.float32)}


def _int_arg(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    return int(value)


def _out_size(out_size: Any) -> tuple[int, int]:
    if isinstance(out_size, np.ndarray):
        out_size = out_size.tolist()
    if isinstance(out_size, (str, bytes)) or not isinstance(out_size, Sequence) or len(out_size) != 2:
        raise TypeError(f"out_size must be a pair of ints (h, w), got {out_size!r}")
    h, w = (_int_arg(v, "out_size") for v in out_size)
    if h <= 0 or w <= 0:
        raise ValueError(f"out_size must be positive, got ({h}, {w})")
    if h > np.iinfo(np.int32).max or w > np.iinfo(np.int32).max:
        raise ValueError(f"out_size must fit in int32, got ({h}, {w})")
    return h, w


def _window(window: Any) -> tuple[float, float]:
    if isinstance(window, np.ndarray):
        window = window.tolist()
    if isinstance(window, (str, bytes)) or not isinstance(window, Sequence) or len(window) != 2:
        raise TypeError(f"window must be a pair of numbers (lo, hi) in HU, got {window!r}")
    for v in window:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"window must be a pair of numbers (lo, hi) in HU, got {window!r}")
    lo, hi = float(window[0]), float(window[1])
    float32_max = float(np.finfo(np.float32).max)
    if not (math.isfinite(lo) and math.isfinite(hi) and abs(lo) <= float32_max and abs(hi) <= float32_max):
        raise ValueError(f"window must be finite (as float32), got ({lo}, {hi})")
    # The kernels work in float32: lo < hi must survive the rounding, or (v - lo) / (hi - lo) divides by 0.
    if not np.float32(lo) < np.float32(hi):
        raise ValueError(f"window must satisfy lo < hi, got ({lo}, {hi})")
    return lo, hi


def _plane_dtype(dtype: Any) -> str:
    try:
        name = np.dtype(dtype).name
    except TypeError as exc:
        raise ValueError(f"dtype must be 'float16' or 'float32', got {dtype!r}") from exc
    if name not in _PLANE_DTYPES:
        raise ValueError(f"dtype must be 'float16' or 'float32', got {dtype!r}")
    return name


def _check_dtype(dtype: np.dtype, allowed: tuple[np.dtype, ...], name: str) -> np.dtype:
    """The native-byte-order version of ``dtype`` if it is one of ``allowed``, else TypeError."""
    native = dtype.newbyteorder("=")
    if native not in allowed:
        expected = " or ".join(d.name for d in allowed)
        raise TypeError(f"{name} must be {expected}, got {dtype}")
    return native


def _check_shape(shape: tuple[int, ...], ndim: int, axes: str, name: str) -> None:
    if len(shape) != ndim:
        raise ValueError(f"{name} must be {ndim}-D {axes}, got shape {tuple(shape)}")
    if any(s == 0 for s in shape):
        raise ValueError(f"{name} must not be empty, got shape {tuple(shape)}")
    if any(s > np.iinfo(np.int32).max for s in shape):
        raise ValueError(f"{name} dimensions must fit in int32, got shape {tuple(shape)}")


def preprocess(
    volume: Any,
    *,
    window: Sequence[float] = (-200.0, 250.0),
    out_size: Sequence[int] = (256, 256),
    context: int = 3,
    dtype: Any = "float16",
    start: int = 0,
    stop: int | None = None,
) -> Any:
    """Turn a CT volume into 2.5D network input: HU window, scale to [0, 1], resize, stack slices.

    Per voxel ``v``: clip to ``window = (lo, hi)`` and scale as ``(v - lo) / (hi - lo)``; then each
    (H, W) plane is resized to ``out_size`` bilinearly (half-pixel centres, no antialiasing: the
    semantics of ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``). Channel
    ``j`` of output slice ``i`` is input slice ``clamp(start + i + j - context // 2, 0, D - 1)``, so the
    edge slices repeat. Each input slice is read once.

    Args:
        volume: (D, H, W) HU, int16 or float32; numpy (CPU) or a CUDA array (GPU). Any memory order
            (non-C-contiguous input is copied first). Float volumes must be finite.
        window: (lo, hi) HU window, lo < hi.
        out_size: (h, w) of the output planes.
        context: number of neighbouring slices stacked as channels, K; odd, >= 1.
        dtype: "float16" or "float32" output.
        start: first slice to produce, 0 <= start < stop.
        stop: one past the last slice to produce, <= D; None means D.

    Returns:
        (stop - start, K, h, w) array of ``dtype`` in [0, 1]: numpy for numpy input, CuPy for CUDA input.

    Raises:
        TypeError: ``volume`` is not int16/float32, or an argument has the wrong type.
        ValueError: a bad shape or argument value (named in the message), or NaN/Inf in a float32
            ``volume`` (on the CPU every slice read is checked during the pass; on the GPU a finiteness
            reduction runs first, which synchronises the current stream; int16 volumes never sync).
        RuntimeError: a CUDA array was given to a build without CUDA, or a CUDA call failed.
    """
    lo, hi = _window(window)
    h, w = _out_size(out_size)
    context = _int_arg(context, "context")
    if context < 1 or context % 2 == 0:
        raise ValueError(f"context must be an odd number >= 1, got {context}")
    plane_dtype = _plane_dtype(dtype)
    start = _int_arg(start, "start")

    on_gpu = _device.is_cuda_array(volume)
    if on_gpu:
        core = _device.require_cuda_build("preprocess")
        cp = _device.cupy()
        vol = _device.as_cupy(volume)
    else:
        core = _device.core()
        vol = _device.as_numpy(volume, "volume")
    _check_shape(vol.shape, 3, "(D, H, W)", "volume")
    vol_dtype = _check_dtype(vol.dtype, _VOLUME_DTYPES, "volume")
    depth = int(vol.shape[0])
    stop = depth if stop is None else _int_arg(stop, "stop")
    if not 0 <= start < depth:
        raise ValueError(f"start must satisfy 0 <= start < D = {depth}, got {start}")
    if not start < stop <= depth:
        raise ValueError(f"stop must satisfy start < stop <= D (start={start}, D={depth}), got {stop}")

    if not on_gpu:
        vol = np.ascontiguousarray(vol, dtype=vol_dtype)
        return core.preprocess_cpu(vol, lo, hi, h, w, context, plane_dtype, start, stop)

    with cp.cuda.Device(vol.device.id):
        vol = cp.ascontiguousarray(vol, dtype=vol_dtype)
        if vol_dtype == np.float32:
            half_k = context // 2
            read = vol[max(start - half_k, 0) : min(stop + half_k, depth)]
            if not bool(cp.isfinite(read).all()):
                raise ValueError("volume must be finite HU, got NaN or Inf")
        out = cp.empty((stop - start, context, h, w), dtype=_PLANE_DTYPES[plane_dtype])
        core.preprocess_cuda(
            volume_ptr=_device.cuda_ptr(vol),
            volume_dtype=vol_dtype.name,
            depth=depth,
            height=int(vol.shape[1]),
            width=int(vol.shape[2]),
            out_ptr=_device.cuda_ptr(out),
            dtype=plane_dtype,
            lo=lo,
            hi=hi,
            out_height=h,
            out_width=w,
            context=context,
            start=start,
            stop=stop,
            stream=_device.current_stream_ptr(),
        )
    return out


def logits_to_labels(logits: Any, *, out_size: Sequence[int]) -> Any:
    """Resize logits to ``out_size`` and take the argmax over classes, fused (no full-size float tensor).

    The resize is bilinear with half-pixel centres and no antialiasing
    (``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``), done per output pixel
    in float32. The argmax follows numpy/torch: ties go to the lowest class, and NaN counts as larger
    than any number (the first NaN class wins); logits are not checked for NaN, so that the GPU path
    never synchronises.

    Args:
        logits: (N, C, h, w) float16 or float32, 1 <= C <= 256; numpy (CPU) or a CUDA array (GPU).
            Any memory order (non-C-contiguous input is copied first).
        out_size: (H, W) of the label maps.

    Returns:
        uint8 (N, H, W) class indices: numpy for numpy input, CuPy for CUDA input.

    Raises:
        TypeError: ``logits`` is not float16/float32, or ``out_size`` is not a pair of ints.
        ValueError: a bad shape or size (named in the message).
        RuntimeError: a CUDA array was given to a build without CUDA, or a CUDA call failed.
    """
    out_h, out_w = _out_size(out_size)
    on_gpu = _device.is_cuda_array(logits)
    if on_gpu:
        core = _device.require_cuda_build("logits_to_labels")
        cp = _device.cupy()
        arr = _device.as_cupy(logits)
    else:
        core = _device.core()
        arr = _device.as_numpy(logits, "logits")
    _check_shape(arr.shape, 4, "(N, C, h, w)", "logits")
    arr_dtype = _check_dtype(arr.dtype, _LOGITS_DTYPES, "logits")
    n, c, h, w = (int(s) for s in arr.shape)
    if c > 256:
        raise ValueError(f"logits must have at most 256 classes (labels are uint8), got C = {c}")

    if not on_gpu:
        arr = np.ascontiguousarray(arr, dtype=arr_dtype)
        return core.logits_to_labels_cpu(arr, out_h, out_w)

    with cp.cuda.Device(arr.device.id):
        arr = cp.ascontiguousarray(arr, dtype=arr_dtype)
        labels = cp.empty((n, out_h, out_w), dtype=cp.uint8)
        core.logits_to_labels_cuda(
            logits_ptr=_device.cuda_ptr(arr),
            logits_dtype=arr_dtype.name,
            batch=n,
            classes=c,
            height=h,
            width=w,
            labels_ptr=_device.cuda_ptr(labels),
            out_height=out_h,
            out_width=out_w,
            stream=_device.current_stream_ptr(),
        )
    return labels
