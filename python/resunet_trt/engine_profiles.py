"""What a TensorRT engine is built for, as plain Python: version rules, optimisation profiles, batch plans.

Tested without TensorRT. The batch profile covers the batch dimension; models with ``pixel_mm`` also get a plane
range (:class:`PlaneProfile`), since their input plane grows with the field of view.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .metadata import ModelMetadata

MIN_TENSORRT_MAJOR = 10


def parse_version(version: str) -> tuple[int, ...]:
    """``"10.13.0.35"`` -> ``(10, 13, 0, 35)``; a suffix such as ``"11.0.0rc1"`` keeps its leading digits.

    Raises:
        ValueError: when ``version`` does not start with ``major.minor``.
    """
    if not isinstance(version, str):
        raise TypeError(f"version must be a str, got {type(version).__name__}")
    parts: list[int] = []
    for piece in version.strip().split("."):
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        parts.append(int(digits))
        if len(digits) != len(piece):
            break
    if len(parts) < 2:
        raise ValueError(f"version must look like 'major.minor[.patch[.build]]', got {version!r}")
    return tuple(parts)


def same_tensorrt_release(a: str, b: str) -> bool:
    """True when two TensorRT versions agree on major.minor.patch (the build number may differ)."""
    pa, pb = parse_version(a), parse_version(b)
    return (pa + (0, 0))[:3] == (pb + (0, 0))[:3]


def network_creation_flags(tensorrt_version: str, strongly_typed_bit: int) -> int:
    """Flags for ``Builder.create_network``: strongly typed on every supported TensorRT.

    TensorRT 11 networks are always strongly typed (``create_network(0)``); TensorRT 10 needs
    ``1 << NetworkDefinitionCreationFlag.STRONGLY_TYPED``.

    Args:
        tensorrt_version: ``tensorrt.__version__``.
        strongly_typed_bit: ``int(tensorrt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)``.

    Raises:
        ValueError: for TensorRT older than 10 (its weakly typed INT8 path is not supported here).
    """
    major = parse_version(tensorrt_version)[0]
    if major < MIN_TENSORRT_MAJOR:
        raise ValueError(
            f"TensorRT >= {MIN_TENSORRT_MAJOR} is needed (strongly typed networks), found {tensorrt_version}"
        )
    if major >= 11:
        return 0
    return 1 << int(strongly_typed_bit)


@dataclass(frozen=True)
class BatchProfile:
    """The batch range of the one optimisation profile: ``1 <= min <= opt <= max``."""

    min: int = 1
    opt: int = 8
    max: int = 32

    def __post_init__(self) -> None:
        for name in ("min", "opt", "max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name}_batch must be an int, got {type(value).__name__}")
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(
                f"batch sizes must satisfy 1 <= min_batch <= opt_batch <= max_batch, "
                f"got min={self.min}, opt={self.opt}, max={self.max}"
            )

    def shapes(self, metadata: ModelMetadata) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) input shapes (N, K, h, w) for ``metadata``."""
        k = metadata.context
        h, w = metadata.plane_size
        return (self.min, k, h, w), (self.opt, k, h, w), (self.max, k, h, w)

    def to_dict(self) -> dict[str, int]:
        return {"min": self.min, "opt": self.opt, "max": self.max}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BatchProfile:
        return cls(min=int(d["min"]), opt=int(d["opt"]), max=int(d["max"]))


#: Plane sides of the optimisation profile for an ONNX with a dynamic plane (models with ``pixel_mm``): the typical
#: abdominal field of view at about 1.2 mm per pixel needs 288, and 512 covers 60 cm at that pixel size.
OPT_PLANE_SIDE = 288
MAX_PLANE_SIDE = 512


@dataclass(frozen=True)
class PlaneProfile:
    """The (h, w) range of the optimisation profile: fixed for most models, a range for a dynamic ONNX plane.

    Attributes:
        min: smallest (h, w).
        opt: the plane TensorRT tunes for.
        max: largest (h, w); a volume needing more is refused by the backend with the reason.
    """

    min: tuple[int, int]
    opt: tuple[int, int]
    max: tuple[int, int]

    def __post_init__(self) -> None:
        for name in ("min", "opt", "max"):
            value = getattr(self, name)
            if (
                not isinstance(value, tuple)
                or len(value) != 2
                or any(isinstance(v, bool) or not isinstance(v, int) for v in value)
            ):
                raise TypeError(f"plane {name} must be a pair of ints (h, w), got {value!r}")
        for axis in range(2):
            if not 1 <= self.min[axis] <= self.opt[axis] <= self.max[axis]:
                raise ValueError(
                    f"plane sizes must satisfy 1 <= min <= opt <= max on each axis, got min={self.min}, "
                    f"opt={self.opt}, max={self.max}"
                )

    @property
    def dynamic(self) -> bool:
        return self.min != self.max

    def covers(self, hw: tuple[int, int]) -> bool:
        return all(self.min[a] <= hw[a] <= self.max[a] for a in range(2))

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PlaneProfile:
        def pair(v: Any) -> tuple[int, int]:
            return (int(v[0]), int(v[1]))

        return cls(min=pair(d["min"]), opt=pair(d["opt"]), max=pair(d["max"]))

    @classmethod
    def fixed(cls, hw: tuple[int, int]) -> PlaneProfile:
        h, w = int(hw[0]), int(hw[1])
        return cls(min=(h, w), opt=(h, w), max=(h, w))

    @classmethod
    def for_model(
        cls, metadata: ModelMetadata, *, dynamic: bool, max_side: int = MAX_PLANE_SIDE
    ) -> PlaneProfile:
        """The profile for a model: its ``plane_size`` when the ONNX plane is fixed; for a dynamic plane, from the
        smallest plane :func:`resunet_trt.kernels.plane_mapping` gives (``min(plane_size)`` rounded up to the
        network's divisor) through :data:`OPT_PLANE_SIDE` to ``max_side`` (rounded down to the divisor)."""
        if not dynamic:
            return cls.fixed(metadata.plane_size)
        divisor = plane_divisor(metadata)
        smallest = -(-min(metadata.plane_size) // divisor) * divisor
        largest = max(smallest, max_side // divisor * divisor)
        opt = min(largest, max(smallest, -(-OPT_PLANE_SIDE // divisor) * divisor))
        return cls(min=(smallest, smallest), opt=(opt, opt), max=(largest, largest))


def plane_divisor(metadata: ModelMetadata) -> int:
    """The multiple a dynamic plane side keeps: ``2**depth`` of the ResUNet (32 when the metadata has no depth)."""
    return metadata.plane_divisor


def profile_shapes(
    batch: BatchProfile, plane: PlaneProfile, context: int
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) input shapes (N, K, h, w) of the one optimisation profile."""
    return (
        (batch.min, context, *plane.min),
        (batch.opt, context, *plane.opt),
        (batch.max, context, *plane.max),
    )


@dataclass(frozen=True)
class Enqueue:
    """One ``execute_async_v3`` of a batch: samples ``[start, stop)``, run as a batch of ``run_batch``.

    ``run_batch > stop - start`` means zero padding up to the profile's minimum batch.
    """

    start: int
    stop: int
    run_batch: int

    @property
    def padded(self) -> bool:
        return self.run_batch > self.stop - self.start


def plan_enqueues(n: int, min_batch: int, max_batch: int) -> list[Enqueue]:
    """How a batch of ``n`` samples runs on a profile of batch ``min_batch..max_batch``.

    Chunks of at most ``max_batch`` in order; a chunk below ``min_batch`` (only the last one can be) is padded to
    ``min_batch``.

    Raises:
        ValueError: for ``n < 0`` or not ``1 <= min_batch <= max_batch``.
    """
    if not 1 <= min_batch <= max_batch:
        raise ValueError(f"the profile must satisfy 1 <= min_batch <= max_batch, got {min_batch}..{max_batch}")
    return [Enqueue(s, e, max(e - s, min_batch)) for s, e in split_batches(n, max_batch)]


def split_batches(n: int, max_batch: int) -> list[tuple[int, int]]:
    """``[start, stop)`` chunks of ``range(n)`` no longer than ``max_batch`` (for batches beyond the profile)."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return [(s, min(s + max_batch, n)) for s in range(0, n, max_batch)]
