"""The ResUNet: a 2.5D residual U-Net for liver and liver-tumor segmentation (PyTorch).

Input is a batch of (N, K, h, w) planes, K neighbouring CT slices stacked as channels (the centre slice is the one
being segmented); output is (N, C, h, w) logits for background, liver and tumor. The architecture, its
configuration and its analytic cost live in :mod:`resunet_trt.model_config` (torch-free); this module holds the
torch classes and the checkpoint format, and imports torch.

Two residual unit types (``ResUNetConfig.block``):

* ``"conv_bn_relu"`` (:class:`ConvBnReluUnit`): ``conv3x3(stride)-BN-ReLU-conv3x3-BN`` plus a shortcut
  (``conv1x1-BN`` when channels or resolution change), then ReLU. Every BatchNorm follows a convolution, so
  :func:`fold_batchnorm` folds it into that convolution's weights at export and each convolution is followed
  directly by ReLU or Add+ReLU: the pattern INT8 engines fuse (TensorRT, OpenVINO, ONNX Runtime).
* ``"preact"`` (:class:`PreActUnit`): the pre-activation unit of He et al. (2016) used by the first models,
  ``BN-ReLU-conv3x3(stride)-BN-ReLU-conv3x3`` added to a shortcut. Its BatchNorms precede their convolutions, so they
  cannot fold; kept so older checkpoints load and run unchanged.

Every op is static (Conv, BatchNorm, ReLU, ConvTranspose, Concat, Add): no data-dependent control flow, so the
module exports to ONNX and builds as a TensorRT engine unchanged; the batch and plane dimensions may be dynamic. The
plane size must be divisible by ``2**depth``; :meth:`ResUNet.forward` checks that with a clear error (the check reads
only static shapes, so tracing and export are unaffected).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .files import atomic_write
from .metadata import ModelMetadata, current_versions
from .model_config import (
    BLOCKS,
    DEFAULT_MODEL_NOTE,
    UPSAMPLE_MODES,
    ResUNetConfig,
    check_plane_size,
    gflops_per_slice,
)

CHECKPOINT_FORMAT = "resunet_trt.checkpoint"
CHECKPOINT_VERSION = 1


def count_parameters(model: Any, *, trainable_only: bool = False) -> int:
    """Number of parameters of a torch module (BatchNorm running statistics are buffers, not counted)."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only))


class PreActUnit(nn.Module):
    """Pre-activation residual unit: BN-ReLU-conv3x3(stride)-BN-ReLU-conv3x3 + (projected) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=True)
        self.shortcut: nn.Module
        if cin != cout or stride != 1:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(torch.relu(self.bn1(x)))
        y = self.conv2(torch.relu(self.bn2(y)))
        return y + self.shortcut(x)


class ConvBnReluUnit(nn.Module):
    """Residual unit with BatchNorm after each convolution: conv-BN-ReLU-conv-BN (+ shortcut) -> ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1: nn.Module = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2: nn.Module = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module
        if cin != cout or stride != 1:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + self.shortcut(x))


# Kept for code that named the first unit type.
ResUnit = PreActUnit


class ResUNet(nn.Module):
    """The network; ``ResUNet(config)`` maps (N, K, h, w) float input to (N, num_classes, h, w) logits.

    Args:
        config: architecture; ``ResUNetConfig()`` when None.
    """

    def __init__(self, config: ResUNetConfig | None = None) -> None:
        super().__init__()
        config = ResUNetConfig() if config is None else config
        if not isinstance(config, ResUNetConfig):
            raise TypeError(f"config must be a ResUNetConfig, got {type(config).__name__}")
        self.config = config
        widths = config.widths
        post = config.block == "conv_bn_relu"
        unit_cls: type[nn.Module] = ConvBnReluUnit if post else PreActUnit
        if post:
            self.stem: nn.Module = nn.Sequential(
                nn.Conv2d(config.in_channels, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]),
                nn.ReLU(),
            )
        else:
            self.stem = nn.Conv2d(config.in_channels, widths[0], 3, padding=1, bias=True)
        self.encoder = nn.ModuleList()
        for level in range(config.depth + 1):
            units = []
            for u in range(config.units_per_stage):
                cin = (widths[0] if level == 0 else widths[level - 1]) if u == 0 else widths[level]
                stride = 2 if (u == 0 and level > 0) else 1
                units.append(unit_cls(cin, widths[level], stride))
            self.encoder.append(nn.Sequential(*units))
        self.upsamplers = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in range(config.depth - 1, -1, -1):
            if config.upsample == "transpose":
                up: nn.Module = nn.ConvTranspose2d(widths[level + 1], widths[level], 2, stride=2)
            else:
                up = nn.Sequential(
                    nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                    nn.Conv2d(widths[level + 1], widths[level], 1),
                )
            self.upsamplers.append(up)
            self.decoder.append(unit_cls(2 * widths[level], widths[level]))
        # conv_bn_relu units end in ReLU, so the head reads activations directly; preact units need BN-ReLU first.
        self.head_bn: nn.Module = nn.Identity() if post else nn.BatchNorm2d(widths[0])
        self._head_relu = not post
        self.head = nn.Conv2d(widths[0], config.num_classes, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, K, h, w) float -> (N, num_classes, h, w) logits."""
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting()):
            # shape checks on concrete tensors only: an exported graph keeps no Python branches
            if x.dim() != 4 or x.shape[1] != self.config.in_channels:
                raise ValueError(f"input must be (N, {self.config.in_channels}, h, w), got {tuple(x.shape)}")
            check_plane_size(self.config, (int(x.shape[2]), int(x.shape[3])))
        y = self.stem(x)
        skips = []
        for stage in self.encoder:
            y = stage(y)
            skips.append(y)
        y = skips.pop()
        for up, unit in zip(self.upsamplers, self.decoder):
            y = unit(torch.cat([up(y), skips.pop()], dim=1))
        y = self.head_bn(y)
        if self._head_relu:
            y = torch.relu(y)
        return self.head(y)


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A convolution equal to ``bn(conv(x))`` in eval mode (BatchNorm's running statistics folded in)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    return fuse_conv_bn_eval(conv.eval(), bn.eval())


def fold_batchnorm(model: ResUNet) -> ResUNet:
    """An eval-mode copy of a ``conv_bn_relu`` ResUNet with every BatchNorm folded into the convolution before it.

    The copy computes the same function as ``model.eval()`` (up to float rounding) with no BatchNorm left: what the
    ONNX export writes, so that INT8 Q/DQ sees conv(+bias)-ReLU. A ``preact`` model is returned as an eval-mode copy
    unchanged (its BatchNorms precede their convolutions and cannot fold).
    """
    if not isinstance(model, ResUNet):
        raise TypeError(f"model must be a ResUNet, got {type(model).__name__}")
    folded = copy.deepcopy(model).eval()
    if folded.config.block != "conv_bn_relu":
        return folded
    stem = folded.stem
    assert isinstance(stem, nn.Sequential)  # noqa: S101 - built so above for conv_bn_relu
    folded.stem = nn.Sequential(_fold(stem[0], stem[1]), stem[2])
    for unit in folded.modules():
        if isinstance(unit, ConvBnReluUnit):
            unit.conv1 = _fold(unit.conv1, unit.bn1)
            unit.bn1 = nn.Identity()
            unit.conv2 = _fold(unit.conv2, unit.bn2)
            unit.bn2 = nn.Identity()
            if isinstance(unit.shortcut, nn.Sequential):
                unit.shortcut = _fold(unit.shortcut[0], unit.shortcut[1])
    return folded


def is_resunet(obj: Any) -> bool:
    """True when ``obj`` is a :class:`ResUNet` module."""
    return isinstance(obj, ResUNet)


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    metadata: ModelMetadata,
    *,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write an inference checkpoint atomically (temporary file in the same folder, then rename).

    The file holds only tensors and plain containers, so :func:`load_checkpoint` reads it with
    ``torch.load(weights_only=True)``: ``{"format", "version", "state_dict", "metadata", "extra"}``.

    Args:
        path: destination ``.pt`` file.
        model: a module built by :func:`ResUNet` (a DDP/compiled wrapper is unwrapped).
        metadata: how the model is fed; its ``model_config`` is replaced by the model's own config, its
            ``context`` must equal the config's ``in_channels``.
        extra: JSON-like additions (training summary, metrics); stored beside the metadata.

    Returns:
        the path written.
    """
    inner = getattr(model, "module", model)
    inner = getattr(inner, "_orig_mod", inner)
    if not is_resunet(inner):
        raise TypeError(f"model must be a ResUNet module, got {type(model).__name__}")
    if not isinstance(metadata, ModelMetadata):
        raise TypeError(f"metadata must be a ModelMetadata, got {type(metadata).__name__}")
    config: ResUNetConfig = inner.config
    if metadata.context != config.in_channels:
        raise ValueError(
            f"metadata.context ({metadata.context}) must equal the model's in_channels ({config.in_channels})"
        )
    if metadata.num_classes != config.num_classes:
        raise ValueError(
            f"metadata.class_names has {metadata.num_classes} entries, the model has {config.num_classes} outputs"
        )
    check_plane_size(config, metadata.plane_size)
    meta = metadata.to_dict()
    meta["model_config"] = config.to_dict()
    versions = current_versions()
    versions.update(meta.get("versions") or {})
    meta["versions"] = versions
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "state_dict": {k: v.detach().cpu().clone() for k, v in inner.state_dict().items()},
        "metadata": meta,
        "extra": dict(extra or {}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(
    path: str | os.PathLike[str], *, map_location: Any = "cpu"
) -> tuple[nn.Module, ModelMetadata]:
    """Read a checkpoint written by :func:`save_checkpoint` (``torch.load(weights_only=True)``).

    Args:
        path: the ``.pt`` file.
        map_location: passed to ``torch.load``.

    Returns:
        (model in eval mode, metadata). The checkpoint's ``extra`` dict is merged into ``metadata.extra``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable resunet-trt checkpoint ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a resunet-trt checkpoint (missing format tag {CHECKPOINT_FORMAT!r})")
    if int(payload.get("version", 0)) > CHECKPOINT_VERSION:
        raise ValueError(
            f"{path}: checkpoint version {payload['version']} is newer than supported ({CHECKPOINT_VERSION})"
        )
    meta_dict = dict(payload["metadata"])
    extra = dict(meta_dict.get("extra") or {})
    extra.update(payload.get("extra") or {})
    meta_dict["extra"] = extra
    metadata = ModelMetadata.from_dict(meta_dict, source=str(path))
    config = ResUNetConfig.from_dict(metadata.model_config)
    model = ResUNet(config)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, metadata


__all__ = [
    "BLOCKS",
    "DEFAULT_MODEL_NOTE",
    "ConvBnReluUnit",
    "PreActUnit",
    "ResUNet",
    "ResUNetConfig",
    "check_plane_size",
    "count_parameters",
    "fold_batchnorm",
    "gflops_per_slice",
    "load_checkpoint",
    "save_checkpoint",
]

