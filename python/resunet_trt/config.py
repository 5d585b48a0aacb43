"""Build and runtime configuration: what was compiled in, and which optional libraries are present."""

from __future__ import annotations

import importlib
import importlib.metadata
import platform
import sys
from typing import Any

from ._version import __version__

_OPTIONAL = (
    "numpy",
    "nibabel",
    "torch",
    "onnx",
    "onnxruntime",
    "openvino",
    "tensorrt",
    "cupy",
    "pydicom",
    "scipy",
)


def _dist_version(name: str) -> str | None:
    try:
        module = importlib.import_module(name)
    except Exception:  # noqa: BLE001 - a broken optional import is reported as missing
        return None
    return str(getattr(module, "__version__", "unknown"))


def build_info() -> dict[str, Any]:
    """What the compiled core was built with.

    Returns:
        dict with ``built_with_cuda``, ``built_with_openmp``, ``cuda_version``, ``openmp_threads``,
        ``cuda_devices`` and ``core_available`` (False when the compiled module is missing).
    """
    try:
        from . import _core
    except ImportError as exc:
        return {
            "core_available": False,
            "core_error": str(exc),
            "built_with_cuda": False,
            "built_with_openmp": False,
            "cuda_version": None,
            "openmp_threads": 1,
            "cuda_devices": 0,
        }
    return {
        "core_available": True,
        "built_with_cuda": bool(_core.built_with_cuda),
        "built_with_openmp": bool(_core.built_with_openmp),
        "cuda_version": _core.cuda_version,
        "openmp_threads": int(_core.openmp_max_threads()),
        "cuda_devices": int(_core.cuda_device_count()),
    }


def versions() -> dict[str, str | None]:
    """Versions of resunet-trt, Python and the optional libraries (None when not installed)."""
    out: dict[str, str | None] = {"resunet_trt": __version__, "python": sys.version.split()[0]}
    for name in _OPTIONAL:
        out[name] = _dist_version(name)
    return out


def machine_info() -> dict[str, Any]:
    """Host facts to store beside benchmark numbers."""
    import os

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
    }


def cpu_backend_order() -> dict[str, str]:
    """The order in which the default model's CPU backends are tried, each with whether it can run here.

    Returns:
        ``"<backend> <bundled file>"`` -> ``"installed"`` or ``"not installed"``, first tried first (see
        :data:`resunet_trt.backends.CPU_ORDER`).
    """
    from .backends import CPU_ORDER, DEFAULT_MODEL_FILES, available_backends

    installed = set(available_backends())
    return {
        f"{name} {DEFAULT_MODEL_FILES[kind]}": "installed" if name in installed else "not installed"
        for name, kind in CPU_ORDER
    }


def show_config(file: Any = None) -> dict[str, Any]:
    """Print (and return) the build flags and library versions.

    Args:
        file: stream to print to; ``sys.stdout`` when None.
    """
    info = {
        "build": build_info(),
        "versions": versions(),
        "machine": machine_info(),
        "cpu_backend_order": cpu_backend_order(),
    }
    stream = file if file is not None else sys.stdout
    print(f"resunet-trt {__version__}", file=stream)
    for section in ("build", "versions", "machine", "cpu_backend_order"):
        print(f"{section}:", file=stream)
        for key, value in info[section].items():
            print(f"  {key}: {value}", file=stream)
    return info
