"""Model metadata: the one description every artifact (.pt, .onnx, .plan sidecar) carries.

It says how the network must be fed (plane size, context slices, HU window, normalisation) and what it
returns (class names), so that a model is never run on inputs it was not trained for.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:  # pragma: no cover
    import onnx

CLASS_NAMES = ("background", "liver", "tumor")
NORMALISATIONS = ("window01",)
PRECISIONS = ("fp32", "fp16", "int8")
# 2: optional physical sampling (pixel_mm, slice_mm); schema-1 artifacts load with both None.
SCHEMA_VERSION = 2
ONNX_METADATA_KEY = "resunet_trt"


@dataclass(frozen=True)
class ModelMetadata:
    """How a model is fed and what it returns.

    Attributes:
        plane_size: (h, w) of the network input plane.
        context: K, the number of neighbouring slices stacked as channels (odd).
        window: (lo, hi) HU window; voxels are clipped to it and scaled to [0, 1].
        normalisation: how windowed HU become network input; only ``"window01"``.
        class_names: output channel names, background first.
        precision: ``"fp32"``, ``"fp16"`` or ``"int8"``.
        model_config: the constructor arguments of the network (width, depth...).
        versions: library versions at the time the artifact was written.
        extra: free-form additions (training summary, metrics, ...), JSON-serialisable.
        pixel_mm: in-plane size in mm of one network-input pixel. When set, every volume is resampled to it (the
            plane grows beyond ``plane_size`` for a large field of view), so 0.6 mm and 1 mm scans look alike;
            None (older models) resizes the whole plane to ``plane_size`` whatever the spacing.
        slice_mm: distance in mm between the K context slices (interpolated between the volume's slices). None
            (older models) takes the volume's neighbouring slices, whatever their spacing.
    """

    plane_size: tuple[int, int] = (256, 256)
    context: int = 3
    window: tuple[float, float] = (-200.0, 250.0)
    normalisation: str = "window01"
    class_names: tuple[str, ...] = CLASS_NAMES
    precision: str = "fp32"
    model_config: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    schema: int = SCHEMA_VERSION
    pixel_mm: float | None = None
    slice_mm: float | None = None

    def __post_init__(self) -> None:
        validate(self)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def plane_divisor(self) -> int:
        """Network plane sides are multiples of this: ``2**depth`` of the ResUNet (32 when the config has no depth)."""
        depth = self.model_config.get("depth") if isinstance(self.model_config, dict) else None
        return 2 ** int(depth) if depth else 32

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["plane_size"] = list(self.plane_size)
        d["window"] = list(self.window)
        d["class_names"] = list(self.class_names)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "metadata") -> ModelMetadata:
        """Build from a dict, with an error naming ``source`` when fields are missing or wrong."""
        schema = checked_record(
            d, ("plane_size", "context", "window", "class_names"), newest=SCHEMA_VERSION, what="model metadata",
            source=source,
        )
        try:
            return cls(
                plane_size=(int(d["plane_size"][0]), int(d["plane_size"][1])),
                context=int(d["context"]),
                window=(float(d["window"][0]), float(d["window"][1])),
                normalisation=str(d.get("normalisation", "window01")),
                class_names=tuple(str(c) for c in d["class_names"]),
                precision=str(d.get("precision", "fp32")),
                model_config=dict(d.get("model_config", {})),
                versions={str(k): str(v) for k, v in dict(d.get("versions", {})).items()},
                extra=dict(d.get("extra", {})),
                schema=schema,
                pixel_mm=_optional_mm(d.get("pixel_mm")),
                slice_mm=_optional_mm(d.get("slice_mm")),
            )
        except (TypeError, IndexError, KeyError) as exc:
            raise ValueError(f"{source}: malformed model metadata ({exc})") from exc

    @classmethod
    def from_json(cls, text: str, *, source: str = "metadata") -> ModelMetadata:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{source}: model metadata is not valid JSON ({exc})") from exc
        return cls.from_dict(d, source=source)

    def with_precision(self, precision: str) -> ModelMetadata:
        """A copy with another precision (export variants)."""
        d = self.to_dict()
        d["precision"] = precision
        return ModelMetadata.from_dict(d)

    def check_compatible(self, other: ModelMetadata, *, what: str = "model") -> None:
        """Raise ValueError when ``other`` would be fed differently from ``self``."""
        for key in ("plane_size", "context", "window", "normalisation", "class_names", "pixel_mm", "slice_mm"):
            a, b = getattr(self, key), getattr(other, key)
            if a != b:
                raise ValueError(f"{what}: {key} differs ({a!r} != {b!r})")


def _optional_mm(value: Any) -> float | None:
    return None if value is None else float(value)


def validate(m: ModelMetadata) -> None:
    """Check field values; raise ValueError naming the field."""
    for name in ("pixel_mm", "slice_mm"):
        v = getattr(m, name)
        if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 < v <= 100.0):
            raise ValueError(f"{name} must be None or a positive size in mm (at most 100), got {v!r}")
    h, w = m.plane_size
    if h <= 0 or w <= 0:
        raise ValueError(f"plane_size must be positive, got {m.plane_size}")
    if m.context < 1 or m.context % 2 == 0:
        raise ValueError(f"context must be an odd number >= 1, got {m.context}")
    lo, hi = m.window
    if not lo < hi:
        raise ValueError(f"window must be (lo, hi) with lo < hi, got {m.window}")
    if m.normalisation not in NORMALISATIONS:
        raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {m.normalisation!r}")
    if m.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {m.precision!r}")
    if len(m.class_names) < 2:
        raise ValueError(f"class_names needs at least 2 entries, got {m.class_names}")



def checked_record(d: Any, required: tuple[str, ...], *, newest: int, what: str, source: str) -> int:
    """Check a record read from a file (metadata, engine sidecar) and return its schema version.

    Args:
        d: the parsed JSON.
        required: keys it must hold.
        newest: the newest schema this version of resunet-trt reads.
        what: what the record is, for the messages ("model metadata").
        source: where it was read from, for the messages.

    Raises:
        ValueError: not a JSON object, a required key missing, or a schema newer than ``newest``.
    """
    if not isinstance(d, dict):
        # The wrong shape of a file's content, not a wrong argument type: ValueError like other bad content.
        raise ValueError(f"{source}: {what} must be a JSON object, got {type(d).__name__}")  # noqa: TRY004
    missing = [k for k in required if k not in d]
    if missing:
        raise ValueError(f"{source}: {what} lacks {', '.join(missing)}")
    schema = int(d.get("schema", newest))
    if schema > newest:
        raise ValueError(
            f"{source}: {what} schema {schema} is newer than this resunet-trt understands ({newest}); upgrade "
            "resunet-trt"
        )
    return schema


def current_versions() -> dict[str, str]:
    """Versions worth recording in an artifact (only the libraries already imported, to stay cheap)."""
    import sys

    out = {"resunet_trt": __version__, "python": sys.version.split()[0]}
    for name in ("numpy", "torch", "onnx", "onnxruntime", "tensorrt"):
        mod = sys.modules.get(name)
        if mod is not None:
            out[name] = str(getattr(mod, "__version__", "unknown"))
    return out


# --------------------------------------------------------------------------------------------------------------
# Metadata in an ONNX file (onnx is imported only when a file is read)
# --------------------------------------------------------------------------------------------------------------


def set_onnx_metadata(model: onnx.ModelProto, metadata: ModelMetadata) -> None:
    """Store ``metadata`` as JSON in ``model.metadata_props`` (replacing an earlier entry), in place."""
    kept = [p for p in model.metadata_props if p.key != ONNX_METADATA_KEY]
    del model.metadata_props[:]
    for prop in kept:
        model.metadata_props.add(key=prop.key, value=prop.value)
    model.metadata_props.add(key=ONNX_METADATA_KEY, value=metadata.to_json())


def metadata_from_onnx_model(model: onnx.ModelProto, *, source: str = "ONNX model") -> ModelMetadata:
    """The :class:`ModelMetadata` stored in a loaded ONNX model.

    Raises:
        ValueError: when the model carries no resunet-trt metadata, or it is malformed.
    """
    for prop in model.metadata_props:
        if prop.key == ONNX_METADATA_KEY:
            return ModelMetadata.from_json(prop.value, source=source)
    keys = sorted(p.key for p in model.metadata_props)
    raise ValueError(
        f"{source} has no resunet-trt metadata (metadata_props key {ONNX_METADATA_KEY!r}; keys present: "
        f"{keys or 'none'}); export it with resunet_trt.export.export_onnx"
    )


def load_onnx(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Load an ONNX file with a clear error when it is missing or not a valid ONNX protobuf.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when the file is not a readable ONNX model.
    """
    import onnx
    from google.protobuf.message import DecodeError

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"ONNX model not found: {p}")
    try:
        model = onnx.load(str(p))
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise ValueError(f"{p} is not a readable ONNX model (corrupt or truncated file?): {exc}") from exc
    if len(model.graph.node) == 0:
        raise ValueError(f"{p} is not a readable ONNX model: it has no graph nodes (corrupt or empty file?)")
    return model


def read_onnx_metadata(path: str | os.PathLike[str]) -> ModelMetadata:
    """Read the :class:`ModelMetadata` of an ONNX file written by :mod:`resunet_trt.export`.

    Args:
        path: the .onnx file.

    Returns:
        The metadata, with ``precision`` saying which variant the file is.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when the file is not a valid ONNX model or carries no resunet-trt metadata.
    """
    return metadata_from_onnx_model(load_onnx(path), source=str(path))
