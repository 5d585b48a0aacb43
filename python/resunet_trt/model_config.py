"""The ResUNet's configuration and its analytic cost: torch-free, so metadata, CLIs and ``import resunet_trt`` stay
light. The torch module itself is :class:`resunet_trt.model.ResUNet`.

Architecture (``depth`` = number of 2x downsamplings, widths ``w_i = min(base_width * 2**i, max_width)``)::

    stem   conv3x3 K -> w_0
    enc_0  ResUnit(w_0 -> w_0)                 at h x w
    enc_i  ResUnit(w_{i-1} -> w_i, stride 2)   at h/2**i x w/2**i, i = 1..depth (the last is the bottleneck)
    dec_i  ConvTranspose2x2(w_{i+1} -> w_i), concat skip enc_i, ResUnit(2 w_i -> w_i), i = depth-1..0
    head   conv1x1 w_0 -> C

Both block types (:data:`BLOCKS`) have the same convolutions, so the same arithmetic.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

UPSAMPLE_MODES = ("transpose", "bilinear")
# "preact": BN-ReLU-conv residual units (the first models); "conv_bn_relu": conv-BN-ReLU units whose BatchNorm folds
# into the convolution at export, so INT8 Q/DQ convolutions fuse with their ReLU on TensorRT, OpenVINO and ONNX Runtime.
BLOCKS = ("preact", "conv_bn_relu")

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
        block: residual unit type, one of :data:`BLOCKS`; configs without it (older checkpoints) are ``"preact"``.
    """

    in_channels: int = 3
    num_classes: int = 3
    base_width: int = 8
    depth: int = 5
    max_width: int = 160
    units_per_stage: int = 1
    upsample: str = "transpose"
    block: str = "preact"

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
        if self.block not in BLOCKS:
            raise ValueError(f"ResUNetConfig.block must be one of {BLOCKS}, got {self.block!r}")

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
        from ._checks import reject_unknown_keys  # noqa: PLC0415

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




__all__ = [
    "BLOCKS",
    "DEFAULT_MODEL_NOTE",
    "UPSAMPLE_MODES",
    "ResUNetConfig",
    "check_plane_size",
    "gflops_per_slice",
]
