"""The one small interface every inference backend implements, and the device plumbing they share.

A backend maps network input (N, K, h, w) to logits (N, C, h, w):

- on the CPU, numpy in and numpy out;
- on a GPU, a CUDA array in (anything with ``__cuda_array_interface__``: CuPy, PyTorch, Numba) and a CuPy array
  out, ordered on the caller's current CuPy stream; a numpy array in gives a numpy array out (uploaded and
  downloaded by the backend).
"""

from __future__ import annotations

import abc
import logging
from typing import Any

import numpy as np

from .._device import is_cuda_array
from ..metadata import ModelMetadata

logger = logging.getLogger(__name__)

BACKEND_NAMES = ("tensorrt", "openvino", "onnxruntime", "torch")


def parse_device(device: str) -> str:
    """Normalise ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` to ``"cpu"`` or ``"cuda:N"``.

    Raises:
        ValueError: for any other string.
    """
    if not isinstance(device, str):
        raise TypeError(f"device must be a str ('cpu', 'cuda' or 'cuda:N'), got {type(device).__name__}")
    if device == "cpu":
        return "cpu"
    if device == "cuda":
        return "cuda:0"
    if device.startswith("cuda:") and device[5:].isdigit():
        return f"cuda:{int(device[5:])}"
    raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def device_index(device: str) -> int:
    """``"cuda:N"`` -> N (0 for "cpu", which has no index)."""
    d = parse_device(device)
    return int(d[5:]) if d.startswith("cuda:") else 0


def cuda_device_count() -> int:
    """CUDA devices visible through CuPy, else PyTorch, else the compiled core; 0 when none can see one."""
    try:
        import cupy as cp

        return int(cp.cuda.runtime.getDeviceCount())
    except Exception as exc:  # noqa: BLE001 - no CuPy or no driver: ask the next one
        logger.debug("cupy sees no CUDA device: %s", exc)
    try:
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.device_count())
    except Exception as exc:  # noqa: BLE001
        logger.debug("torch sees no CUDA device: %s", exc)
    try:
        from .. import _core

        return int(_core.cuda_device_count())
    except Exception:  # noqa: BLE001
        return 0


class Backend(abc.ABC):
    """A loaded model that turns network input into logits.

    Attributes:
        name: ``"tensorrt"``, ``"openvino"``, ``"onnxruntime"`` or ``"torch"``.
        device: ``"cpu"`` or ``"cuda:N"``.
        metadata: how the model is fed (plane size, context, window, classes, precision).
        input_dtype: the numpy dtype the model wants (float32 or float16); other float inputs are cast.
    """

    name: str
    device: str
    metadata: ModelMetadata
    input_dtype: np.dtype

    @abc.abstractmethod
    def infer(self, batch: Any) -> Any:
        """(N, K, h, w) -> (N, C, h, w) logits.

        Args:
            batch: numpy array (any device) or CUDA array (GPU backends), float16 or float32.

        Returns:
            numpy logits for numpy input; CuPy logits (on the caller's current stream) for CUDA input.
        """

    def close(self) -> None:
        """Release the session/engine and device memory. Safe to call twice."""

    def __enter__(self) -> Backend:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(device={self.device!r}, precision={self.precision!r}, "
            f"plane={tuple(self.metadata.plane_size)}, context={self.metadata.context})"
        )

    @property
    def precision(self) -> str:
        """What the network runs in: the model file's precision unless the backend changes it (OpenVINO bf16,
        PyTorch fp16 autocast)."""
        return self.metadata.precision

    # -- helpers for implementations ---------------------------------------------------------------
    def expected_shape(self, n: int) -> tuple[int, int, int, int]:
        h, w = self.metadata.plane_size
        return (n, self.metadata.context, h, w)

    def check_batch(self, batch: Any) -> tuple[int, bool]:
        """Validate shape and dtype; returns (N, is_cuda).

        Raises:
            TypeError: when ``batch`` is not an array or not floating point, or a CUDA array on a CPU backend.
            ValueError: when its shape is not (N, K, h, w) for this model.
        """
        cuda = is_cuda_array(batch)
        if cuda and not self.device.startswith("cuda"):
            raise TypeError(
                f"batch is a CUDA array but the {self.name} backend runs on {self.device}; pass a numpy array "
                "or open the backend with device='cuda'"
            )
        if not cuda and not isinstance(batch, np.ndarray):
            raise TypeError(f"batch must be a numpy array or a CUDA array, got {type(batch).__name__}")
        shape = tuple(int(s) for s in batch.shape)
        k = self.metadata.context
        h, w = self.metadata.plane_size
        if self.metadata.pixel_mm is not None:
            # Physically sampled models see a plane that grows with the field of view, in multiples of 2**depth
            # and never below plane_size.
            div = self.metadata.plane_divisor
            if (len(shape) != 4 or shape[1] != k or shape[0] < 1 or shape[2] < h or shape[3] < w
                    or shape[2] % div or shape[3] % div):
                raise ValueError(
                    f"batch must be (N, {k}, h, w) with N >= 1 and h >= {h}, w >= {w} multiples of {div}, got {shape}"
                )
        elif len(shape) != 4 or shape[1:] != (k, h, w) or shape[0] < 1:
            raise ValueError(f"batch must be (N, {k}, {h}, {w}) with N >= 1, got {shape}")
        dtype = np.dtype(str(batch.dtype).replace("torch.", ""))
        if dtype.kind != "f":
            raise TypeError(f"batch must be float16 or float32, got {dtype}")
        return shape[0], cuda
