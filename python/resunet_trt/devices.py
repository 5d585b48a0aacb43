"""Which device the pipeline runs on: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` turned into a usable one."""

from __future__ import annotations

import logging
import re

logger = logging.getLogger(__name__)

__all__ = ["cuda_status", "resolve_device"]

_DEVICE_RE = re.compile(r"cuda(?::(\d+))?")


def cuda_status(index: int = 0) -> tuple[bool, str]:
    """Whether the GPU path can run on CUDA device ``index``, and if not, why.

    Needs a CUDA build of the compiled core, a CUDA device with that index, and CuPy.

    Returns:
        (usable, reason); reason is empty when usable.
    """
    try:
        from . import _core
    except ImportError as exc:
        return False, f"the compiled core is not importable ({exc})"
    if not _core.built_with_cuda:
        return False, "resunet_trt was built without CUDA"
    count = int(_core.cuda_device_count())
    if count == 0:
        return False, "no CUDA device is visible"
    if index >= count:
        return False, f"CUDA device {index} does not exist ({count} visible)"
    try:
        import cupy  # noqa: F401
    except ImportError:
        return False, "CuPy is not installed (pip install cupy-cuda13x)"
    return True, ""


def resolve_device(device: str) -> str:
    """Turn a device request into ``"cpu"`` or ``"cuda:N"``.

    ``"auto"`` picks ``cuda:0`` when a CUDA build, a GPU and CuPy are present, else the CPU, and logs the
    choice. An explicit ``"cuda"``/``"cuda:N"`` that cannot run here is an error with the reason, never a
    silent fallback.

    Raises:
        TypeError: ``device`` is not a string.
        ValueError: ``device`` is not one of the accepted spellings.
        RuntimeError: CUDA was requested but is not usable.
    """
    if not isinstance(device, str):
        raise TypeError(
            f"device must be a str ('auto', 'cpu', 'cuda' or 'cuda:N'), got {type(device).__name__}"
        )
    req = device.strip().lower()
    if req == "cpu":
        return "cpu"
    if req == "auto":
        ok, reason = cuda_status(0)
        if ok:
            logger.info("device='auto': using cuda:0")
            return "cuda:0"
        logger.info("device='auto': using the CPU (%s)", reason)
        return "cpu"
    match = _DEVICE_RE.fullmatch(req)
    if match is None:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    index = int(match.group(1) or 0)
    ok, reason = cuda_status(index)
    if not ok:
        raise RuntimeError(f"device={device!r} was requested but CUDA cannot be used here: {reason}")
    return f"cuda:{index}"
