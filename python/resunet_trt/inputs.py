"""What the pipeline accepts: a file or DICOM folder, a CTVolume, or a bare (D, H, W) array with its spacing.

Files are read ahead: the next case is read in a background thread while this one is segmented (reading and
decompressing release the GIL). Errors about a file name the file.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._checks import checked_spacing

if TYPE_CHECKING:  # pragma: no cover
    from .io import CTVolume

__all__ = ["as_volume", "checked_volume", "name_file", "prefetched", "read_item"]


def as_volume(
    item: Any, spacing: Sequence[float] | None, series_uid: str | None = None
) -> tuple[CTVolume, float]:
    """Turn a path, CTVolume or bare array into a CTVolume; returns it and the read time in seconds.

    ``series_uid`` picks the series of a DICOM folder holding several (files ignore it)."""
    from .io import CTVolume, load_ct

    if isinstance(item, (str, os.PathLike)):
        if spacing is not None:
            raise ValueError(f"spacing is only for bare arrays; {os.fspath(item)!r} carries its own")
        t0 = time.perf_counter()
        try:
            volume = load_ct(item, series_uid=series_uid if Path(item).is_dir() else None)
        except (OSError, ValueError, TypeError, RuntimeError) as exc:
            raise name_file(exc, item) from exc
        return checked_volume(volume, os.fspath(item)), time.perf_counter() - t0
    if isinstance(item, CTVolume):
        if spacing is not None:
            raise ValueError("spacing is only for bare arrays; a CTVolume carries its own")
        return checked_volume(item, "volume"), 0.0
    if isinstance(item, np.ndarray) or hasattr(item, "__array__"):
        if spacing is None:
            raise ValueError(
                "spacing is required for a bare array: segment(array, spacing=(dz, dy, dx)) in mm"
            )
        arr = np.asarray(item)
        if arr.ndim != 3:
            raise ValueError(f"item must be a 3D array (D, H, W), got shape {arr.shape}")
        if arr.dtype.kind not in "iuf" or arr.dtype.itemsize > 8:
            raise TypeError(f"item must hold integer or float HU values, got dtype {arr.dtype}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ValueError("item contains NaN or Inf values; a CT volume must be finite")
        sp = checked_spacing(spacing)
        return checked_volume(CTVolume.from_array(arr, spacing=sp), "array"), 0.0
    raise TypeError(
        f"item must be a path, a CTVolume or a (D, H, W) array with spacing, got {type(item).__name__}"
    )


def read_item(item: Any, series_uid: str | None = None) -> tuple[CTVolume, float]:
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], np.ndarray):
        return as_volume(item[0], item[1])
    return as_volume(item, None, series_uid)


def prefetched(
    items: list[Any], series_uid: str | None = None
) -> Generator[Callable[[], tuple[CTVolume, float]], None, None]:
    """Yield, per item, a call returning its (CTVolume, read seconds); item i + 1 is read in a background
    thread while the caller works on item i (reading and decompressing release the GIL)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="resunet-read") as pool:
        queued = deque(pool.submit(read_item, item, series_uid) for item in items[:1])
        for i in range(len(items)):
            if i + 1 < len(items):
                queued.append(pool.submit(read_item, items[i + 1], series_uid))
            yield queued.popleft().result


def checked_volume(volume: CTVolume, what: str) -> CTVolume:
    """Reject volumes the pipeline cannot run on, naming ``what`` (the file or argument)."""
    hu = volume.hu
    if hu.ndim != 3:
        raise ValueError(f"{what}: expected a 3D CT volume (D, H, W), got shape {hu.shape}")
    if min(hu.shape) < 1:
        raise ValueError(f"{what}: the CT volume is empty (shape {hu.shape})")
    if hu.dtype != np.int16:
        raise TypeError(f"{what}: CTVolume.hu must be int16 HU, got {hu.dtype}")
    return volume


def name_file(exc: BaseException, path: str | os.PathLike[str]) -> BaseException:
    """Make sure an error message names the file it is about."""
    where = os.fspath(path)
    message = str(exc)
    if where in message or os.path.abspath(where) in message:
        return exc
    kind = type(exc) if isinstance(exc, (ValueError, TypeError, OSError, RuntimeError)) else RuntimeError
    try:
        return kind(f"{where}: {exc}")
    except TypeError:  # an exception type with a special constructor
        return RuntimeError(f"{where}: {type(exc).__name__}: {exc}")
