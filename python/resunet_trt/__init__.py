"""resunet-trt: liver and liver-tumor segmentation of abdominal CT.

The public face is small::

    from resunet_trt import Segmenter, load_ct, save_mask, show_config

Heavy dependencies (torch, onnxruntime, tensorrt, cupy, pydicom) are imported lazily, so
``import resunet_trt`` works on a machine with only numpy and nibabel.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .config import show_config

if TYPE_CHECKING:  # pragma: no cover
    from .io import CTVolume, load_ct, save_mask
    from .segmenter import Result, Segmenter

__all__ = ["CTVolume", "Result", "Segmenter", "__version__", "load_ct", "save_mask", "show_config"]

_LAZY = {
    "Segmenter": "segmenter",
    "Result": "segmenter",
    "CTVolume": "io",
    "load_ct": "io",
    "save_mask": "io",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'resunet_trt' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
