"""The image ops: CT preprocessing for the network and logit decoding back to labels.

Both run on the CPU (C++/OpenMP) for numpy input and on the GPU (CUDA) for arrays exposing
``__cuda_array_interface__``; the GPU path returns CuPy arrays and runs on the caller's current CuPy
stream without synchronising. Resizing is bilinear with half-pixel centres and no antialiasing: by
default the semantics of ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``, or
a spacing-aware mapping (``step``, ``origin``) that :func:`plane_mapping` chooses from the voxel spacing.

The mapping of one in-plane axis: output pixel ``y`` samples input coordinate
``(y + 0.5) * step + origin - 0.5`` (``step``: input pixels per output pixel). ``step = H / h`` with
``origin = 0`` is the torch rule, and runs exactly the default code path.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
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


def _float32_real(value: Any, name: str, what: str) -> float:
    """``value`` as a float that is finite in float32, else TypeError/ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {what}, got {type(value).__name__} {value!r}")
    v = float(value)
    if not (math.isfinite(v) and abs(v) <= float(np.finfo(np.float32).max)):
        raise ValueError(f"{name} must be finite (as float32), got {value!r}")
    return v


def _real_pair(value: Any, name: str) -> tuple[float, float]:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise TypeError(f"{name} must be a pair of numbers (y, x), got {value!r}")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"{name} must be a pair of numbers (y, x), got {value!r}")
    y, x = (_float32_real(v, name, "a pair of numbers (y, x)") for v in value)
    return y, x


def _step_pair(step: Any) -> tuple[float, float]:
    y, x = _real_pair(step, "step")
    if not (np.float32(y) > 0 and np.float32(x) > 0):
        raise ValueError(f"step must be positive (as float32), got ({y}, {x})")
    return y, x


def _slice_step(slice_step: Any) -> float:
    v = _float32_real(slice_step, "slice_step", "a number")
    if not np.float32(v) > 0:
        raise ValueError(f"slice_step must be > 0 (as float32), got {slice_step!r}")
    return v


def _kernel_mapping(
    step: Any, origin: Any, big: tuple[int, int], small: tuple[int, int]
) -> tuple[float, float, float, float]:
    """(step_y, step_x, origin_y, origin_x) for the kernels; step 0 on an axis selects the torch mapping.

    ``big`` is the volume's (H, W), ``small`` the network plane's (h, w); ``step`` is in input pixels per
    network pixel (about H / h). An axis whose mapping equals the torch one in float32 (step == H / h,
    origin 0) gets step 0, so it runs the torch code path and its result is bit-identical to the default.
    """
    if step is None and origin is None:
        return 0.0, 0.0, 0.0, 0.0
    steps = _step_pair(step) if step is not None else (big[0] / small[0], big[1] / small[1])
    origins = _real_pair(origin, "origin") if origin is not None else (0.0, 0.0)
    out = []
    for st, n_big, n_small in zip(steps, big, small):
        default = np.float32(st) == np.float32(n_big) / np.float32(n_small)
        out.append(0.0 if default else st)
    for k in range(2):
        if out[k] == 0.0 and np.float32(origins[k]) != 0:
            out[k] = steps[k]
    return out[0], out[1], origins[0], origins[1]


def _slices_read(start: int, stop: int, context: int, slice_step: float, depth: int) -> tuple[int, int]:
    """First and last input slice the kernels read (float32, as csrc/common/bilinear.h slice_tap)."""
    half_k = context // 2
    step32 = np.float32(slice_step)

    def z(index: int, offset: int) -> np.float32:
        v = np.float32(index) + np.float32(offset) * step32
        return min(max(v, np.float32(0)), np.float32(depth - 1))

    lo, hi = z(start, -half_k), z(stop - 1, context - 1 - half_k)
    return int(lo), int(math.ceil(hi))


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
    step: Sequence[float] | None = None,
    origin: Sequence[float] | None = None,
    slice_step: float = 1.0,
) -> Any:
    """Turn a CT volume into 2.5D network input: HU window, scale to [0, 1], resample, stack slices.

    Per voxel ``v``: clip to ``window = (lo, hi)`` and scale as ``(v - lo) / (hi - lo)``; then each
    (H, W) plane is resampled to ``out_size`` bilinearly (half-pixel centres, no antialiasing). By default
    that is ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` of the whole plane.
    With ``step``/``origin`` (see :func:`plane_mapping`), output pixel ``(y, x)`` samples the input at
    ``in_y = (y + 0.5) * step[0] + origin[0] - 0.5`` (and likewise ``x``): outside
    ``[-0.5, H - 0.5]`` the output is 0.0 (padding, the windowed value of air), inside the coordinate is
    clamped to ``[0, H - 1]`` and the two neighbouring pixels are blended.

    Channel ``j`` of output slice ``i`` samples the volume at
    ``z = clamp(start + i + (j - context // 2) * slice_step, 0, D - 1)``, blending slices ``floor(z)``
    and ``floor(z) + 1`` linearly; with ``slice_step = 1`` that is slice
    ``clamp(start + i + j - context // 2, 0, D - 1)``, so the edge slices repeat. Each input slice is
    read and resampled once.

    Args:
        volume: (D, H, W) HU, int16 or float32; numpy (CPU) or a CUDA array (GPU). Any memory order
            (non-C-contiguous input is copied first). Float volumes must be finite.
        window: (lo, hi) HU window, lo < hi.
        out_size: (h, w) of the output planes.
        context: number of neighbouring slices stacked as channels, K; odd, >= 1.
        dtype: "float16" or "float32" output.
        start: first slice to produce, 0 <= start < stop.
        stop: one past the last slice to produce, <= D; None means D.
        step: (y, x) input pixels per output pixel, finite and > 0; None means (H / h, W / w).
        origin: (y, x) offset of the mapping in input pixels, finite; None means (0, 0). With both
            ``step`` and ``origin`` None (or equal to those values) the result is the torch rule above,
            bit for bit.
        slice_step: input slices between neighbouring context channels, finite and > 0 (the model's
            context spacing in mm divided by the volume's slice spacing ``dz``).

    Returns:
        (stop - start, K, h, w) array of ``dtype`` in [0, 1]: numpy for numpy input, CuPy for CUDA input.

    Raises:
        TypeError: ``volume`` is not int16/float32, or an argument has the wrong type.
        ValueError: a bad shape or argument value (named in the message), or NaN/Inf in a float32
            ``volume`` (the slices from the first to the last one read are checked: on the CPU during
            the pass; on the GPU a finiteness reduction runs first, which synchronises the current
            stream; int16 volumes never sync).
        RuntimeError: a CUDA array was given to a build without CUDA, or a CUDA call failed.
    """
    lo, hi = _window(window)
    h, w = _out_size(out_size)
    context = _int_arg(context, "context")
    if context < 1 or context % 2 == 0:
        raise ValueError(f"context must be an odd number >= 1, got {context}")
    plane_dtype = _plane_dtype(dtype)
    start = _int_arg(start, "start")
    slice_step = _slice_step(slice_step)
    if step is not None:
        _step_pair(step)
    if origin is not None:
        _real_pair(origin, "origin")

    on_gpu = _device.is_cuda_array(volume)
    if on_gpu:
        core = _device.require_cuda_build("preprocess")
        layout = _device.cuda_layout(volume, "volume")
        shape, in_dtype = layout.shape, layout.dtype
    else:
        core = _device.core()
        vol = _device.as_numpy(volume, "volume")
        shape, in_dtype = vol.shape, vol.dtype
    _check_shape(shape, 3, "(D, H, W)", "volume")
    vol_dtype = _check_dtype(in_dtype, _VOLUME_DTYPES, "volume")
    depth = int(shape[0])
    stop = depth if stop is None else _int_arg(stop, "stop")
    if not 0 <= start < depth:
        raise ValueError(f"start must satisfy 0 <= start < D = {depth}, got {start}")
    if not start < stop <= depth:
        raise ValueError(f"stop must satisfy start < stop <= D (start={start}, D={depth}), got {stop}")
    plane = (int(shape[1]), int(shape[2]))
    step_y, step_x, origin_y, origin_x = _kernel_mapping(step, origin, plane, (h, w))
    mapping = {"step_y": step_y, "step_x": step_x, "origin_y": origin_y, "origin_x": origin_x}
    mapping["slice_step"] = slice_step

    if not on_gpu:
        vol = np.ascontiguousarray(vol, dtype=vol_dtype)
        return core.preprocess_cpu(vol, lo, hi, h, w, context, plane_dtype, start, stop, **mapping)

    cp = _device.cupy()
    with cp.cuda.Device(_device.cuda_device_of(volume)):
        vol = _device.cuda_operand(volume, vol_dtype, "volume")
        if vol_dtype == np.float32:
            first, last = _slices_read(start, stop, context, slice_step, depth)
            read = _device.as_cupy(vol)[first : last + 1]
            if not bool(cp.isfinite(read).all()):
                raise ValueError("volume must be finite HU, got NaN or Inf")
        out = cp.empty((stop - start, context, h, w), dtype=_PLANE_DTYPES[plane_dtype])
        core.preprocess_cuda(
            volume=vol,
            out=out,
            lo=lo,
            hi=hi,
            context=context,
            start=start,
            stop=stop,
            stream=_device.current_stream_ptr(),
            **mapping,
        )
    return out


def logits_to_labels(
    logits: Any,
    *,
    out_size: Sequence[int],
    step: Sequence[float] | None = None,
    origin: Sequence[float] | None = None,
) -> Any:
    """Resize logits to ``out_size`` and take the argmax over classes, fused (no full-size float tensor).

    The resize is bilinear with half-pixel centres and no antialiasing, done per output pixel in float32.
    By default it is ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``. With
    ``step``/``origin`` it inverts the mapping :func:`preprocess` used for the volume (pass the same
    values): label pixel ``Y`` samples the logits at ``(Y + 0.5 - origin[0]) / step[0] - 0.5``, clamped
    to ``[0, h - 1]`` (likewise ``X``), so labels land where the network saw their pixels. The argmax
    follows numpy/torch: ties go to the lowest class, and NaN counts as larger than any number (the
    first NaN class wins); logits are not checked for NaN, so that the GPU path never synchronises.

    Args:
        logits: (N, C, h, w) float16 or float32, 1 <= C <= 256; numpy (CPU) or a CUDA array (GPU).
            Any memory order (non-C-contiguous input is copied first).
        out_size: (H, W) of the label maps (the volume's plane).
        step: (y, x) preprocess's input pixels per network pixel, finite and > 0; None means
            (H / h, W / w).
        origin: (y, x) preprocess's origin, finite; None means (0, 0). Both None (or equal to those
            values): the torch rule above, bit for bit.

    Returns:
        uint8 (N, H, W) class indices: numpy for numpy input, CuPy for CUDA input.

    Raises:
        TypeError: ``logits`` is not float16/float32, or ``out_size`` is not a pair of ints.
        ValueError: a bad shape or size (named in the message).
        RuntimeError: a CUDA array was given to a build without CUDA, or a CUDA call failed.
    """
    out_h, out_w = _out_size(out_size)
    if step is not None:
        _step_pair(step)
    if origin is not None:
        _real_pair(origin, "origin")
    on_gpu = _device.is_cuda_array(logits)
    if on_gpu:
        core = _device.require_cuda_build("logits_to_labels")
        layout = _device.cuda_layout(logits, "logits")
        shape, in_dtype = layout.shape, layout.dtype
    else:
        core = _device.core()
        arr = _device.as_numpy(logits, "logits")
        shape, in_dtype = arr.shape, arr.dtype
    _check_shape(shape, 4, "(N, C, h, w)", "logits")
    arr_dtype = _check_dtype(in_dtype, _LOGITS_DTYPES, "logits")
    n, c, h, w = (int(s) for s in shape)
    if c > 256:
        raise ValueError(f"logits must have at most 256 classes (labels are uint8), got C = {c}")
    step_y, step_x, origin_y, origin_x = _kernel_mapping(step, origin, (out_h, out_w), (h, w))
    mapping = {"step_y": step_y, "step_x": step_x, "origin_y": origin_y, "origin_x": origin_x}

    if not on_gpu:
        arr = np.ascontiguousarray(arr, dtype=arr_dtype)
        return core.logits_to_labels_cpu(arr, out_h, out_w, **mapping)

    cp = _device.cupy()
    with cp.cuda.Device(_device.cuda_device_of(logits)):
        arr = _device.cuda_operand(logits, arr_dtype, "logits")
        labels = cp.empty((n, out_h, out_w), dtype=cp.uint8)
        core.logits_to_labels_cuda(
            logits=arr, labels=labels, stream=_device.current_stream_ptr(), **mapping
        )
    return labels


@dataclass(frozen=True)
class PlaneMapping:
    """How one volume's (H, W) plane maps onto the network plane, per axis (y, x).

    Network pixel ``y`` samples the volume at ``(y + 0.5) * step[0] + origin[0] - 0.5`` (likewise ``x``):
    pass ``out_size``, ``step`` and ``origin`` to :func:`preprocess`, and ``step`` and ``origin`` with the
    volume's (H, W) as ``out_size`` to :func:`logits_to_labels`.

    Attributes:
        out_size: (h, w) of the network plane.
        step: (y, x) volume pixels per network pixel.
        origin: (y, x) offset in volume pixels; the centres of the two planes coincide.
    """

    out_size: tuple[int, int]
    step: tuple[float, float]
    origin: tuple[float, float]


def plane_mapping(
    shape_hw: Sequence[int],
    spacing_yx: Sequence[float],
    pixel_mm: float | None,
    *,
    min_size: int,
    divisor: int,
) -> PlaneMapping:
    """Choose the network plane for a volume: a fixed physical pixel size, centred on the volume's plane.

    Per axis, with volume size ``H`` and spacing ``dy``: the plane covers the volume's extent at
    ``pixel_mm`` per pixel, ``ceil(H * dy / pixel_mm)`` pixels (an extent within 1e-6 of a whole number
    of pixels counts as whole) rounded up to a multiple of ``divisor``, and at least ``min_size`` (also
    rounded up to a multiple of ``divisor``). ``step = pixel_mm / dy``, and ``origin = H / 2 - h / 2 * step``
    puts the centre of the network plane on the centre of the volume's plane, so a plane larger than
    the volume pads equally on both sides. ``pixel_mm=None`` is the plain resize: ``h = w = min_size``
    (rounded up to ``divisor``), ``step = (H / h, W / w)``, ``origin = (0, 0)``.

    Args:
        shape_hw: (H, W) of the volume's plane, positive ints.
        spacing_yx: (dy, dx) of the volume in mm, finite and > 0.
        pixel_mm: the network's pixel size in mm, finite and > 0, or None.
        min_size: the smallest network plane side, >= 1.
        divisor: network plane sides are multiples of this (the network's total downsampling), >= 1.

    Returns:
        The :class:`PlaneMapping`.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: an argument value is out of range (named in the message).
    """
    if isinstance(shape_hw, np.ndarray):
        shape_hw = shape_hw.tolist()
    if isinstance(shape_hw, (str, bytes)) or not isinstance(shape_hw, Sequence) or len(shape_hw) != 2:
        raise TypeError(f"shape_hw must be a pair of ints (H, W), got {shape_hw!r}")
    shape = tuple(_int_arg(v, "shape_hw") for v in shape_hw)
    if min(shape) <= 0:
        raise ValueError(f"shape_hw must be positive, got {shape}")
    min_size = _int_arg(min_size, "min_size")
    divisor = _int_arg(divisor, "divisor")
    if min_size < 1:
        raise ValueError(f"min_size must be >= 1, got {min_size}")
    if divisor < 1:
        raise ValueError(f"divisor must be >= 1, got {divisor}")
    spacing = _real_pair(spacing_yx, "spacing_yx")
    if min(spacing) <= 0:
        raise ValueError(f"spacing_yx must be > 0 mm, got {spacing}")

    def round_up(n: int) -> int:
        return -(-n // divisor) * divisor

    smallest = round_up(min_size)
    if pixel_mm is None:
        return PlaneMapping(
            out_size=(smallest, smallest),
            step=(shape[0] / smallest, shape[1] / smallest),
            origin=(0.0, 0.0),
        )
    pixel = _float32_real(pixel_mm, "pixel_mm", "a number or None")
    if pixel <= 0:
        raise ValueError(f"pixel_mm must be > 0, got {pixel_mm!r}")
    sizes, steps, origins = [], [], []
    for n, d in zip(shape, spacing):
        pixels = math.ceil(n * d / pixel - 1e-6)
        size = max(smallest, round_up(pixels))
        step = pixel / d
        sizes.append(size)
        steps.append(step)
        origins.append(n / 2 - size / 2 * step)
    return PlaneMapping(
        out_size=(sizes[0], sizes[1]), step=(steps[0], steps[1]), origin=(origins[0], origins[1])
    )
