"""What ``resunet-bench`` runs: the models to compare (bundled variants or files) and the volumes to run them on."""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import backends
from ..engine import tensorrt_available

logger = logging.getLogger("resunet_trt.bench")

BUNDLED = {
    "torch": ("pt", "torch"),
    "pt": ("pt", "torch"),
    "onnx": ("onnx", "onnxruntime"),
    "fp16": ("fp16", "onnxruntime"),
    "int8": ("int8", "onnxruntime"),
    "openvino": ("onnx", "openvino"),
    "openvino-bf16": ("onnx", "openvino"),
    "openvino-int8": ("int8", "openvino"),
}
#: The precision a bundled variant asks for (the others run in their file's).
BUNDLED_PRECISION = {"openvino": "fp32", "openvino-bf16": "bf16", "openvino-int8": "int8"}
#: The suffixes the backends accept (one table: a suffix they refuse must not be offered here).
SUFFIX_BACKEND = backends.SUFFIX_BACKEND
TENSORRT_HELP = (
    "TensorRT is not installed in this Python environment, so a .plan engine cannot be run. Install it on a "
    "machine with an NVIDIA GPU and driver: `pip install tensorrt` (it needs the matching CUDA runtime), then "
    "build an engine for that GPU with resunet-build. Meanwhile --onnx or --checkpoint run the same model."
)


class UsageError(Exception):
    """Bad arguments or inputs: reported on stderr with exit code 2."""


# ----------------------------------------------------------------------------------------- what to run


@dataclass(frozen=True)
class Variant:
    """One model to measure: a display label, a model file (None = bundled default), a backend, a precision."""

    label: str
    model: Path | None
    backend: str = "auto"
    precision: str | None = None


def _bundled(kind: str) -> Path:
    from resunet_trt.backends import default_model_path

    return Path(default_model_path(kind))


def parse_variant(item: str) -> Variant:
    """A ``--compare`` item: a bundled variant name (torch, onnx, int8, openvino-int8, ...) or a model file."""
    text = item.strip()
    if not text:
        raise UsageError("--compare has an empty item")
    if text.lower() in BUNDLED:
        kind, backend = BUNDLED[text.lower()]
        try:
            return Variant(
                label=text.lower(),
                model=_bundled(kind),
                backend=backend,
                precision=BUNDLED_PRECISION.get(text.lower()),
            )
        except FileNotFoundError as exc:
            raise UsageError(f"--compare {text}: {exc}") from exc
    path = Path(text)
    suffix_backend = SUFFIX_BACKEND.get(path.suffix.lower())
    if suffix_backend is None:
        raise UsageError(
            f"--compare item {text!r} is neither a bundled variant ({', '.join(sorted(BUNDLED))}) nor a model "
            f"file ending in {', '.join(sorted(SUFFIX_BACKEND))}"
        )
    return Variant(label=path.name, model=path, backend=suffix_backend)


def select_variants(args: argparse.Namespace) -> list[Variant]:
    """The models to measure, from the command line (see the module docstring)."""
    chosen = [flag for flag in ("engine", "onnx", "checkpoint", "compare") if getattr(args, flag)]
    if len(chosen) > 1:
        raise UsageError(f"give one of --engine, --onnx, --checkpoint, --compare; got {', '.join(chosen)}")
    if args.engine:
        variants = [Variant(label=Path(args.engine).name, model=Path(args.engine), backend="tensorrt")]
    elif args.onnx:
        variants = [Variant(label=Path(args.onnx).name, model=Path(args.onnx), backend="onnxruntime")]
    elif args.checkpoint:
        variants = [Variant(label=Path(args.checkpoint).name, model=Path(args.checkpoint), backend="torch")]
    elif args.compare:
        variants = [parse_variant(item) for item in args.compare.split(",")]
        if len(variants) < 2:
            raise UsageError(f"--compare needs at least two models, got {args.compare!r}")
    else:
        variants = [Variant(label="default", model=None, backend=args.backend)]
    if args.backend != "auto" and not args.compare:
        variants = [Variant(v.label, v.model, args.backend) for v in variants]
    if any(v.backend == "tensorrt" for v in variants) and not tensorrt_available():
        raise UsageError(TENSORRT_HELP)
    for v in variants:
        if v.model is not None and not v.model.exists():
            raise UsageError(f"model file not found: {v.model}")
    return variants


# ----------------------------------------------------------------------------------------- inputs


@dataclass
class BenchInput:
    """One CT volume in memory, with its reference labels when known."""

    name: str
    volume: Any  # resunet_trt.io.CTVolume
    labels: np.ndarray | None
    read_s: float | None
    source: str


def parse_shape(text: str) -> tuple[int, int, int]:
    """``"D,H,W"`` (or ``DxHxW``) -> three positive integers."""
    try:
        parts = [int(p) for p in text.replace("x", ",").split(",") if p.strip()]
    except ValueError:
        parts = []
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected D,H,W with three positive integers, got {text!r}")
    return parts[0], parts[1], parts[2]


def parse_spacing(text: str) -> tuple[float, float, float]:
    """``"dz,dy,dx"`` in mm -> three positive floats."""
    try:
        parts = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        parts = []
    if len(parts) != 3 or not all(math.isfinite(p) and p > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected dz,dy,dx with three positive numbers in mm, got {text!r}")
    return parts[0], parts[1], parts[2]


def load_inputs(args: argparse.Namespace) -> list[BenchInput]:
    """The volumes to run: the cases of ``--data`` (CT + label) or ``--cases`` phantoms of ``--synthetic``."""
    from resunet_trt.io import CTVolume, load_ct, load_label

    inputs: list[BenchInput] = []
    if args.data:
        from resunet_trt.datasets import data_cases, natural_key

        try:
            cases, notes = data_cases(args.data)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        for note in notes:
            logger.warning("%s", note)
        if not cases:
            raise UsageError(f"no case with a CT and a label file found in --data {args.data}")
        for key in sorted(cases, key=natural_key)[: args.cases]:
            image, label = cases[key]
            t0 = time.perf_counter()
            volume = load_ct(image)
            read_s = time.perf_counter() - t0
            inputs.append(BenchInput(key, volume, load_label(label, like=volume), read_s, str(image)))
        return inputs

    from resunet_trt.phantom import make_phantom

    shape = args.synthetic or (64, 256, 256)
    for i in range(args.cases or 1):
        ct, labels = make_phantom(shape, args.spacing, seed=args.seed + i)
        volume = CTVolume.from_array(ct, spacing=args.spacing)
        name = f"phantom_{'x'.join(map(str, shape))}_seed{args.seed + i}"
        inputs.append(BenchInput(name, volume, labels, None, "resunet_trt.phantom.make_phantom"))
    return inputs
