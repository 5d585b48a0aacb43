"""Inference backends behind one interface: TensorRT (.plan), ONNX Runtime (.onnx) and PyTorch (.pt).

>>> from resunet_trt.backends import open_backend
>>> with open_backend("model.int8.onnx", device="cpu") as backend:   # doctest: +SKIP
...     logits = backend.infer(batch)                                  # (N, K, h, w) -> (N, C, h, w)

The file type picks the backend: ``.plan``/``.engine`` -> TensorRT, ``.onnx`` -> ONNX Runtime, ``.pt``/``.pth`` ->
PyTorch. With no file, the bundled default model is used, in the fastest form available for the device:

- CPU: the INT8 ONNX on ONNX Runtime, then the fp32 ONNX, then the checkpoint on PyTorch (measured order on a
  2-core Xeon, see benchmarks/results/backends_cpu.json);
- GPU: the checkpoint on PyTorch with fp16 autocast, then the fp32 ONNX on ONNX Runtime's CUDA provider (a
  TensorRT engine is specific to a GPU and TensorRT release, so it is never bundled: build one with
  ``resunet-build`` and pass the .plan).

Every backend module imports its library lazily, so this package imports with numpy alone.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

from .base import BACKEND_NAMES, Backend, cuda_device_count, parse_device

logger = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "default"
DEFAULT_MODEL_FILES = {
    "pt": "resunet_default.pt",
    "onnx": "resunet_default.onnx",
    "fp16": "resunet_default.fp16.onnx",
    "int8": "resunet_default.int8.onnx",
}
SUFFIX_BACKEND = {
    ".plan": "tensorrt",
    ".engine": "tensorrt",
    ".onnx": "onnxruntime",
    ".pt": "torch",
    ".pth": "torch",
}
INSTALL_HINTS = {
    "tensorrt": "TensorRT is not installed: on a machine with an NVIDIA GPU, pip install tensorrt-cu12 (or "
    "tensorrt-cu13) and cupy-cuda12x (or cupy-cuda13x); it cannot run on a CPU-only machine",
    "onnxruntime": "ONNX Runtime is not installed: pip install onnxruntime (CPU) or onnxruntime-gpu (CUDA)",
    "torch": "PyTorch is not installed: see https://pytorch.org/get-started/locally/",
}

__all__ = [
    "BACKEND_NAMES",
    "Backend",
    "available_backends",
    "backend_for_path",
    "default_model_path",
    "open_backend",
]


def _installed(name: str) -> bool:
    """Is backend ``name``'s library importable (without importing torch/onnxruntime eagerly)?"""
    if name == "tensorrt":
        from ..engine import tensorrt_available

        return tensorrt_available() and importlib.util.find_spec("cupy") is not None
    return importlib.util.find_spec(name) is not None


def available_backends() -> list[str]:
    """Installed backends, fastest first: a subset of ``["tensorrt", "onnxruntime", "torch"]``.

    TensorRT counts only when the real library (not just its type stubs) and CuPy are importable.
    """
    return [name for name in BACKEND_NAMES if _installed(name)]


def default_model_path(kind: str = "pt") -> Path:
    """The bundled default model file.

    Args:
        kind: ``"pt"`` (checkpoint), ``"onnx"`` (fp32), ``"fp16"`` or ``"int8"`` (Q/DQ ONNX).

    Raises:
        ValueError: for an unknown ``kind``.
        FileNotFoundError: when this installation has no such file.
    """
    if kind not in DEFAULT_MODEL_FILES:
        raise ValueError(f"kind must be one of {sorted(DEFAULT_MODEL_FILES)}, got {kind!r}")
    path = DEFAULT_MODEL_DIR / DEFAULT_MODEL_FILES[kind]
    if not path.is_file():
        raise FileNotFoundError(
            f"the bundled default model ({kind}) is missing: expected {path}; reinstall resunet-trt, or pass a "
            "model file (.pt, .onnx or .plan) explicitly"
        )
    return path


def backend_for_path(path: str | os.PathLike[str]) -> str:
    """The backend a model file needs, from its suffix.

    Raises:
        ValueError: for an unknown suffix.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIX_BACKEND:
        raise ValueError(
            f"model must be a .plan/.engine (TensorRT), .onnx (ONNX Runtime) or .pt/.pth (PyTorch) file, "
            f"got {Path(path).name!r}"
        )
    return SUFFIX_BACKEND[suffix]


def _resolve_device(device: str, backend: str) -> str:
    if device != "auto":
        return parse_device(device)
    if backend == "tensorrt":
        return "cuda:0"
    if cuda_device_count() > 0 and _gpu_capable(backend):
        return "cuda:0"
    return "cpu"


def _gpu_capable(backend: str) -> bool:
    """Can the installed library run ``backend`` on a GPU?"""
    if backend == "tensorrt":
        return _installed("tensorrt")
    if backend == "onnxruntime":
        from .onnxruntime import cuda_provider_available

        return _installed("onnxruntime") and cuda_provider_available()
    if backend == "torch":
        if not _installed("torch"):
            return False
        import torch

        return bool(torch.cuda.is_available())
    return False


def _check_backend_name(backend: str) -> None:
    if backend != "auto" and backend not in BACKEND_NAMES:
        raise ValueError(f"backend must be 'auto' or one of {BACKEND_NAMES}, got {backend!r}")


def _require(name: str) -> None:
    if not _installed(name):
        raise ImportError(INSTALL_HINTS[name])


def _default_candidates(device: str) -> list[tuple[str, str]]:
    """(backend, default model kind), best first, for a device.

    On the CPU the fp32 ONNX comes first: with ONNX Runtime it is both faster than the INT8 variant for this
    network (its pre-activation BN-ReLU units leave most convolutions unfused around the Q/DQ pairs) and closer to
    the trained model; ``benchmarks/bench_backends.py`` measures both. The INT8 file stays available by name.
    """
    if device.startswith("cuda"):
        return [("torch", "pt"), ("onnxruntime", "onnx")]
    return [("onnxruntime", "onnx"), ("onnxruntime", "int8"), ("torch", "pt")]


def open_backend(
    model: str | os.PathLike[str] | None = None, *, backend: str = "auto", device: str = "auto"
) -> Backend:
    """Open a model file (or the bundled default) on the right backend.

    Args:
        model: a .plan, .onnx or .pt file; None for the bundled default model.
        backend: ``"auto"`` (from the file type, or the fastest available for the default model), or one of
            ``"tensorrt"``, ``"onnxruntime"``, ``"torch"`` (must match the file type).
        device: ``"auto"`` (the first GPU when the backend can use one, else the CPU), ``"cpu"``, ``"cuda[:N]"``.

    Returns:
        An open :class:`Backend`; close it (or use ``with``) to free its memory.

    Raises:
        ValueError: on an unknown backend, device or file type, or a backend that does not match the file.
        ImportError: when the needed library is not installed (the message says how to install it).
        FileNotFoundError: when the file (or, with ``model=None``, every usable default file) is missing.
    """
    _check_backend_name(backend)
    if model is None:
        return _open_default(backend, device)
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a path or None, got {type(model).__name__}")
    path = Path(model)
    needed = backend_for_path(path)
    if backend not in ("auto", needed):
        raise ValueError(f"{path.name} is a {needed} model file; it cannot run on backend={backend!r}")
    _require(needed)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    dev = _resolve_device(device, needed)
    if needed == "tensorrt" and not dev.startswith("cuda"):
        raise ValueError(f"a TensorRT engine runs on a CUDA device, got device={device!r}")
    logger.info("opening %s with backend %s on %s", path, needed, dev)
    return _construct(needed, path, dev)


def _construct(name: str, path: Path, device: str) -> Backend:
    if name == "tensorrt":
        from .tensorrt import TensorRTBackend

        return TensorRTBackend(path, device=device)
    if name == "onnxruntime":
        from .onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(path, device=device)
    from .torch import TorchBackend

    return TorchBackend(path, device=device)


def _open_default(backend: str, device: str) -> Backend:
    if backend == "tensorrt":
        raise ValueError(
            "there is no bundled TensorRT engine (a plan is tied to one GPU and TensorRT release): build one with "
            "`resunet-build model.onnx -o model.plan` and pass model='model.plan'"
        )
    names = [backend] if backend != "auto" else [n for n in ("onnxruntime", "torch")]
    if device == "auto":
        gpu = cuda_device_count() > 0 and any(_installed(n) and _gpu_capable(n) for n in names)
        dev = "cuda:0" if gpu else "cpu"
    else:
        dev = parse_device(device)
    problems: list[str] = []
    for name, kind in _default_candidates(dev):
        if name not in names:
            continue
        if not _installed(name):
            problems.append(INSTALL_HINTS[name])
            continue
        if dev.startswith("cuda") and not _gpu_capable(name):
            problems.append(f"{name} cannot use the GPU here")
            continue
        try:
            path = default_model_path(kind)
        except FileNotFoundError as exc:
            problems.append(str(exc))
            continue
        logger.info("default model: %s on backend %s, device %s (fastest available)", path.name, name, dev)
        return _construct(name, path, dev)
    raise FileNotFoundError(
        f"no usable default model for backend={backend!r} on {dev}: " + "; ".join(dict.fromkeys(problems))
    )
