"""OpenVINO backend: our ONNX files on an x86 CPU, in fp32, bf16 or int8, with compiled models cached on disk.

Precision comes from the model file and the ``precision`` option:

- an fp32 (or fp16) ONNX runs in ``"fp32"`` (OpenVINO's ``INFERENCE_PRECISION_HINT`` f32: the default hint on a
  CPU with bf16 units is bf16, so fp32 has to be asked for) or in ``"bf16"`` (bf16 hint: convolutions and
  matrix products in bfloat16 on AVX-512 BF16 / AMX, accumulation in fp32). bf16 is used only where the CPU
  reports it in ``OPTIMIZATION_CAPABILITIES``; elsewhere the backend logs a warning and runs fp32.
- an INT8 (Q/DQ) ONNX runs in ``"int8"``: OpenVINO folds the QuantizeLinear/DequantizeLinear pairs into integer
  convolutions (VNNI/AMX), the rest in fp32.

Compiling the network takes a few tenths of a second; the compiled model is exported to a cache folder and
imported on the next start (about six times faster). A cache entry is named by the ONNX file's sha256, the
OpenVINO version, a fingerprint of the CPU (name, capabilities and instruction-set flags), the precision and the
thread count, so a change of any of them compiles afresh. Each blob has a sidecar JSON with its own sha256: a
blob that does not match (truncated, overwritten) or that OpenVINO refuses is logged, compiled again and
replaced. The folder is ``cache_dir``, else ``$RESUNET_TRT_OPENVINO_CACHE``, else
``$XDG_CACHE_HOME/resunet-trt/openvino`` (``~/.cache/resunet-trt/openvino``); ``cache_dir=False`` turns the cache
off. Cache writes are atomic; a cache folder that cannot be written only costs the compile time (logged).

Inference releases the GIL, so the Segmenter's CPU pipeline preprocesses and decodes other slabs meanwhile.
"""

from __future__ import annotations

import io
import json
import logging
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

from ..engine import sha256_bytes, sha256_file
from ..io import atomic_write_bytes
from .base import Backend, parse_device

logger = logging.getLogger(__name__)

INSTALL_HINT = "OpenVINO is not installed: pip install openvino (or resunet-trt[openvino])"
#: Values of the ``precision`` option; ``"auto"`` follows the model file.
PRECISIONS = ("auto", "fp32", "bf16", "int8")
CACHE_ENV = "RESUNET_TRT_OPENVINO_CACHE"
_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


def import_openvino() -> Any:
    """Import openvino or raise ImportError saying how to install it."""
    try:
        import openvino
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return openvino


def default_cache_dir() -> Path:
    """``$RESUNET_TRT_OPENVINO_CACHE``, else ``$XDG_CACHE_HOME/resunet-trt/openvino``, else under ``~/.cache``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "resunet-trt" / "openvino"


def _core() -> Any:
    return import_openvino().Core()


def cpu_capabilities(core: Any = None) -> list[str]:
    """OpenVINO's ``OPTIMIZATION_CAPABILITIES`` of the CPU, e.g. ``['BF16', 'FP32', 'INT8', ...]``."""
    core = core if core is not None else _core()
    return [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def bf16_supported(core: Any = None) -> bool:
    """True when OpenVINO can run bf16 on this CPU (AVX-512 BF16 or AMX)."""
    return "BF16" in cpu_capabilities(core)


def _cpu_flags() -> str:
    """The instruction-set flags of the first CPU (Linux), else the machine name."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return platform.machine()


def cpu_fingerprint(core: Any = None) -> str:
    """A short hash of what a compiled model depends on in the CPU: name, OpenVINO capabilities, ISA flags."""
    core = core if core is not None else _core()
    text = "|".join(
        [str(core.get_property("CPU", "FULL_DEVICE_NAME")), ",".join(cpu_capabilities(core)), _cpu_flags()]
    )
    return sha256_bytes(text.encode())[:16]


def resolve_precision(file_precision: str, precision: str | None, *, bf16_ok: bool, name: str) -> str:
    """The precision a model file runs in on OpenVINO.

    Args:
        file_precision: the file's metadata precision (``"fp32"``, ``"fp16"`` or ``"int8"``).
        precision: the option: None or ``"auto"`` (the file's: int8 for a Q/DQ file, else fp32), ``"fp32"``,
            ``"bf16"`` or ``"int8"``.
        bf16_ok: whether the CPU runs bf16; without it ``"bf16"`` falls back to fp32 with a warning.
        name: the file name, for messages.

    Returns:
        ``"fp32"``, ``"bf16"`` or ``"int8"``.

    Raises:
        ValueError: an unknown precision, or one the file cannot give (int8 from a float file, a float
            precision from a Q/DQ file).
    """
    wanted = "auto" if precision is None else precision
    if wanted not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS} or None, got {precision!r}")
    quantized = file_precision == "int8"
    if wanted == "auto":
        return "int8" if quantized else "fp32"
    if wanted == "int8" and not quantized:
        raise ValueError(
            f"precision='int8' needs an INT8 (Q/DQ) ONNX, but {name} is {file_precision}; quantize it with "
            "resunet_trt.export.quantize_int8 or pass the .int8.onnx file"
        )
    if wanted in ("fp32", "bf16") and quantized:
        raise ValueError(
            f"precision={wanted!r} needs a floating-point ONNX, but {name} is INT8 (Q/DQ); pass the fp32 .onnx"
        )
    if wanted == "bf16" and not bf16_ok:
        logger.warning("openvino: this CPU has no bf16 support (no AVX-512 BF16/AMX); running %s in fp32", name)
        return "fp32"
    return wanted


class OpenVinoBackend(Backend):
    """Runs one of our ONNX files with OpenVINO on the CPU.

    Args:
        path: the .onnx file (fp32, fp16 or int8 from :mod:`resunet_trt.export`).
        device: ``"cpu"`` (the only device this backend drives).
        threads: inference threads (None: OpenVINO's default, one per physical core).
        precision: ``None``/``"auto"`` (from the file), ``"fp32"``, ``"bf16"`` or ``"int8"``; see the module
            docstring.
        cache_dir: folder for compiled models; None for the default (see the module docstring), False for no
            cache.

    Attributes:
        precision: what the network runs in: ``"fp32"``, ``"bf16"`` or ``"int8"``.
        from_cache: True when the compiled model was imported from the cache instead of compiled.
        cache_path: the cache blob of this model (None without a cache).

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ImportError: without openvino (or without onnx, which reads the model's metadata).
        ValueError: a bad argument, a file without resunet-trt metadata, or a model OpenVINO cannot read.
    """

    name = "openvino"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        device: str = "cpu",
        threads: int | None = None,
        precision: str | None = None,
        cache_dir: str | os.PathLike[str] | bool | None = None,
    ) -> None:
        ov = import_openvino()
        from ..export import read_onnx_metadata

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {self.path}")
        self.device = parse_device(device)
        if self.device != "cpu":
            raise ValueError(f"the openvino backend runs on the CPU, got device={device!r}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be an int >= 1 or None, got {threads!r}")
        if cache_dir is True or (cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike, bool))):
            raise TypeError(f"cache_dir must be a path, None or False, got {cache_dir!r}")
        self.metadata = read_onnx_metadata(self.path)
        core = ov.Core()
        self._precision = resolve_precision(
            self.metadata.precision, precision, bf16_ok=bf16_supported(core), name=self.path.name
        )
        self.threads = threads
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": _HINTS[self.precision],
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
        }
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        self.from_cache = False
        self.cache_path: Path | None = None
        if cache_dir is None or isinstance(cache_dir, (str, os.PathLike)):
            folder = default_cache_dir() if cache_dir is None else Path(cache_dir)
            key = "-".join(
                [
                    sha256_file(self.path)[:24],
                    ov.__version__.split("-")[0],
                    cpu_fingerprint(core),
                    self.precision,
                    f"t{threads or 0}",
                ]
            )
            self.cache_path = folder / f"{key}.blob"
        self._compiled = self._load_or_compile(core, config)
        self._request: Any = self._compiled.create_infer_request()
        if len(self._compiled.inputs) != 1 or len(self._compiled.outputs) != 1:
            raise ValueError(
                f"{self.path}: expected one input and one output, got {len(self._compiled.inputs)} and "
                f"{len(self._compiled.outputs)}"
            )
        in_type = self._compiled.input(0).get_element_type().to_dtype()
        self.input_dtype = np.dtype(in_type)
        if self.input_dtype not in (np.dtype(np.float32), np.dtype(np.float16)):
            raise ValueError(f"{self.path}: input must be float or float16, got {self.input_dtype}")
        logger.info(
            "openvino %s: %s (%s, %s threads) on the CPU, %s",
            ov.__version__,
            self.path.name,
            self.precision,
            threads or "default",
            "imported from the cache" if self.from_cache else "compiled",
        )

    @property
    def precision(self) -> str:
        return self._precision

    def _load_or_compile(self, core: Any, config: dict[str, Any]) -> Any:
        """Import the cached compiled model when it is intact, else compile (and cache) it."""
        blob_path = self.cache_path
        if blob_path is not None and blob_path.is_file():
            sidecar = blob_path.with_suffix(".json")
            try:
                blob = blob_path.read_bytes()
                expected = json.loads(sidecar.read_text())["blob_sha256"]
                if sha256_bytes(blob) != expected:
                    raise ValueError("its sha256 does not match the one recorded when it was written")
                compiled = core.import_model(io.BytesIO(blob), "CPU", config)
                self.from_cache = True
                return compiled
            except Exception as exc:  # noqa: BLE001 - any damage to the cache means: compile again
                logger.warning("openvino: cached model %s is unusable (%s); compiling it again", blob_path, exc)
        try:
            compiled = core.compile_model(core.read_model(str(self.path)), "CPU", config)
        except Exception as exc:  # openvino raises RuntimeError subclasses of its own for bad models
            raise ValueError(f"{self.path}: OpenVINO cannot load this model ({exc})") from exc
        if blob_path is not None:
            try:
                blob = compiled.export_model().getvalue()
                atomic_write_bytes(blob_path, blob)
                info = {
                    "blob_sha256": sha256_bytes(blob),
                    "model": str(self.path),
                    "model_sha256": sha256_file(self.path),
                    "openvino": import_openvino().__version__,
                    "cpu": str(core.get_property("CPU", "FULL_DEVICE_NAME")),
                    "precision": self.precision,
                    "threads": self.threads,
                }
                atomic_write_bytes(blob_path.with_suffix(".json"), (json.dumps(info, indent=2) + "\n").encode())
            except OSError as exc:
                logger.warning("openvino: cannot write the compiled-model cache %s (%s)", blob_path, exc)
        return compiled

    def infer(self, batch: Any) -> Any:
        if self._request is None:
            raise RuntimeError("this openvino backend is closed")
        self.check_batch(batch)
        x = np.ascontiguousarray(batch, dtype=self.input_dtype)
        # share_outputs=False copies the logits out of the request's buffer, which the next call reuses.
        result = self._request.infer({0: x}, share_inputs=True, share_outputs=False)
        return np.asarray(result[0], dtype=np.float32)

    def close(self) -> None:
        self._request = None
        self._compiled = None
