"""What the values of a CT volume must look like: Hounsfield units, stored as int16."""

from __future__ import annotations

import logging
import math

import numpy as np

logger = logging.getLogger("resunet_trt.io")

_LABEL_LIKE_MAX_VALUES = 10
_HU_LIMIT = 40000.0


def _to_int16(data: np.ndarray, source: str) -> np.ndarray:
    """Round (floats) and clip to int16, logging a warning with the value range when clipping changes values."""
    if data.dtype == np.int16:
        return data
    info = np.iinfo(np.int16)
    lo, hi = float(np.min(data)), float(np.max(data))
    if lo < info.min or hi > info.max:
        logger.warning("%s: values in [%g, %g] clipped to the int16 range", source, lo, hi)
    if data.dtype.kind == "f":
        out = np.array(data, dtype=np.float32)  # one float32 working copy, rounded and clipped in place
        np.rint(out, out=out)
        np.clip(out, info.min, info.max, out=out)
        return out.astype(np.int16)
    if data.dtype.kind in "iu" and (lo < info.min or hi > info.max):
        return np.clip(data, info.min, info.max).astype(np.int16)
    return data.astype(np.int16)


# ---------------------------------------------------------------------------------------------------------------------


def _check_looks_like_ct(data: np.ndarray, source: str) -> None:
    """Refuse NaN/Inf and images whose values are not plausible as CT in HU."""
    lo, hi = float(np.min(data)), float(np.max(data))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{source}: the image has NaN or Inf values; CT in HU must be finite everywhere")
    if lo >= 0:
        raise ValueError(
            f"{source}: doesn't look like CT in HU: no negative values (range [{lo:g}, {hi:g}]; air is -1000 and "
            "fat about -100 HU). Is it a mask, an 8-bit image, or CT saved without its rescale intercept?"
        )
    if lo < -_HU_LIMIT or hi > _HU_LIMIT:
        raise ValueError(f"{source}: doesn't look like CT in HU: values range over [{lo:g}, {hi:g}]")
    if data.size >= 1000:
        flat = (
            data.reshape(-1, order="A")
            if (data.flags.c_contiguous or data.flags.f_contiguous)
            else data.ravel()
        )
        sample = flat[:: max(1, flat.size // (1 << 20))]
        distinct = np.unique(sample).size
        if distinct <= _LABEL_LIKE_MAX_VALUES:
            raise ValueError(
                f"{source}: doesn't look like CT: only {distinct} distinct values, like a label map or mask"
            )
