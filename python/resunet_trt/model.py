"""The ResUNet: a 2.5D residual U-Net for liver and liver-tumor segmentation.

Input is a batch of (N, K, h, w) planes, K neighbouring CT slices stacked as channels (the centre slice is the one
being segmented); output is (N, C, h, w) logits for background, liver and tumor.

Architecture (``depth`` = number of 2x downsamplings, widths ``w_i = min(base_width * 2**i, max_width)``)::

    stem   conv3x3 K -> w_0
    enc_0  ResUnit(w_0 -> w_0)                 at h x w
    enc_i  ResUnit(w_{i-1} -> w_i, stride 2)   at h/2**i x w/2**i, i = 1..depth (the last is the bottleneck)
    dec_i  ConvTranspose2x2(w_{i+1} -> w_i), concat skip enc_i, ResUnit(2 w_i -> w_i), i = depth-1..0
    head   BN-ReLU-conv1x1 w_0 -> C

A ResUnit is the pre-activation residual unit of He et al. (2016), as used by Zhang et al.'s ResUNet (2018):
``BN-ReLU-conv3x3(stride) -> BN-ReLU-conv3x3`` added to a shortcut that is a 1x1 convolution (with the same stride)
whenever channels or resolution change, the identity otherwise.

Every op is static (Conv, BatchNorm, ReLU, ConvTranspose, Concat, Add): no data-dependent control flow, so the
module exports to ONNX and builds as a TensorRT engine unchanged; the batch dimension may be dynamic. The plane
size must be divisible by ``2**depth``; :meth:`ResUNet.forward` checks that with a clear error (the check reads only
static shapes, so tracing and export are unaffected).

Default configuration (``ResUNetConfig()``: K = 3, widths 8-16-32-64-128-160, depth 5, one unit per stage),
computed by :func:`count_parameters` and :func:`gflops_per_slice`: see :data:`DEFAULT_MODEL_NOTE`.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .metadata import ModelMetadata, current_versions

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    ResUNet: type[nn.Module]

CHECKPOINT_FORMAT = "resunet_trt.checkpoint"
CHECKPOINT_VERSION = 1
UPSAMPLE_MODES = ("transpose", "bilinear")

DEFAULT_MODEL_NOTE = (
    "ResUNetConfig() (K=3, widths 8-16-32-64-128-160, depth 5): 1,503,315 parameters, 2.00 GFLOPs per 256x256 "
    "slice (1.00 G multiply-accumulates of the convolutions, counted analytically by gflops_per_slice)."
)


@dataclass(frozen=True)
class ResUNetConfig:
    """Constructor arguments of :class:`ResUNet`; travels with the weights as ``ModelMetadata.model_config``.

    Attributes:
        in_channels: K, the number of neighbouring slices stacked as input channels (the context).
        num_classes: output channels (background, liver, tumor).
        base_width: channels of the full-resolution stage.
        depth: number of 2x downsamplings; the plane size must be divisible by ``2**depth``.
        max_width: cap on the channels of the deeper stages.
        units_per_stage: residual units per encoder stage (the first one of a stage downsamples).
        upsample: ``"transpose"`` (ConvTranspose 2x2 stride 2) or ``"bilinear"`` (Upsample x2 + conv 1x1).
    """

    in_channels: int = 3
    num_classes: int = 3
    base_width: int = 8
    depth: int = 5
    max_width: int = 160
    units_per_stage: int = 1
    upsample: str = "transpose"

    def __post_init__(self) -> None:
        for name in ("in_channels", "num_classes", "base_width", "depth", "max_width", "units_per_stage"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"ResUNetConfig.{name} must be an int, got {type(value).__name__}")
        if self.in_channels < 1:
            raise ValueError(f"ResUNetConfig.in_channels must be >= 1, got {self.in_channels}")
        if self.num_classes < 2:
            raise ValueError(f"ResUNetConfig.num_classes must be >= 2, got {self.num_classes}")
        if self.base_width < 1:
            raise ValueError(f"ResUNetConfig.base_width must be >= 1, got {self.base_width}")
        if not 1 <= self.depth <= 8:
            raise ValueError(f"ResUNetConfig.depth must be in 1..8, got {self.depth}")
        if self.max_width < self.base_width:
            raise ValueError(
                f"ResUNetConfig.max_width must be >= base_width ({self.base_width}), got {self.max_width}"
            )
        if self.units_per_stage < 1:
            raise ValueError(f"ResUNetConfig.units_per_stage must be >= 1, got {self.units_per_stage}")
        if self.upsample not in UPSAMPLE_MODES:
            raise ValueError(f"ResUNetConfig.upsample must be one of {UPSAMPLE_MODES}, got {self.upsample!r}")

    @property
    def widths(self) -> tuple[int, ...]:
        """Channels of stages 0..depth."""
        return tuple(min(self.base_width * 2**i, self.max_width) for i in range(self.depth + 1))

    @property
    def divisor(self) -> int:
        """The plane height and width must be multiples of this (``2**depth``)."""
        return 2**self.depth

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ResUNetConfig:
        """Build from a dict; unknown keys are an error (a config from a newer version must not load silently)."""
        from ._checks import reject_unknown_keys

        reject_unknown_keys(d, {f.name for f in fields(cls)}, "ResUNetConfig")
        return cls(**d)


def check_plane_size(config: ResUNetConfig, plane_size: tuple[int, int]) -> None:
    """Raise ValueError unless both plane dimensions are positive multiples of ``2**depth``."""
    h, w = plane_size
    k = config.divisor
    if h <= 0 or w <= 0 or h % k or w % k:
        raise ValueError(
            f"plane size (h, w) must be positive multiples of 2**depth = {k} for depth {config.depth}, "
            f"got ({h}, {w})"
        )


def _conv_out(size: int, stride: int) -> int:
    # 3x3 conv, padding 1 and 1x1 conv, padding 0 give the same output size for a given stride.
    return (size - 1) // stride + 1


def gflops_per_slice(config: ResUNetConfig, plane_size: tuple[int, int] = (256, 256)) -> float:
    """Analytic GFLOPs of one forward pass on one (K, h, w) input: 2 x the multiply-accumulates of every
    convolution and transposed convolution (BatchNorm, ReLU, additions and concatenation are not counted; they are
    memory-bound and well under 1% of the arithmetic).

    Counted independently of the torch module, from the architecture described in the module docstring.

    Args:
        config: the network configuration.
        plane_size: (h, w) of the input plane; must be divisible by ``2**depth``.

    Returns:
        GFLOPs (1e9 floating-point operations) per slice.
    """
    check_plane_size(config, plane_size)
    h, w = plane_size
    widths = config.widths
    macs = 0

    def conv(cin: int, cout: int, k: int, hh: int, ww: int) -> int:
        return cin * cout * k * k * hh * ww

    def unit(cin: int, cout: int, stride: int, hh: int, ww: int) -> tuple[int, int, int]:
        oh, ow = _conv_out(hh, stride), _conv_out(ww, stride)
        n = conv(cin, cout, 3, oh, ow) + conv(cout, cout, 3, oh, ow)
        if cin != cout or stride != 1:
            n += conv(cin, cout, 1, oh, ow)
        return n, oh, ow

    macs += conv(config.in_channels, widths[0], 3, h, w)
    sizes = []
    hh, ww = h, w
    for level in range(config.depth + 1):
        cin = widths[0] if level == 0 else widths[level - 1]
        for u in range(config.units_per_stage):
            n, hh, ww = unit(cin if u == 0 else widths[level], widths[level], 2 if (u == 0 and level) else 1, hh, ww)
            macs += n
        sizes.append((hh, ww))
    for level in range(config.depth - 1, -1, -1):
        sh, sw = sizes[level]
        if config.upsample == "transpose":
            # each input pixel feeds a 2x2 output patch: cin*cout*4 MACs per input pixel
            macs += widths[level + 1] * widths[level] * 4 * sizes[level + 1][0] * sizes[level + 1][1]
        else:
            macs += conv(widths[level + 1], widths[level], 1, sh, sw)
        n, _, _ = unit(2 * widths[level], widths[level], 1, sh, sw)
        macs += n
    macs += conv(widths[0], config.num_classes, 1, h, w)
    return 2.0 * macs / 1e9


def count_parameters(model: Any, *, trainable_only: bool = False) -> int:
    """Number of parameters of a torch module (BatchNorm running statistics are buffers, not counted)."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only))


def _build_module_classes() -> tuple[type, type]:
    """Define the torch classes on first use, so that importing this module does not import torch."""
    import torch
    from torch import nn

    class ResUnit(nn.Module):
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

    class ResUNet(nn.Module):
        """The network; ``ResUNet(config)`` maps (N, K, h, w) float input to (N, num_classes, h, w) logits.

        Args:
            config: architecture; ``ResUNetConfig()`` (the default model) when None.
        """

        def __init__(self, config: ResUNetConfig | None = None) -> None:
            super().__init__()
            config = ResUNetConfig() if config is None else config
            if not isinstance(config, ResUNetConfig):
                raise TypeError(f"config must be a ResUNetConfig, got {type(config).__name__}")
            self.config = config
            widths = config.widths
            self.stem = nn.Conv2d(config.in_channels, widths[0], 3, padding=1, bias=True)
            self.encoder = nn.ModuleList()
            for level in range(config.depth + 1):
                units = []
                for u in range(config.units_per_stage):
                    cin = (widths[0] if level == 0 else widths[level - 1]) if u == 0 else widths[level]
                    stride = 2 if (u == 0 and level > 0) else 1
                    units.append(ResUnit(cin, widths[level], stride))
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
                self.decoder.append(ResUnit(2 * widths[level], widths[level]))
            self.head_bn = nn.BatchNorm2d(widths[0])
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
                    raise ValueError(
                        f"input must be (N, {self.config.in_channels}, h, w), got {tuple(x.shape)}"
                    )
                check_plane_size(self.config, (int(x.shape[2]), int(x.shape[3])))
            y = self.stem(x)
            skips = []
            for stage in self.encoder:
                y = stage(y)
                skips.append(y)
            y = skips.pop()
            for up, unit in zip(self.upsamplers, self.decoder):
                y = unit(torch.cat([up(y), skips.pop()], dim=1))
            return self.head(torch.relu(self.head_bn(y)))

    ResUNet.__module__ = __name__
    ResUnit.__module__ = __name__
    return ResUnit, ResUNet


_CLASSES: tuple[type, type] | None = None


def _classes() -> tuple[type, type]:
    global _CLASSES
    if _CLASSES is None:
        _CLASSES = _build_module_classes()
    return _CLASSES


def __getattr__(name: str) -> Any:
    # ResUNet and ResUnit are torch classes built on first access, so `import resunet_trt.model` stays torch-free.
    if name == "ResUNet":
        return _classes()[1]
    if name == "ResUnit":
        return _classes()[0]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_resunet(obj: Any) -> bool:
    """True when ``obj`` is a :class:`ResUNet` module."""
    return isinstance(obj, _classes()[1])


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
    import torch

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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a model file is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
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
    import torch

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
    model = _classes()[1](config)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, metadata


__all__ = [
    "DEFAULT_MODEL_NOTE",
    "ResUNet",
    "ResUNetConfig",
    "check_plane_size",
    "count_parameters",
    "gflops_per_slice",
    "load_checkpoint",
    "save_checkpoint",
]

