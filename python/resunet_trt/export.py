"""ONNX export of the ResUNet, and its FP16 and INT8 (Q/DQ) variants.

Three files come out of one checkpoint, each carrying the checkpoint's :class:`ModelMetadata` (JSON under the
``metadata_props`` key :data:`resunet_trt.metadata.ONNX_METADATA_KEY`) with its own ``precision``:

- ``fp32``: :func:`export_onnx`, the network traced with the ``torch.export``-based exporter
  (``torch.onnx.export(..., dynamo=True)``). It gives a flat static graph (Conv, BatchNormalization, Relu, Add,
  Resize, Concat; no TorchScript ``Constant``/``Identity`` noise), and the legacy TorchScript exporter is deprecated
  in PyTorch 2.9+. Input ``"input"`` (N, K, h, w) float32, output ``"logits"`` (N, C, h, w) float32, N dynamic.
- ``fp16``: :func:`convert_fp16`, weights and activations in float16 through ONNX Runtime's float16 converter
  (``onnxruntime.transformers.float16``, the maintained copy of onnxconverter-common's), float32 input and output
  kept, so callers feed the same arrays. A strongly typed TensorRT build of it gives an FP16 engine.
- ``int8``: :func:`quantize_int8`, explicit quantization with QuantizeLinear/DequantizeLinear pairs from
  ``onnxruntime.quantization.quantize_static`` in QDQ format: symmetric int8 weights per output channel, symmetric
  int8 activations per tensor, activation ranges calibrated (entropy or percentile) on real CT slices fed through
  :func:`resunet_trt.kernels.preprocess`, the same code inference uses. Scales are symmetric with zero point 0,
  which is what TensorRT's explicit quantization accepts; Q/DQ pairs sit on the inputs, outputs and weights of
  Conv/ConvTranspose and on the residual Add and ReLU tensors, biases stay float (TensorRT refuses int32
  DequantizeLinear), Concat and Resize are left in float, and the final 1x1 convolution to logits stays float.

All files are written atomically (temporary file in the target directory, then ``os.replace``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .datasets import find_ct_volumes
from .files import atomic_write_bytes
# The ONNX metadata functions live in metadata.py and stay importable from here.
from .metadata import (
    ONNX_METADATA_KEY,  # noqa: F401
    ModelMetadata,
    current_versions,
    load_onnx,
    metadata_from_onnx_model,
    read_onnx_metadata,  # noqa: F401
    set_onnx_metadata,
)

if TYPE_CHECKING:  # pragma: no cover
    import onnx
    import torch

logger = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BATCH_DIM_NAME = "batch"
MIN_OPSET = 17
DEFAULT_OPSET = 18
CALIBRATION_METHODS = ("entropy", "percentile")

# Ops whose inputs get Q/DQ pairs in the INT8 model. Conv carries nearly all the arithmetic; the others are
# quantized so that a Conv's int8 output can flow into the next int8 Conv without a float round trip
# (ONNX Runtime fuses DQ -> op -> Q into integer kernels, TensorRT fuses Q/DQ into the neighbouring layers).
INT8_OP_TYPES = ("Conv", "ConvTranspose", "Add", "Relu", "MaxPool", "AveragePool")


def _with_precision_and_versions(
    metadata: ModelMetadata, precision: str, **export_info: Any
) -> ModelMetadata:
    """A copy of ``metadata`` for a new artifact: its precision, today's versions, the export settings."""
    d = metadata.to_dict()
    d["precision"] = precision
    source_versions = dict(d.get("versions", {}))
    d["versions"] = current_versions()
    extra = dict(d.get("extra", {}))
    if source_versions and "source_versions" not in extra:
        extra["source_versions"] = source_versions
    export = dict(extra.get("export", {}))
    export.update(export_info)
    extra["export"] = export
    d["extra"] = extra
    return ModelMetadata.from_dict(d)


def _save_onnx(model: onnx.ModelProto, output: Path) -> Path:
    import onnx

    onnx.checker.check_model(model)
    atomic_write_bytes(output, model.SerializeToString())
    return output


# --------------------------------------------------------------------------------------------------------------
# fp32 export
# --------------------------------------------------------------------------------------------------------------


# Loggers of the exporter's dependencies and the level they are held at during an export: torch.onnx says once
# per process that torchvision's ops are not registered, onnxscript and onnx_ir log every optimizer pass at INFO.
_EXPORTER_LOGGERS = {"torch.onnx": logging.ERROR, "onnxscript": logging.WARNING, "onnx_ir": logging.WARNING}


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Hold the ONNX exporter's own chatter back for the duration of the block, and only there.

    Raises the levels of the loggers in :data:`_EXPORTER_LOGGERS` (never lowers one the user raised further) and
    ignores the ``FutureWarning`` that torch's pytree code raises about ``LeafSpec`` while it traces; the levels
    and warning filters are restored on exit, so the caller's logging and warnings settings stay as they were.
    Messages of this package are not affected.
    """
    saved: dict[str, int] = {}
    for name, level in _EXPORTER_LOGGERS.items():
        lg = logging.getLogger(name)
        saved[name] = lg.level
        if lg.getEffectiveLevel() < level:
            lg.setLevel(level)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _check_opset(opset: int) -> int:
    if isinstance(opset, bool) or not isinstance(opset, int):
        raise TypeError(f"opset must be an int, got {type(opset).__name__}")
    if opset < MIN_OPSET:
        raise ValueError(f"opset must be >= {MIN_OPSET}, got {opset}")
    return opset


def export_model(
    model: torch.nn.Module,
    metadata: ModelMetadata,
    output: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export an in-memory network to an fp32 ONNX file with a dynamic batch dimension.

    Args:
        model: the ResUNet (any module mapping (N, K, h, w) float32 to (N, C, h, w) logits). It is exported in
            eval mode; its train/eval state is restored afterwards.
        metadata: how the network is fed; ``plane_size`` and ``context`` give the traced input shape.
        output: the .onnx file to write.
        opset: ONNX opset, >= 17.

    Returns:
        The path written.

    Raises:
        TypeError: when ``model`` is not a torch module or ``metadata`` not a ModelMetadata.
        ValueError: when ``opset`` is too old or the traced output does not have ``metadata.num_classes`` channels.
    """
    import torch

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(metadata, ModelMetadata):
        raise TypeError(f"metadata must be a ModelMetadata, got {type(metadata).__name__}")
    opset = _check_opset(opset)
    output = Path(output)
    h, w = metadata.plane_size
    # Batch 2 for tracing: torch.export specialises sizes 0 and 1, a dynamic dimension needs another example.
    example = torch.zeros(2, metadata.context, h, w, dtype=torch.float32)
    from .model import ResUNet, fold_batchnorm

    if isinstance(model, ResUNet):
        # conv-BN pairs become one convolution with a bias: INT8 Q/DQ then sees conv(+bias)-ReLU, which fuses.
        model = fold_batchnorm(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(example)
        if out.ndim != 4 or out.shape[1] != metadata.num_classes or tuple(out.shape[2:]) != (h, w):
            raise ValueError(
                f"model output must be (N, {metadata.num_classes}, {h}, {w}) for metadata "
                f"{metadata.plane_size=}, got {tuple(out.shape)}"
            )
        batch = torch.export.Dim(BATCH_DIM_NAME, min=1, max=4096)
        dynamic: dict[int, Any] = {0: batch}
        if metadata.pixel_mm is not None:
            # Physical sampling: the plane grows with the field of view, in steps of the network's divisor.
            divisor = _plane_divisor(model, h, w)
            dynamic[2] = torch.export.Dim("plane_h_blocks", min=1, max=4096 // divisor) * divisor
            dynamic[3] = torch.export.Dim("plane_w_blocks", min=1, max=4096 // divisor) * divisor
        with quiet_exporter():
            program = torch.onnx.export(
                model,
                (example,),
                None,
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=(dynamic,),
                opset_version=opset,
                optimize=True,
                verbose=False,
                external_data=False,
            )
    finally:
        model.train(was_training)
    if program is None:  # pragma: no cover - dynamo=True always returns a program
        raise RuntimeError("torch.onnx.export returned no program")
    proto = program.model_proto
    _name_batch_dims(proto)
    _drop_node_metadata(proto)
    import onnx

    set_onnx_metadata(
        proto,
        _with_precision_and_versions(
            metadata,
            "fp32",
            opset=opset,
            exporter=f"torch.onnx dynamo (torch {torch.__version__})",
            onnx=onnx.__version__,
        ),
    )
    _save_onnx(proto, output)
    logger.info("exported fp32 ONNX (opset %d) to %s", opset, output)
    return output


def _plane_divisor(model: Any, h: int, w: int) -> int:
    """The multiple that a dynamic plane size must keep: ``2**depth`` for a ResUNet, else the largest power of two
    dividing the example plane."""
    config = getattr(model, "config", None)
    divisor = getattr(config, "divisor", None)
    if isinstance(divisor, int) and divisor > 0:
        return divisor
    d = 1
    while h % (2 * d) == 0 and w % (2 * d) == 0 and d < 256:
        d *= 2
    return d


def _drop_node_metadata(model: onnx.ModelProto) -> None:
    """Remove the exporter's per-node annotations (Python stack traces with the exporting machine's file paths,
    module names); the model-level metadata, ours included, stays."""
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            del node.metadata_props[:]
            for attr in node.attribute:
                if attr.HasField("g"):
                    graphs.append(attr.g)
                graphs.extend(attr.graphs)
    for function in model.functions:
        for node in function.node:
            del node.metadata_props[:]


def _name_batch_dims(model: onnx.ModelProto) -> None:
    """Give the graph's input and output one batch dimension name, whatever the exporter called it."""
    for value in list(model.graph.input) + list(model.graph.output):
        dim0 = value.type.tensor_type.shape.dim[0]
        if not dim0.HasField("dim_value"):
            dim0.dim_param = BATCH_DIM_NAME


def export_onnx(
    checkpoint: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export a checkpoint (.pt from :func:`resunet_trt.model.save_checkpoint`) to an fp32 ONNX file.

    Args:
        checkpoint: the .pt file.
        output: the .onnx file to write.
        opset: ONNX opset, >= 17.

    Returns:
        The path written.
    """
    from .model import load_checkpoint

    model, metadata = load_checkpoint(checkpoint, map_location="cpu")
    return export_model(model, metadata, output, opset=opset)


# --------------------------------------------------------------------------------------------------------------
# fp16
# --------------------------------------------------------------------------------------------------------------


def _require_fp32_source(model: onnx.ModelProto, source: str, target: str) -> ModelMetadata:
    metadata = metadata_from_onnx_model(model, source=source)
    if metadata.precision != "fp32":
        raise ValueError(
            f"{target} conversion needs the fp32 ONNX as input, {source} is {metadata.precision}"
        )
    return metadata


def convert_fp16(source: str | os.PathLike[str], output: str | os.PathLike[str]) -> Path:
    """Convert the fp32 ONNX to float16 weights and activations, keeping float32 input and output.

    Args:
        source: the fp32 .onnx written by :func:`export_model` / :func:`export_onnx`.
        output: the .onnx file to write.

    Returns:
        The path written.

    Raises:
        ValueError: when ``source`` is not our fp32 ONNX.
    """
    from onnxruntime.transformers import float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = load_onnx(source)
    metadata = _require_fp32_source(model, str(source), "fp16")
    converted = float16.convert_float_to_float16(model, keep_io_types=True)
    # The converter appends the input/output Casts at the end of the node list; ONNX wants topological order.
    OnnxModel(converted).topological_sort()
    set_onnx_metadata(
        converted,
        _with_precision_and_versions(metadata, "fp16", fp16_converter="onnxruntime.transformers.float16"),
    )
    out = _save_onnx(converted, Path(output))
    logger.info("wrote fp16 ONNX to %s", out)
    return out


# --------------------------------------------------------------------------------------------------------------
# int8 (Q/DQ)
# --------------------------------------------------------------------------------------------------------------


def calibration_batches(
    volumes: Iterable[np.ndarray],
    metadata: ModelMetadata,
    *,
    batch_size: int = 8,
    max_slices: int = 256,
    min_body_fraction: float = 0.05,
) -> list[np.ndarray]:
    """Network inputs for calibration: real CT volumes through :func:`resunet_trt.kernels.preprocess`.

    Slices are spread evenly over each volume; slices that are almost all air (less than ``min_body_fraction`` of
    pixels above -500 HU) are skipped, they only teach the quantizer about zeros.

    Args:
        volumes: HU volumes (D, H, W), int16 or float32, in the canonical orientation; or CT volumes (objects
            with ``hu`` and ``spacing``), needed for a model with physical sampling (``pixel_mm``): their slices
            are then sampled as inference samples them, cropped or padded to ``plane_size`` around the centre so
            that every batch has one shape.
        metadata: gives plane size, context, window and physical sampling.
        batch_size: slices per batch, >= 1.
        max_slices: at most this many slices in all, shared equally between volumes.
        min_body_fraction: in [0, 1).

    Returns:
        float32 batches (n, K, h, w).

    Raises:
        ValueError: on bad arguments, a volume that is not 3-D, or no usable slice.
    """
    from . import kernels

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_slices < 1:
        raise ValueError(f"max_slices must be >= 1, got {max_slices}")
    if not 0.0 <= min_body_fraction < 1.0:
        raise ValueError(f"min_body_fraction must be in [0, 1), got {min_body_fraction}")
    items = list(volumes)
    spacings = [tuple(float(s) for s in v.spacing) if hasattr(v, "hu") else None for v in items]
    vols = [np.asarray(v.hu if hasattr(v, "hu") else v) for v in items]
    if not vols:
        raise ValueError("volumes must hold at least one CT volume, got none")
    for i, v in enumerate(vols):
        if v.ndim != 3:
            raise ValueError(f"volumes[{i}] must be (D, H, W), got shape {v.shape}")
    per_volume = max(1, max_slices // len(vols))
    slices: list[np.ndarray] = []
    for v, spacing in zip(vols, spacings):
        v = v if v.dtype in (np.int16, np.float32) else v.astype(np.float32)
        body = (v > -500).mean(axis=(1, 2)) >= min_body_fraction
        candidates = np.flatnonzero(body)
        if candidates.size == 0:
            continue
        take = candidates[
            np.unique(np.linspace(0, candidates.size - 1, min(per_volume, candidates.size)).round()).astype(
                np.int64
            )
        ]
        mapping: dict[str, Any] = {}
        if metadata.pixel_mm is not None and spacing is not None:
            (h, w), (dz, dy, dx) = metadata.plane_size, spacing
            step = (metadata.pixel_mm / dy, metadata.pixel_mm / dx)
            mapping = {
                "step": step,
                "origin": (v.shape[1] / 2 - h / 2 * step[0], v.shape[2] / 2 - w / 2 * step[1]),
                "slice_step": 1.0 if metadata.slice_mm is None else metadata.slice_mm / dz,
            }
        net = kernels.preprocess(
            np.ascontiguousarray(v),
            window=metadata.window,
            out_size=metadata.plane_size,
            context=metadata.context,
            dtype="float32",
            **mapping,
        )
        slices.extend(np.asarray(net[i], dtype=np.float32) for i in take)
    if not slices:
        raise ValueError("no calibration slice has body in it (all volumes are air below -500 HU?)")
    stacked = np.stack(slices)
    return [np.ascontiguousarray(stacked[i : i + batch_size]) for i in range(0, len(stacked), batch_size)]


def load_calibration_volumes(data_dir: str | os.PathLike[str], *, max_volumes: int = 8) -> list[Any]:
    """CT volumes (``CTVolume``: int16 HU (D, H, W) in the canonical orientation, spacing) from a data folder, via
    :func:`resunet_trt.io.load_ct`."""
    from .io import load_ct

    return [load_ct(p) for p in find_ct_volumes(data_dir)[:max_volumes]]


class _BatchReader:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over prepared batches."""

    def __init__(self, batches: Sequence[np.ndarray], input_name: str) -> None:
        self._batches = batches
        self._input_name = input_name
        self._it: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        return None if batch is None else {self._input_name: batch}

    def rewind(self) -> None:
        self._it = iter(self._batches)

    def __len__(self) -> int:
        return len(self._batches)


def equal_batches(batches: Sequence[np.ndarray], batch_size: int) -> list[np.ndarray]:
    """The same slices, in order, in batches of one size: the largest divisor of the slice count that is at most
    ``batch_size``.

    ONNX Runtime's histogram calibrators (entropy, percentile) stack each tensor's outputs of all batches into
    one array, so a shorter last batch (33 slices in batches of 8) makes them fail with "inhomogeneous shape".

    Args:
        batches: (n_i, K, h, w) arrays.
        batch_size: the largest batch wanted, >= 1.

    Returns:
        (b, K, h, w) arrays, b the same for all, holding every slice once.
    """
    stacked = np.concatenate(list(batches)) if len(batches) > 1 else np.asarray(batches[0])
    n = len(stacked)
    size = max(d for d in range(1, min(batch_size, n) + 1) if n % d == 0)
    return [np.ascontiguousarray(stacked[i : i + size]) for i in range(0, n, size)]


def _make_reader(batches: Sequence[np.ndarray], input_name: str) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class CTSliceReader(_BatchReader, CalibrationDataReader):
        """Feeds preprocessed real-CT slices to the calibrator."""

    return CTSliceReader(batches, input_name)


def _exclude_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes to leave in float: the final Conv that produces the logits."""
    producers = {out: node for node in model.graph.node for out in node.output}
    excluded: list[str] = []
    node = producers.get(model.graph.output[0].name)
    # Walk back through shape-preserving ops to the Conv that makes the logits.
    while node is not None and node.op_type not in ("Conv", "ConvTranspose"):
        node = producers.get(node.input[0]) if node.input else None
    if node is not None and node.name:
        excluded.append(node.name)
    return excluded


def quantize_int8(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    volumes: Iterable[np.ndarray] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    method: str = "percentile",
    percentile: float = 99.999,
    max_slices: int = 48,
    batch_size: int = 8,
    keep_logits_conv_float: bool = True,
    preprocess: bool = True,
    quantize_bias: bool = False,
) -> Path:
    """Quantize the fp32 ONNX to int8 with Q/DQ nodes, calibrated on real CT slices.

    Weights: symmetric int8 per output channel. Activations: symmetric int8 per tensor (zero point 0), ranges
    from ``method`` ("entropy" or "percentile") on slices produced by :func:`resunet_trt.kernels.preprocess`.

    Args:
        source: the fp32 .onnx written by :func:`export_model` / :func:`export_onnx`.
        output: the .onnx file to write.
        volumes: HU volumes (D, H, W) in the canonical orientation to calibrate on.
        data_dir: alternatively, a folder of CT files (see :func:`resunet_trt.datasets.find_ct_volumes`).
        method: "entropy" or "percentile".
        percentile: the percentile for ``method="percentile"``, in (90, 100].
        max_slices: calibration slices in all. ONNX Runtime's histogram calibrators keep every activation of
            every calibration slice in memory before building histograms (about 60 MB per 256 x 256 slice for the
            default network), so a few dozen slices is the practical range.
        batch_size: slices per calibration batch.
        keep_logits_conv_float: leave the last convolution (the one producing the logits) in float.
        preprocess: run ``onnxruntime.quantization.quant_pre_process`` (shape inference, graph optimisation)
            first, the step ONNX Runtime recommends before static quantization (it also folds the BatchNorm that
            follows a convolution into it).
        quantize_bias: store biases as int32 behind a DequantizeLinear. Off by default: TensorRT's parser accepts
            only int8/fp8 inputs to DequantizeLinear ("only activation types allowed"), so biases stay float.

    Returns:
        The path written.

    Raises:
        ValueError: on bad arguments, or when ``source`` is not our fp32 ONNX.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise ValueError(f"method must be one of {CALIBRATION_METHODS}, got {method!r}")
    if not 90.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (90, 100], got {percentile}")
    if (volumes is None) == (data_dir is None):
        raise ValueError("give exactly one of volumes= or data_dir= for calibration")
    model = load_onnx(source)
    metadata = _require_fp32_source(model, str(source), "int8")
    vols = list(volumes) if volumes is not None else load_calibration_volumes(data_dir)  # type: ignore[arg-type]
    batches = calibration_batches(vols, metadata, batch_size=batch_size, max_slices=max_slices)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="resunet-int8-", dir=output.parent) as tmp:
        fp32_path = Path(tmp) / "fp32.onnx"
        if preprocess:
            quant_pre_process(str(source), str(fp32_path), skip_symbolic_shape=True)
        else:
            fp32_path.write_bytes(Path(source).read_bytes())
        fp32_model = load_onnx(fp32_path)
        input_name = fp32_model.graph.input[0].name
        excluded = _exclude_nodes(fp32_model) if keep_logits_conv_float else []
        q_path = Path(tmp) / "int8.onnx"
        extra_options: dict[str, Any] = {
            "ActivationSymmetric": True,
            "WeightSymmetric": True,
            "CalibMovingAverage": False,
            "QuantizeBias": quantize_bias,
        }
        if method == "percentile":
            extra_options["CalibPercentile"] = percentile
        # The calibrators print progress to stdout; keep it out of the caller's output, log it instead.
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured):
            quantize_static(
                str(fp32_path),
                str(q_path),
                _make_reader(equal_batches(batches, batch_size), input_name),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(INT8_OP_TYPES),
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded,
                calibrate_method=methods[method],
                extra_options=extra_options,
            )
        logger.debug("calibration: %s", captured.getvalue().strip())
        quantized = load_onnx(q_path)
    set_onnx_metadata(
        quantized,
        _with_precision_and_versions(
            metadata,
            "int8",
            quantizer="onnxruntime.quantization.quantize_static QDQ",
            calibration={
                "method": method,
                **({"percentile": percentile} if method == "percentile" else {}),
                "slices": int(sum(len(b) for b in batches)),
                "volumes": len(vols),
                "weights": "int8 symmetric per output channel",
                "activations": "int8 symmetric per tensor",
                "float_nodes": excluded,
            },
        ),
    )
    out = _save_onnx(quantized, output)
    logger.info(
        "wrote int8 Q/DQ ONNX to %s (%s calibration on %d slices)", out, method, sum(len(b) for b in batches)
    )
    return out


def export_all(
    checkpoint: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    volumes: Iterable[np.ndarray] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    stem: str = "model",
    fp16: bool = True,
    int8: bool = True,
    method: str = "percentile",
) -> dict[str, Path]:
    """Checkpoint -> ``{stem}.onnx`` (fp32), ``{stem}.fp16.onnx`` and ``{stem}.int8.onnx`` in ``out_dir``.

    Returns:
        ``{"fp32": path, "fp16": path, "int8": path}`` for the files written.
    """
    out = Path(out_dir)
    paths = {"fp32": export_onnx(checkpoint, out / f"{stem}.onnx")}
    if fp16:
        paths["fp16"] = convert_fp16(paths["fp32"], out / f"{stem}.fp16.onnx")
    if int8:
        paths["int8"] = quantize_int8(
            paths["fp32"], out / f"{stem}.int8.onnx", volumes=volumes, data_dir=data_dir, method=method
        )
    return paths


def build_parser() -> argparse.ArgumentParser:
    """The command line of :func:`main`."""
    parser = argparse.ArgumentParser(
        prog="python -m resunet_trt.export",
        description="Checkpoint (.pt) -> fp32, FP16 and INT8 (Q/DQ) ONNX files.",
    )
    parser.add_argument("checkpoint", help="the .pt checkpoint")
    parser.add_argument("-o", "--out-dir", required=True, help="folder for the .onnx files")
    parser.add_argument("--stem", default="model", help="file name stem (default: model)")
    parser.add_argument(
        "--calib-data", help="folder of CT volumes for INT8 calibration (needed unless --no-int8)"
    )
    parser.add_argument(
        "--method", choices=CALIBRATION_METHODS, default="percentile",
        help="INT8 activation range calibration (default: %(default)s)",
    )
    parser.add_argument("--no-fp16", action="store_true", help="skip the FP16 variant")
    parser.add_argument("--no-int8", action="store_true", help="skip the INT8 variant")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m resunet_trt.export model.pt -o out_dir --calib-data DIR``: all three ONNX variants."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.no_int8 and not args.calib_data:
        parser.error("--calib-data is required for the INT8 variant (or pass --no-int8)")
    paths = export_all(
        args.checkpoint,
        args.out_dir,
        data_dir=args.calib_data,
        stem=args.stem,
        fp16=not args.no_fp16,
        int8=not args.no_int8,
        method=args.method,
    )
    for precision, path in paths.items():
        print(f"{precision}: {path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
