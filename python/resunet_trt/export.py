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
  DequantizeLinear), Concat and Resize are left in float, the final 1x1 convolution to logits stays float, and
  so do the nodes whose quantization measurably hurts the labels on the calibration slices
  (``float_nodes="auto"``, see :mod:`resunet_trt.int8_sensitivity`).

The FP16 and INT8 variants are made in :mod:`resunet_trt.onnx_precision` (importable from here). All files are
written atomically (temporary file in the target directory, then ``os.replace``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

# The ONNX metadata functions (metadata.py) and the precision variants (onnx_precision.py) stay importable here.
from .metadata import (  # noqa: F401
    ONNX_METADATA_KEY,
    ModelMetadata,
    current_versions,
    load_onnx,
    metadata_from_onnx_model,
    read_onnx_metadata,
    set_onnx_metadata,
)
from .onnx_precision import (  # noqa: F401
    CALIBRATION_METHODS,
    INT8_OP_TYPES,
    _save_onnx,
    _with_precision_and_versions,
    calibration_batches,
    convert_fp16,
    equal_batches,
    find_ct_volumes,
    load_calibration_volumes,
    quantize_int8,
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
    int8_float_nodes: str | Sequence[str] | None = "auto",
) -> dict[str, Path]:
    """Checkpoint -> ``{stem}.onnx`` (fp32), ``{stem}.fp16.onnx`` and ``{stem}.int8.onnx`` in ``out_dir``.

    ``int8_float_nodes`` is :func:`quantize_int8`'s ``float_nodes``: ``"auto"`` (by measured sensitivity),
    ``"none"``, or node names.

    Returns:
        ``{"fp32": path, "fp16": path, "int8": path}`` for the files written.
    """
    out = Path(out_dir)
    paths = {"fp32": export_onnx(checkpoint, out / f"{stem}.onnx")}
    if fp16:
        paths["fp16"] = convert_fp16(paths["fp32"], out / f"{stem}.fp16.onnx")
    if int8:
        paths["int8"] = quantize_int8(
            paths["fp32"],
            out / f"{stem}.int8.onnx",
            volumes=volumes,
            data_dir=data_dir,
            method=method,
            float_nodes=int8_float_nodes,
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
    parser.add_argument(
        "--int8-float-nodes", default="auto", metavar="auto|none|NAME,NAME",
        help="INT8 nodes left in float: auto (the most sensitive ones, measured on the calibration slices), "
        "none, or node names separated by commas (default: %(default)s)",
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
        int8_float_nodes=args.int8_float_nodes,
    )
    for precision, path in paths.items():
        print(f"{precision}: {path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
