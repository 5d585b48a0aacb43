"""PyTorch backend: the .pt checkpoint in eager PyTorch, on the CPU in fp32 or on a GPU with fp16 autocast.

CPU: numpy in, numpy out (``torch.from_numpy``, no copy for float32 input).
GPU: a CUDA array comes in without a copy through ``torch.as_tensor`` (``__cuda_array_interface__``); the network
runs on the caller's current CuPy stream (wrapped as a ``torch.cuda.ExternalStream``), so no synchronisation is
needed, and the float32 logits go out as a CuPy array through DLPack.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from .._device import cupy, current_stream_ptr
from .base import Backend, device_index, parse_device

logger = logging.getLogger(__name__)

INSTALL_HINT = (
    "PyTorch is not installed: see https://pytorch.org/get-started/locally/ for the build for your machine"
)


def import_torch() -> Any:
    """Import torch or raise ImportError saying how to install it."""
    try:
        import torch
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return torch


class TorchBackend(Backend):
    """Runs a checkpoint written by :func:`resunet_trt.model.save_checkpoint`.

    Args:
        path: the .pt file.
        device: ``"cpu"`` or ``"cuda[:N]"``.
        fp16: on CUDA, run under ``torch.autocast(dtype=float16)`` (ignored on the CPU, which runs fp32).
        threads: CPU threads for torch (None: leave torch's setting alone).

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ImportError: without torch.
        RuntimeError: when CUDA was asked for and torch cannot see it.
    """

    name = "torch"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        device: str = "cpu",
        fp16: bool = True,
        threads: int | None = None,
    ) -> None:
        torch = import_torch()
        from ..model import load_checkpoint

        self.path = Path(path)
        self.device = parse_device(device)
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(
                f"device {self.device} asked for, but this torch ({torch.__version__}) has no CUDA device; "
                "install a CUDA build of torch or use device='cpu'"
            )
        if threads is not None:
            if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
                raise ValueError(f"threads must be an int >= 1 or None, got {threads!r}")
            torch.set_num_threads(threads)
        model, metadata = load_checkpoint(self.path, map_location="cpu")
        self.metadata = metadata
        self._torch = torch
        self._tdevice = torch.device(self.device)
        self._model: Any = model.to(self._tdevice).eval()
        self._autocast = bool(fp16) and self.device.startswith("cuda")
        self.input_dtype = np.dtype(np.float16 if self._autocast else np.float32)
        logger.info(
            "torch: %s on %s (%s)", self.path.name, self.device, "fp16 autocast" if self._autocast else "fp32"
        )

    def _forward(self, x: Any) -> Any:
        torch = self._torch
        with torch.inference_mode():
            if self._autocast:
                with torch.autocast("cuda", dtype=torch.float16):
                    return self._model(x).float()
            return self._model(x.float())

    def infer(self, batch: Any) -> Any:
        if self._model is None:
            raise RuntimeError("this torch backend is closed")
        _, cuda = self.check_batch(batch)
        torch = self._torch
        if cuda:
            cp = cupy()
            with torch.cuda.device(device_index(self.device)):
                stream = torch.cuda.ExternalStream(current_stream_ptr())
                with torch.cuda.stream(stream):
                    x = torch.as_tensor(batch, device=self._tdevice)
                    out = self._forward(x).contiguous()
            return cp.from_dlpack(out)
        x = torch.from_numpy(np.ascontiguousarray(batch))
        if self.device.startswith("cuda"):
            x = x.to(self._tdevice, non_blocking=False)
            return self._forward(x).cpu().numpy()
        return self._forward(x).numpy()

    def close(self) -> None:
        self._model = None
