"""The precision variants of an exported fp32 ONNX: FP16 (weights and activations) and INT8 (Q/DQ nodes).

Precision lives in the ONNX graph (TensorRT builds strongly typed networks; ONNX Runtime and OpenVINO run the
same files). INT8 scales are calibrated on CT slices produced by :func:`resunet_trt.kernels.preprocess`, the op
inference runs, sampled as inference samples them. Every file carries the model metadata with its precision.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .datasets import find_ct_volumes
from .files import atomic_write_bytes
from .int8_sensitivity import DEFAULT_MAX_FLOAT_NODES, DEFAULT_TARGET_AGREEMENT
from .metadata import ModelMetadata, current_versions, load_onnx, metadata_from_onnx_model, set_onnx_metadata

if TYPE_CHECKING:  # pragma: no cover
    import onnx

logger = logging.getLogger("resunet_trt.export")

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


def _quantize_static(
    fp32_path: Path,
    output: Path,
    reader: Any,
    excluded: Sequence[str],
    method: str,
    extra_options: dict[str, Any],
    cache: Path,
) -> Path:
    """One ``quantize_static`` run; the first calibrates and fills ``cache``, later ones reuse its ranges."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {"entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}
    # The calibrators print progress to stdout; keep it out of the caller's output, log it instead.
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        quantize_static(
            str(fp32_path),
            str(output),
            reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(INT8_OP_TYPES),
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(excluded),
            calibrate_method=methods[method],
            extra_options=extra_options,
            calibration_cache_path=cache,
        )
    logger.debug("calibration: %s", captured.getvalue().strip())
    return output


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
    float_nodes: str | Sequence[str] | None = "auto",
    target_agreement: float = DEFAULT_TARGET_AGREEMENT,
    max_float_nodes: int = DEFAULT_MAX_FLOAT_NODES,
) -> Path:
    """Quantize the fp32 ONNX to int8 with Q/DQ nodes, calibrated on real CT slices.

    Weights: symmetric int8 per output channel. Activations: symmetric int8 per tensor (zero point 0), ranges
    from ``method`` ("entropy" or "percentile") on slices produced by :func:`resunet_trt.kernels.preprocess`.
    Nodes left in float (mixed precision) keep float weights and float inputs; with ``float_nodes="auto"`` they are
    chosen by measured sensitivity on the calibration slices (:mod:`resunet_trt.int8_sensitivity`).

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
        float_nodes: more nodes to leave in float: ``"auto"`` (the most sensitive ones, measured on the
            calibration slices, until the worse of foreground label agreement and lowest per-class Dice against
            fp32 there reaches ``target_agreement``
            or ``max_float_nodes`` are chosen), ``"none"``/``None``, or node names (a list, or one string with
            commas).
        target_agreement: for ``"auto"``, in (0, 1].
        max_float_nodes: for ``"auto"``, >= 0.

    Returns:
        The path written.

    Raises:
        ValueError: on bad arguments (a ``float_nodes`` name that is not a node of the graph among them), or when
            ``source`` is not our fp32 ONNX.
        TypeError: when ``float_nodes`` is neither a string nor a sequence of strings.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .int8_sensitivity import (
        available_runtimes,
        candidate_groups,
        check_float_nodes,
        choose_float_nodes,
        onnx_logits,
        rank_sensitivity,
        sensitivity_record,
        worst_agreement,
    )

    if method not in CALIBRATION_METHODS:
        raise ValueError(f"method must be one of {CALIBRATION_METHODS}, got {method!r}")
    if not 90.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (90, 100], got {percentile}")
    if not 0.0 < target_agreement <= 1.0:
        raise ValueError(f"target_agreement must be in (0, 1], got {target_agreement}")
    if isinstance(max_float_nodes, bool) or not isinstance(max_float_nodes, int) or max_float_nodes < 0:
        raise ValueError(f"max_float_nodes must be an int >= 0, got {max_float_nodes!r}")
    if (volumes is None) == (data_dir is None):
        raise ValueError("give exactly one of volumes= or data_dir= for calibration")
    model = load_onnx(source)
    metadata = _require_fp32_source(model, str(source), "int8")
    check_float_nodes(float_nodes, model)  # fail on a bad name before the slow calibration
    vols = list(volumes) if volumes is not None else load_calibration_volumes(data_dir)  # type: ignore[arg-type]
    batches = calibration_batches(vols, metadata, batch_size=batch_size, max_slices=max_slices)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    extra_options: dict[str, Any] = {
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        "CalibMovingAverage": False,
        "QuantizeBias": quantize_bias,
    }
    if method == "percentile":
        extra_options["CalibPercentile"] = percentile
    auto: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="resunet-int8-", dir=output.parent) as tmp:
        fp32_path = Path(tmp) / "fp32.onnx"
        if preprocess:
            quant_pre_process(str(source), str(fp32_path), skip_symbolic_shape=True)
        else:
            fp32_path.write_bytes(Path(source).read_bytes())
        fp32_model = load_onnx(fp32_path)
        requested = check_float_nodes(float_nodes, fp32_model)
        excluded = _exclude_nodes(fp32_model) if keep_logits_conv_float else []
        reader = _make_reader(equal_batches(batches, batch_size), fp32_model.graph.input[0].name)
        cache = Path(tmp) / "calibration.json"

        def quantize(names: Sequence[str], name: str = "trial.onnx") -> Path:
            return _quantize_static(fp32_path, Path(tmp) / name, reader, names, method, extra_options, cache)

        if requested == "auto":
            reference = onnx_logits(fp32_path, batches)
            runtimes = available_runtimes()

            def evaluate(path: str | os.PathLike[str]) -> Any:
                return worst_agreement(reference, path, batches, runtimes)

            baseline = evaluate(quantize(excluded))
            ranking = rank_sensitivity(
                candidate_groups(fp32_model, excluded), quantize, evaluate, always_float=excluded, baseline=baseline
            )
            chosen, steps = choose_float_nodes(
                ranking, quantize, evaluate, always_float=excluded, target=target_agreement,
                max_nodes=max_float_nodes, baseline=baseline,
            )
            final = ([s for s in steps if s["kept"]] or [vars(baseline)])[-1]
            auto = {
                "float_nodes_rule": f"auto: most sensitive first until min(foreground label agreement, lowest "
                f"class Dice) against fp32 on the calibration slices >= {target_agreement}, at most "
                f"{max_float_nodes} nodes, the worst of {', '.join(runtimes)}",
                "full_int8": {k: round(v, 6) for k, v in vars(baseline).items()},
                "mixed": {k: round(float(final[k]), 6) for k in ("agreement", "class_dice", "kl")},
                "sensitivity": sensitivity_record(ranking),
            }
            logger.info("int8: %d nodes left in float by sensitivity: %s", len(chosen), ", ".join(chosen) or "none")
        else:
            chosen = [n for n in requested if n not in excluded]
        float_names = [*excluded, *chosen]
        quantized = load_onnx(quantize(float_names, "int8.onnx"))
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
                "float_nodes": float_names,
                **auto,
            },
        ),
    )
    out = _save_onnx(quantized, output)
    logger.info(
        "wrote int8 Q/DQ ONNX to %s (%s calibration on %d slices)", out, method, sum(len(b) for b in batches)
    )
    return out
