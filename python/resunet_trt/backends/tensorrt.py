"""TensorRT backend: a verified .plan (see :mod:`resunet_trt.engine`) run with the name-based tensor API.

Buffers are CuPy arrays; the engine runs on a stream this backend owns. Ordering with the caller is done with
events, never a host synchronisation: the backend's stream waits for the caller's current stream before the first
enqueue, and the caller's stream waits for the backend's stream before the logits are handed back, so the CuPy
result is safe to use on the caller's stream right away. Batches larger than the optimisation profile's maximum
are split into several enqueues into one output array; a batch below the profile's minimum is zero-padded
(:func:`resunet_trt.engine.plan_enqueues`). numpy input is uploaded and numpy logits come back.

:meth:`TensorRTBackend.from_onnx` runs one of our ONNX files: the plan comes from the engine cache
(:func:`resunet_trt.engine.cached_engine`), built on first use.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._device import as_cupy, cupy
from ..engine import (
    MAX_PLANE_SIDE,
    LoadedEngine,
    PlaneProfile,
    cached_engine,
    import_tensorrt,
    load_engine,
    plan_enqueues,
)
from .base import Backend, device_index, parse_device

if TYPE_CHECKING:  # pragma: no cover
    import tensorrt as trt

logger = logging.getLogger(__name__)


class TensorRTBackend(Backend):
    """Runs a TensorRT engine built by :func:`resunet_trt.engine.build_engine`.

    Args:
        path: the .plan file; its ``.plan.json`` sidecar must sit beside it.
        device: ``"cuda"`` or ``"cuda:N"``.

    Raises:
        ImportError: without TensorRT or CuPy (with how to install them).
        FileNotFoundError: when the plan or its sidecar is missing.
        resunet_trt.engine.EngineMismatchError: when the plan does not fit this TensorRT/GPU.
    """

    name = "tensorrt"

    def __init__(self, path: str | os.PathLike[str], *, device: str = "cuda:0") -> None:
        import_tensorrt()
        import tensorrt as trt

        cp = cupy()
        self.path = Path(path)
        self.device = parse_device(device)
        if not self.device.startswith("cuda"):
            raise ValueError(f"the TensorRT backend runs on a CUDA device, got device={device!r}")
        self._device_id = device_index(self.device)
        self._loaded: LoadedEngine | None = load_engine(self.path, device=self._device_id)
        engine: trt.ICudaEngine = self._loaded.engine
        self.metadata = self._loaded.metadata
        self.plane: PlaneProfile = self._loaded.sidecar.plane_profile
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(
                f"{self.path}: expected one input and one output tensor, got {inputs} and {outputs}"
            )
        self._input_name, self._output_name = inputs[0], outputs[0]
        self.input_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self._input_name)))
        self._output_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self._output_name)))
        profile = engine.get_tensor_profile_shape(self._input_name, 0)
        self._min_batch = int(profile[0][0])
        self._max_batch = int(profile[2][0])
        with cp.cuda.Device(self._device_id):
            self._context: trt.IExecutionContext | None = engine.create_execution_context()
            self._stream = cp.cuda.Stream(non_blocking=True)
        self._engine: trt.ICudaEngine | None = engine
        logger.info(
            "tensorrt: %s (%s, batch %d..%d) on %s",
            self.path.name,
            self.metadata.precision,
            self._min_batch,
            self._max_batch,
            self.device,
        )

    @property
    def max_batch(self) -> int:
        """Largest batch one enqueue takes (the profile's max); larger batches are split."""
        return self._max_batch

    @classmethod
    def from_onnx(
        cls,
        onnx_path: str | os.PathLike[str],
        *,
        device: str = "cuda:0",
        cache_dir: str | os.PathLike[str] | None = None,
        min_batch: int = 1,
        opt_batch: int = 8,
        max_batch: int = 32,
        max_plane: int = MAX_PLANE_SIDE,
    ) -> TensorRTBackend:
        """Run an ONNX file through the engine cache: reuse the cached plan, or build it first (announced).

        A cached plan that passes its checks but that TensorRT cannot deserialise is rebuilt once.
        """
        parse_device(device)

        def plan(rebuild: bool) -> Path:
            return cached_engine(
                onnx_path,
                cache_dir=cache_dir,
                min_batch=min_batch,
                opt_batch=opt_batch,
                max_batch=max_batch,
                max_plane=max_plane,
                device=device,
                rebuild=rebuild,
            )

        path = plan(False)
        try:
            return cls(path, device=device)
        except RuntimeError as exc:
            logger.warning("tensorrt: cached plan %s did not load (%s); building it again", path, exc)
            return cls(plan(True), device=device)

    def infer(self, batch: Any) -> Any:
        if self._context is None:
            raise RuntimeError("this TensorRT backend is closed")
        n, cuda = self.check_batch(batch)
        cp = cupy()
        with cp.cuda.Device(self._device_id):
            if cuda:
                out = self._run(cp.ascontiguousarray(as_cupy(batch), dtype=self.input_dtype), n)
                return out
            x = cp.asarray(np.ascontiguousarray(batch, dtype=self.input_dtype))
            return cp.asnumpy(self._run(x, n))

    def _run(self, x: Any, n: int) -> Any:
        """Enqueue ``x`` (CuPy (N, K, h, w), input dtype, contiguous) in profile-sized chunks; CuPy logits out."""
        cp = cupy()
        context = self._context
        if context is None:
            raise RuntimeError("this TensorRT backend is closed")
        c = self.metadata.num_classes
        h, w = int(x.shape[2]), int(x.shape[3])
        if not self.plane.covers((h, w)):
            raise ValueError(
                f"batch plane ({h}, {w}) is outside the engine's profile {self.plane.min}..{self.plane.max}; "
                "rebuild the engine with a larger max_plane"
            )
        out = cp.empty((n, c, h, w), dtype=self._output_dtype)
        caller = cp.cuda.get_current_stream()
        self._stream.wait_event(caller.record())
        in_per_sample = int(np.prod(x.shape[1:])) * x.dtype.itemsize
        out_per_sample = c * h * w * out.dtype.itemsize
        keep_alive = []  # padded chunks must outlive their enqueue
        for step in plan_enqueues(n, self._min_batch, self._max_batch):
            in_ptr = int(x.data.ptr) + step.start * in_per_sample
            out_ptr = int(out.data.ptr) + step.start * out_per_sample
            padded_out = None
            if step.padded:
                with self._stream:
                    padded_in = cp.zeros((step.run_batch, *x.shape[1:]), dtype=x.dtype)
                    padded_in[: step.stop - step.start] = x[step.start : step.stop]
                    padded_out = cp.empty((step.run_batch, c, h, w), dtype=out.dtype)
                keep_alive += [padded_in, padded_out]
                in_ptr, out_ptr = int(padded_in.data.ptr), int(padded_out.data.ptr)
            shape = (step.run_batch, *(int(s) for s in x.shape[1:]))
            if not context.set_input_shape(self._input_name, shape):
                raise RuntimeError(
                    f"TensorRT rejected input shape {shape} (profile batch {self._min_batch}.."
                    f"{self._max_batch}, plane {self.plane.min}..{self.plane.max})"
                )
            context.set_tensor_address(self._input_name, in_ptr)
            context.set_tensor_address(self._output_name, out_ptr)
            if not context.execute_async_v3(int(self._stream.ptr)):
                raise RuntimeError(
                    f"TensorRT execute_async_v3 failed for a batch of {step.run_batch}; see the log above"
                )
            if padded_out is not None:
                with self._stream:
                    out[step.start : step.stop] = padded_out[: step.stop - step.start]
        caller.wait_event(self._stream.record())
        if keep_alive:
            self._stream.synchronize()  # rare path (batch below the profile minimum): free the padding safely
        return out

    def close(self) -> None:
        """Wait for queued work, then drop the execution context, the engine and its runtime (context first:
        it belongs to the engine). Safe to call twice."""
        if self._context is not None:
            self._stream.synchronize()
        self._context = None
        self._engine = None
        self._loaded = None
