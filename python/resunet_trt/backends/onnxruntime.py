"""ONNX Runtime backend: the fp32, fp16 or int8 ONNX on the CPU, or on a GPU with the CUDA execution provider.

CPU: ``CPUExecutionProvider`` with all graph optimisations on; numpy in, numpy out. The INT8 (Q/DQ) file runs
through ONNX Runtime's integer kernels (DQ -> Conv -> Q fused to QLinearConv), which is what makes it the fast CPU
path.

GPU (``CUDAExecutionProvider``, from the ``onnxruntime-gpu`` wheel): CUDA arrays are bound in place with IO binding
(no host copy). ONNX Runtime runs on its own CUDA stream, so the caller's current CuPy stream is synchronised
before the run (the input must be complete) and ONNX Runtime synchronises its stream before ``run_with_iobinding``
returns, so the CuPy output is ready on any stream. numpy input on the GPU is copied by ONNX Runtime and numpy
comes back.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from .._device import as_cupy, cupy
from ..metadata import ONNX_METADATA_KEY, ModelMetadata
from .base import Backend, device_index, parse_device

logger = logging.getLogger(__name__)

INSTALL_HINT = "ONNX Runtime is not installed: pip install onnxruntime (CPU) or onnxruntime-gpu (CUDA)"
_ORT_TYPES: dict[str, np.dtype[Any]] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
}


def import_onnxruntime() -> Any:
    """Import onnxruntime or raise ImportError saying how to install it."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return onnxruntime


def cuda_provider_available() -> bool:
    """True when the installed ONNX Runtime has the CUDA execution provider."""
    try:
        return "CUDAExecutionProvider" in import_onnxruntime().get_available_providers()
    except ImportError:
        return False


def session_options(threads: int | None = None) -> Any:
    """CPU-friendly session options: all graph optimisations, ``threads`` intra-op threads (None: ORT's default).

    The intra-op threads do not spin while idle (``session.intra_op.allow_spinning = 0``): a spinning pool keeps
    every core busy between runs, and our own OpenMP kernels (preprocess, decode, components), which run between
    and beside the network's runs, then measured 2-3x slower; without spinning they run at full speed and the
    network's time is unchanged.
    """
    ort = import_onnxruntime()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be an int >= 1 or None, got {threads!r}")
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.log_severity_level = 3  # errors only; ONNX Runtime's warnings go to stderr otherwise
    return so


class OnnxRuntimeBackend(Backend):
    """Runs one of our ONNX files with ONNX Runtime.

    Args:
        path: the .onnx file (fp32, fp16 or int8 from :mod:`resunet_trt.export`).
        device: ``"cpu"`` or ``"cuda[:N]"`` (needs onnxruntime-gpu).
        threads: intra-op threads on the CPU (None: ONNX Runtime's default, one per core).

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ImportError: without onnxruntime.
        RuntimeError: when the CUDA provider was asked for but is not available.
        ValueError: when the ONNX carries no resunet-trt metadata.
    """

    name = "onnxruntime"

    def __init__(
        self, path: str | os.PathLike[str], *, device: str = "cpu", threads: int | None = None
    ) -> None:
        ort = import_onnxruntime()
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {self.path}")
        self.device = parse_device(device)
        self._device_id = device_index(self.device)
        if self.device.startswith("cuda"):
            if not cuda_provider_available():
                raise RuntimeError(
                    f"device {self.device} needs ONNX Runtime's CUDAExecutionProvider, which this onnxruntime "
                    f"({ort.__version__}) lacks: pip install onnxruntime-gpu, or use device='cpu'"
                )
            providers: list[Any] = [
                ("CUDAExecutionProvider", {"device_id": self._device_id}),
                "CPUExecutionProvider",
            ]
        else:
            providers = ["CPUExecutionProvider"]
        self._session: Any = None
        try:
            self._session = ort.InferenceSession(
                str(self.path), session_options(threads), providers=providers
            )
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise ValueError(f"{self.path}: ONNX Runtime cannot load this model ({exc})") from exc
        if self.device.startswith("cuda") and self._session.get_providers()[0] != "CUDAExecutionProvider":
            raise RuntimeError(
                f"ONNX Runtime could not start the CUDA provider on {self.device} (it fell back to "
                f"{self._session.get_providers()}); check the CUDA/cuDNN libraries onnxruntime-gpu needs"
            )
        props = self._session.get_modelmeta().custom_metadata_map
        if ONNX_METADATA_KEY not in props:
            raise ValueError(
                f"{self.path} has no resunet-trt metadata (metadata_props key {ONNX_METADATA_KEY!r}); export it "
                "with resunet_trt.export.export_onnx"
            )
        self.metadata = ModelMetadata.from_json(props[ONNX_METADATA_KEY], source=str(self.path))
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(
                f"{self.path}: expected one input and one output, got {len(inputs)} and {len(outputs)}"
            )
        self._input_name, self._output_name = inputs[0].name, outputs[0].name
        if inputs[0].type not in _ORT_TYPES:
            raise ValueError(f"{self.path}: input must be float or float16, got {inputs[0].type}")
        self.input_dtype = _ORT_TYPES[inputs[0].type]
        self._output_dtype = _ORT_TYPES.get(outputs[0].type, np.dtype(np.float32))
        logger.info(
            "onnxruntime: %s (%s) on %s with %s",
            self.path.name,
            self.metadata.precision,
            self.device,
            self._session.get_providers()[0],
        )

    @property
    def providers(self) -> list[str]:
        return list(self._session.get_providers())

    def infer(self, batch: Any) -> Any:
        if self._session is None:
            raise RuntimeError("this onnxruntime backend is closed")
        n, cuda = self.check_batch(batch)
        if cuda:
            return self._infer_cuda(batch, n)
        x = np.ascontiguousarray(batch, dtype=self.input_dtype)
        return self._session.run([self._output_name], {self._input_name: x})[0]

    def _infer_cuda(self, batch: Any, n: int) -> Any:
        cp = cupy()
        with cp.cuda.Device(self._device_id):
            x = cp.ascontiguousarray(as_cupy(batch), dtype=self.input_dtype)
            c = self.metadata.num_classes
            h, w = self.metadata.plane_size
            out = cp.empty((n, c, h, w), dtype=self._output_dtype)
            # ONNX Runtime works on its own stream: the input must be complete before it starts.
            cp.cuda.get_current_stream().synchronize()
            binding = self._session.io_binding()
            binding.bind_input(
                self._input_name,
                "cuda",
                self._device_id,
                self.input_dtype.type,
                list(x.shape),
                int(x.data.ptr),
            )
            binding.bind_output(
                self._output_name,
                "cuda",
                self._device_id,
                self._output_dtype.type,
                list(out.shape),
                int(out.data.ptr),
            )
            self._session.run_with_iobinding(binding)
            binding.synchronize_outputs()
        return out

    def close(self) -> None:
        self._session = None
