"""Inference backends behind one interface: TensorRT (.plan), OpenVINO and ONNX Runtime (.onnx), PyTorch (.pt).

>>> from resunet_trt.backends import open_backend
>>> with open_backend("model.int8.onnx", device="cpu") as backend:   # doctest: +SKIP
...     logits = backend.infer(batch)                                  # (N, K, h, w) -> (N, C, h, w)

The file type picks the backend: ``.plan``/``.engine`` -> TensorRT, ``.pt``/``.pth`` -> PyTorch, ``.onnx`` ->
OpenVINO on the CPU when it is installed, else ONNX Runtime (the portable runtime: ARM, macOS, GPUs). With no
file, the bundled default model is used, in the fastest form available for the device; on the CPU the order is
:data:`CPU_ORDER` (measured with benchmarks/bench_backends.py, see benchmarks/results/backends_cpu.json):

1. the fp32 ONNX on OpenVINO, run in bf16 where the CPU has it (AVX-512 BF16/AMX), else in fp32. bf16 comes
   first, before INT8, because it is the fastest variant that meets the accuracy bar:
   ``benchmarks/agreement_cpu.py`` (labels vs PyTorch fp32 on >= 99.5 % of body voxels, Dice within
   0.005/0.01 on real CT) passes for bf16 and for the bundled INT8 file (mixed precision: the nodes most
   sensitive to int8 left in float) on every case, but that INT8 file runs at 0.49x bf16;
2. the INT8 ONNX on OpenVINO, chosen with ``precision="int8"``: its 21 float nodes make it no faster than
   OpenVINO fp32 here (75 vs 78 slices/s; a fully int8 file was 1.2-1.3x bf16 but failed the check on three
   cases); it moves to the front only once an INT8 file passes that check and is faster than bf16;
3. the fp32 ONNX on ONNX Runtime (the portable runtime: ARM, macOS, any x86);
4. the INT8 ONNX on ONNX Runtime: after fp32, because there the mixed-precision INT8 file is slower than fp32
   (61 vs 64 slices/s: its float nodes break the integer chain into many quantize/dequantize steps);
5. the checkpoint on PyTorch.

``precision`` narrows the choice: ``"int8"`` takes the INT8 file, ``"bf16"`` the fp32 file on OpenVINO,
``"fp32"`` the fp32 file. :func:`resunet_trt.show_config` prints the order and what is installed.
- GPU: :data:`GPU_ORDER`. The FP16 ONNX on TensorRT (``precision="int8"``: the INT8 ONNX): an engine is specific
  to a GPU and TensorRT release, so it is never bundled; it is built on first use (announced, with its expected
  time) and cached by :func:`resunet_trt.engine.cached_engine` in ``$RESUNET_TRT_ENGINE_CACHE``, else
  ``~/.cache/resunet-trt/engines``. Without TensorRT: the checkpoint on PyTorch with fp16 autocast (with a one-line
  notice saying how to get TensorRT), then the fp32 ONNX on ONNX Runtime's CUDA provider. An .onnx file with
  ``backend="tensorrt"`` goes through the same cache; a .plan from ``resunet-build`` runs as it is.

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
#: (backend, bundled model kind) tried in this order on the CPU for the default model; see the module docstring.
CPU_ORDER: tuple[tuple[str, str], ...] = (
    ("openvino", "onnx"),
    ("openvino", "int8"),
    ("onnxruntime", "onnx"),
    ("onnxruntime", "int8"),
    ("torch", "pt"),
)
#: (backend, bundled model kind) tried in this order on a GPU for the default model; INT8 only on request.
GPU_ORDER: tuple[tuple[str, str], ...] = (
    ("tensorrt", "fp16"),
    ("torch", "pt"),
    ("onnxruntime", "onnx"),
    ("tensorrt", "int8"),
)
_ON_REQUEST_ONLY = {("tensorrt", "int8")}
#: Precision each bundled kind runs in by default (OpenVINO may run the fp32 file in bf16 on request).
_KIND_PRECISION = {"pt": "fp32", "onnx": "fp32", "fp16": "fp16", "int8": "int8"}
#: Backends that can run an .onnx file, best first on the CPU.
ONNX_BACKENDS = ("openvino", "onnxruntime")
PRECISIONS = ("auto", "fp32", "bf16", "int8")
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
    "openvino": "OpenVINO is not installed: pip install resunet-trt[openvino] (x86 CPUs)",
    "onnxruntime": "ONNX Runtime is not installed: pip install onnxruntime (CPU) or onnxruntime-gpu (CUDA)",
    "torch": "PyTorch is not installed: see https://pytorch.org/get-started/locally/",
}
TENSORRT_FALLBACK_NOTICE = (
    "TensorRT is not installed, so the GPU runs the PyTorch model (slower): pip install tensorrt-cu12 cupy-cuda12x "
    "(or tensorrt-cu13 cupy-cuda13x) to get TensorRT engines"
)

__all__ = [
    "BACKEND_NAMES",
    "CPU_ORDER",
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
    """Installed backends, fastest first: a subset of ``["tensorrt", "openvino", "onnxruntime", "torch"]``.

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
    """The backend family a model file needs, from its suffix (``"onnxruntime"`` for .onnx, which OpenVINO also
    runs: see :func:`open_backend`).

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
    if backend == "openvino":
        return False
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


def _default_candidates(device: str, precision: str = "auto") -> list[tuple[str, str]]:
    """(backend, default model kind), best first, for a device and a wanted precision (see the module docstring)."""
    if device.startswith("cuda"):
        order = list(GPU_ORDER)
    else:
        order = list(CPU_ORDER)
    if precision == "auto":
        return [c for c in order if c not in _ON_REQUEST_ONLY]
    if precision == "bf16":
        return [(name, kind) for name, kind in order if name == "openvino" and kind == "onnx"]
    return [(name, kind) for name, kind in order if _KIND_PRECISION[kind] == precision]


def _check_precision(precision: str | None) -> str:
    if precision is None:
        return "auto"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS} or None, got {precision!r}")
    return precision


def _check_threads(threads: int | None) -> None:
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be an int >= 1 or None, got {threads!r}")


def open_backend(
    model: str | os.PathLike[str] | None = None,
    *,
    backend: str = "auto",
    device: str = "auto",
    threads: int | None = None,
    precision: str | None = None,
) -> Backend:
    """Open a model file (or the bundled default) on the right backend.

    Args:
        model: a .plan, .onnx or .pt file; None for the bundled default model.
        backend: ``"auto"`` (from the file type, or the fastest available for the default model), or one of
            ``"tensorrt"``, ``"openvino"``, ``"onnxruntime"``, ``"torch"`` (must fit the file type). An .onnx
            file on the CPU goes to OpenVINO when it is installed, else to ONNX Runtime.
        device: ``"auto"`` (the first GPU when the backend can use one, else the CPU), ``"cpu"``, ``"cuda[:N]"``.
        threads: CPU inference threads for the OpenVINO, ONNX Runtime and PyTorch backends (None: the
            library's default, about one per core).
        precision: None/``"auto"`` (the file's, or the fastest for the default model), ``"fp32"``, ``"bf16"``
            (OpenVINO on a CPU with bf16; elsewhere fp32 with a logged warning) or ``"int8"`` (an INT8 file).

    Returns:
        An open :class:`Backend`; close it (or use ``with``) to free its memory.

    Raises:
        ValueError: on an unknown backend, device, precision or file type, a backend that does not match the
            file, or a precision the file and backend cannot give.
        ImportError: when the needed library is not installed (the message says how to install it).
        FileNotFoundError: when the file (or, with ``model=None``, every usable default file) is missing.
    """
    _check_backend_name(backend)
    _check_threads(threads)
    wanted = _check_precision(precision)
    if model is None:
        return _open_default(backend, device, threads, wanted)
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a path or None, got {type(model).__name__}")
    path = Path(model)
    needed = backend_for_path(path)
    fits = (*ONNX_BACKENDS, "tensorrt") if needed == "onnxruntime" else (needed,)
    if backend not in ("auto", *fits):
        raise ValueError(f"{path.name} is a {needed} model file; it cannot run on backend={backend!r}")
    if backend == "auto" and needed == "onnxruntime":
        needed = _onnx_backend(device, wanted)
    elif backend != "auto":
        needed = backend
    _require(needed)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    dev = _resolve_device(device, needed)
    if needed == "tensorrt" and not dev.startswith("cuda"):
        raise ValueError(f"a TensorRT engine runs on a CUDA device, got device={device!r}")
    if needed == "openvino" and dev != "cpu":
        raise ValueError(f"the openvino backend runs on the CPU, got device={device!r}")
    logger.info("opening %s with backend %s on %s", path, needed, dev)
    return _construct(needed, path, dev, threads, wanted)


def _onnx_backend(device: str, precision: str) -> str:
    """OpenVINO for an .onnx file on the CPU when installed (and always for bf16), else ONNX Runtime."""
    on_cpu = device == "cpu" or (device == "auto" and not (cuda_device_count() > 0 and _gpu_capable("onnxruntime")))
    if on_cpu and (_installed("openvino") or precision == "bf16"):
        return "openvino"
    return "onnxruntime"


def _construct(name: str, path: Path, device: str, threads: int | None = None, precision: str = "auto") -> Backend:
    if name == "openvino":
        from .openvino import OpenVinoBackend

        return OpenVinoBackend(path, device=device, threads=threads, precision=precision)
    opened: Backend
    if name == "tensorrt":
        from .tensorrt import TensorRTBackend

        if path.suffix.lower() == ".onnx":  # engine from the cache, built on first use
            opened = TensorRTBackend.from_onnx(path, device=device)
        else:
            opened = TensorRTBackend(path, device=device)
    elif name == "onnxruntime":
        from .onnxruntime import OnnxRuntimeBackend

        opened = OnnxRuntimeBackend(path, device=device, threads=threads if device == "cpu" else None)
    else:
        from .torch import TorchBackend

        opened = TorchBackend(path, device=device, threads=threads if device == "cpu" else None)
    if precision != "auto" and opened.precision != precision:
        opened.close()
        hint = " (bf16 runs on the openvino backend)" if precision == "bf16" else ""
        raise ValueError(
            f"precision={precision!r} asked for, but {path.name} runs in {opened.precision} on {name}{hint}"
        )
    return opened


def _open_default(backend: str, device: str, threads: int | None = None, precision: str = "auto") -> Backend:
    if backend == "tensorrt" and not (_installed("tensorrt") and cuda_device_count() > 0):
        raise ValueError(
            "there is no bundled TensorRT engine (a plan is tied to one GPU and TensorRT release): it is built from "
            "the bundled FP16 ONNX on first use, which needs TensorRT and a CUDA GPU here ("
            + INSTALL_HINTS["tensorrt"]
            + "); or build one elsewhere with `resunet-build model.onnx -o model.plan` and pass model='model.plan'"
        )
    names = [backend] if backend != "auto" else [n for n in ("tensorrt", "openvino", "onnxruntime", "torch")]
    if device == "auto":
        gpu = cuda_device_count() > 0 and any(_installed(n) and _gpu_capable(n) for n in names)
        dev = "cuda:0" if gpu else "cpu"
    else:
        dev = parse_device(device)
    problems: list[str] = []
    if backend == "auto" and dev.startswith("cuda") and not _installed("tensorrt"):
        logger.warning(TENSORRT_FALLBACK_NOTICE)
    for name, kind in _default_candidates(dev, precision):
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
        run_as = precision
        if run_as == "auto" and name == "openvino" and kind == "onnx":
            from .openvino import bf16_supported

            run_as = "bf16" if bf16_supported() else "fp32"
        logger.info("default model: %s on backend %s, device %s (fastest available)", path.name, name, dev)
        return _construct(name, path, dev, threads, run_as)
    if not problems:
        problems.append(f"precision={precision!r} is not offered by {', '.join(names)} on {dev}")
    raise FileNotFoundError(
        f"no usable default model for backend={backend!r} on {dev}: " + "; ".join(dict.fromkeys(problems))
    )
