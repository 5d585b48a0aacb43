"""TensorRT engines: build a .plan from our ONNX, and load it back only where it is valid.

TensorRT 10.12 deprecated weakly typed networks and TensorRT 11 removed them, so there is no FP16/INT8 builder flag
and no calibrator here: the network is built strongly typed and its precision is whatever the ONNX says (the fp32,
fp16 or int8 Q/DQ file from :mod:`resunet_trt.export`). One optimisation profile covers the batch dimension.

A plan is only valid for the TensorRT version and GPU architecture that built it, and only means something with
the model metadata of its ONNX. So every ``model.plan`` gets a sidecar ``model.plan.json``::

    {"schema": 1, "metadata": {...ModelMetadata...}, "plan_sha256": "...", "tensorrt_version": "10.13.0.35",
     "compute_capability": [9, 0], "device_name": "NVIDIA H100 ...", "profile": {"min": 1, "opt": 8, "max": 32},
     "input_name": "input", "output_name": "logits", "onnx_sha256": "...", "created_utc": "..."}

and :func:`load_engine` refuses a plan whose bytes, TensorRT version (major.minor.patch) or compute capability do not
match, with a message that says what to rebuild. :func:`cached_engine` builds a plan once per ONNX sha256, TensorRT
release, compute capability and profile into a user cache folder and reuses it (what ``Segmenter()`` does on a GPU).
An ONNX with a dynamic plane (models with ``pixel_mm``) gets a plane range in the profile (:class:`PlaneProfile`). Everything except :func:`build_engine` and :func:`load_engine`
is plain Python (sidecar I/O and checks, profile shapes, version parsing) and is tested without TensorRT; tensorrt
is imported lazily.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .io import atomic_write_bytes
from .metadata import ModelMetadata

if TYPE_CHECKING:  # pragma: no cover
    import tensorrt as trt

logger = logging.getLogger(__name__)

SIDECAR_SCHEMA = 1
MIN_TENSORRT_MAJOR = 10
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
INSTALL_HINT = (
    "TensorRT is not installed (or only its type stubs are): on a machine with an NVIDIA GPU run "
    "`pip install tensorrt-cu12` (or tensorrt-cu13 for CUDA 13) and `pip install cupy-cuda12x` / cupy-cuda13x"
)


class EngineMismatchError(ValueError):
    """A plan does not fit this machine or this model (sha256, TensorRT version, GPU or metadata differ)."""


class EngineBuildError(RuntimeError):
    """TensorRT could not parse the ONNX or build the engine; the message holds TensorRT's errors."""


# --------------------------------------------------------------------------------------------------------------
# Pure logic: versions, profiles, hashes, sidecars
# --------------------------------------------------------------------------------------------------------------


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
    depth = metadata.model_config.get("depth") if isinstance(metadata.model_config, dict) else None
    return 2 ** int(depth) if depth else 32


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


def sha256_bytes(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str], *, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sidecar_path(plan_path: str | os.PathLike[str]) -> Path:
    """``model.plan`` -> ``model.plan.json``."""
    p = Path(plan_path)
    return p.with_name(p.name + ".json")


@dataclass(frozen=True)
class GpuInfo:
    """The GPU an engine is built for or loaded on."""

    name: str
    compute_capability: tuple[int, int]


@dataclass(frozen=True)
class EngineSidecar:
    """What ``model.plan.json`` records about ``model.plan``."""

    metadata: ModelMetadata
    plan_sha256: str
    tensorrt_version: str
    compute_capability: tuple[int, int]
    device_name: str
    profile: BatchProfile
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    onnx_sha256: str | None = None
    created_utc: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    schema: int = SIDECAR_SCHEMA
    plane: PlaneProfile | None = None  # None: the metadata's fixed plane_size (sidecars before dynamic planes)

    @property
    def plane_profile(self) -> PlaneProfile:
        """The (h, w) range the plan takes."""
        return self.plane if self.plane is not None else PlaneProfile.fixed(self.metadata.plane_size)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "metadata": self.metadata.to_dict(),
            "plan_sha256": self.plan_sha256,
            "tensorrt_version": self.tensorrt_version,
            "compute_capability": list(self.compute_capability),
            "device_name": self.device_name,
            "profile": self.profile.to_dict(),
            "input_name": self.input_name,
            "output_name": self.output_name,
            "onnx_sha256": self.onnx_sha256,
            "created_utc": self.created_utc,
            "extra": dict(self.extra),
            "plane": None if self.plane is None else self.plane.to_dict(),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Any, *, source: str = "sidecar") -> EngineSidecar:
        """Parse a sidecar dict; ValueError naming ``source`` and the field when it is malformed."""
        if not isinstance(d, dict):
            raise ValueError(  # noqa: TRY004 - a malformed file is a value problem for the caller
                f"{source}: engine sidecar must be a JSON object, got {type(d).__name__}"
            )
        required = (
            "metadata",
            "plan_sha256",
            "tensorrt_version",
            "compute_capability",
            "device_name",
            "profile",
        )
        missing = [k for k in required if k not in d]
        if missing:
            raise ValueError(f"{source}: engine sidecar lacks {', '.join(missing)}")
        schema = int(d.get("schema", SIDECAR_SCHEMA))
        if schema > SIDECAR_SCHEMA:
            raise ValueError(
                f"{source}: sidecar schema {schema} is newer than this resunet-trt understands ({SIDECAR_SCHEMA})"
            )
        try:
            cc = d["compute_capability"]
            if len(cc) != 2:
                raise ValueError(f"compute_capability must be [major, minor], got {cc!r}")
            sha = str(d["plan_sha256"])
            if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
                raise ValueError(f"plan_sha256 must be 64 lowercase hex digits, got {sha!r}")
            parse_version(str(d["tensorrt_version"]))
            return cls(
                metadata=ModelMetadata.from_dict(d["metadata"], source=f"{source} metadata"),
                plan_sha256=sha,
                tensorrt_version=str(d["tensorrt_version"]),
                compute_capability=(int(cc[0]), int(cc[1])),
                device_name=str(d["device_name"]),
                profile=BatchProfile.from_dict(d["profile"]),
                input_name=str(d.get("input_name", INPUT_NAME)),
                output_name=str(d.get("output_name", OUTPUT_NAME)),
                onnx_sha256=None if d.get("onnx_sha256") is None else str(d["onnx_sha256"]),
                created_utc=str(d.get("created_utc", "")),
                extra=dict(d.get("extra") or {}),
                schema=schema,
                plane=None if d.get("plane") is None else PlaneProfile.from_dict(d["plane"]),
            )
        except (TypeError, KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"{source}: malformed engine sidecar ({exc})") from exc


def write_sidecar(plan_path: str | os.PathLike[str], sidecar: EngineSidecar) -> Path:
    """Write ``plan_path + ".json"`` atomically; returns its path."""
    return atomic_write_bytes(sidecar_path(plan_path), (sidecar.to_json() + "\n").encode())


def read_sidecar(plan_path: str | os.PathLike[str]) -> EngineSidecar:
    """Read the sidecar of ``plan_path``.

    Raises:
        FileNotFoundError: when the sidecar is missing (the plan cannot be trusted without it).
        ValueError: when it is not valid JSON or lacks fields.
    """
    path = sidecar_path(plan_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"engine sidecar {path} not found: a plan is only loaded with the sidecar written by "
            "resunet-build (rebuild the engine with resunet-build)"
        )
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: engine sidecar is not valid JSON ({exc})") from exc
    return EngineSidecar.from_dict(d, source=str(path))


def verify_sidecar(
    sidecar: EngineSidecar,
    *,
    plan_sha256: str,
    tensorrt_version: str,
    gpu: GpuInfo,
    expected_metadata: ModelMetadata | None = None,
    plan_name: str = "engine",
) -> None:
    """Refuse a plan that does not fit this machine or model.

    Args:
        sidecar: what the builder recorded.
        plan_sha256: sha256 of the plan bytes about to be deserialised.
        tensorrt_version: the TensorRT version that will deserialise it.
        gpu: the GPU it will run on.
        expected_metadata: when given, the plan must be fed the same way (plane size, context, window,
            normalisation, classes).
        plan_name: used in messages.

    Raises:
        EngineMismatchError: naming what differs and what to do.
    """
    rebuild = f"rebuild it on this machine: resunet-build model.onnx -o {plan_name}"
    if plan_sha256 != sidecar.plan_sha256:
        raise EngineMismatchError(
            f"{plan_name}: sha256 of the plan ({plan_sha256[:12]}...) does not match its sidecar "
            f"({sidecar.plan_sha256[:12]}...); the plan or the sidecar was changed or belongs to another build; "
            f"{rebuild}"
        )
    if not same_tensorrt_release(tensorrt_version, sidecar.tensorrt_version):
        raise EngineMismatchError(
            f"{plan_name}: built with TensorRT {sidecar.tensorrt_version}, this is TensorRT {tensorrt_version}; "
            f"a plan only loads in the TensorRT release that built it; {rebuild}"
        )
    if tuple(gpu.compute_capability) != tuple(sidecar.compute_capability):
        built = ".".join(map(str, sidecar.compute_capability))
        here = ".".join(map(str, gpu.compute_capability))
        raise EngineMismatchError(
            f"{plan_name}: built for compute capability {built} ({sidecar.device_name}), this GPU is "
            f"{gpu.name} with compute capability {here}; {rebuild}"
        )
    if gpu.name != sidecar.device_name:
        logger.warning(
            "%s: built on %s, running on %s (same compute capability, so it loads; timings may differ)",
            plan_name,
            sidecar.device_name,
            gpu.name,
        )
    if expected_metadata is not None:
        try:
            expected_metadata.check_compatible(sidecar.metadata, what=plan_name)
        except ValueError as exc:
            raise EngineMismatchError(str(exc)) from exc


def make_sidecar(
    *,
    metadata: ModelMetadata,
    plan: bytes | bytearray | memoryview,
    tensorrt_version: str,
    gpu: GpuInfo,
    profile: BatchProfile,
    onnx_sha256: str | None = None,
    extra: dict[str, Any] | None = None,
    plane: PlaneProfile | None = None,
) -> EngineSidecar:
    """The sidecar for freshly built ``plan`` bytes (``plane``: None for the metadata's fixed plane)."""
    return EngineSidecar(
        metadata=metadata,
        plan_sha256=sha256_bytes(plan),
        tensorrt_version=tensorrt_version,
        compute_capability=(int(gpu.compute_capability[0]), int(gpu.compute_capability[1])),
        device_name=gpu.name,
        profile=profile,
        onnx_sha256=onnx_sha256,
        created_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        extra=dict(extra or {}),
        plane=None if plane is None or not plane.dynamic else plane,
    )


def parse_device_index(device: str | int) -> int:
    """``"cuda"``/``"cuda:N"``/``N`` -> N.

    Raises:
        ValueError: for anything else (TensorRT runs on CUDA devices only).
    """
    if isinstance(device, bool):
        raise TypeError(f"device must be 'cuda', 'cuda:N' or an int, got {device!r}")
    if isinstance(device, int):
        index = device
    elif isinstance(device, str) and device == "cuda":
        index = 0
    elif isinstance(device, str) and device.startswith("cuda:") and device[5:].isdigit():
        index = int(device[5:])
    else:
        raise ValueError(
            f"device must be 'cuda', 'cuda:N' or an int (TensorRT needs a CUDA GPU), got {device!r}"
        )
    if index < 0:
        raise ValueError(f"device index must be >= 0, got {index}")
    return index


# --------------------------------------------------------------------------------------------------------------
# GPU and TensorRT access
# --------------------------------------------------------------------------------------------------------------


def import_tensorrt() -> Any:
    """Import TensorRT, or raise ImportError with how to install it.

    ``import tensorrt`` also succeeds for the type-stub package (an empty namespace), so the real library is
    recognised by its ``Builder``.
    """
    try:
        import tensorrt
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    if not hasattr(tensorrt, "Builder"):
        raise ImportError(INSTALL_HINT)
    return tensorrt


def tensorrt_available() -> bool:
    """True when the real TensorRT library is importable."""
    try:
        import_tensorrt()
    except ImportError:
        return False
    return True


def current_gpu(device: int = 0) -> GpuInfo:
    """Name and compute capability of CUDA device ``device`` (through CuPy, else PyTorch).

    Raises:
        RuntimeError: when neither can see a CUDA device.
    """
    errors: list[str] = []
    try:
        import cupy as cp

        props = cp.cuda.runtime.getDeviceProperties(device)
        name = props["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
        return GpuInfo(name=name, compute_capability=(int(props["major"]), int(props["minor"])))
    except Exception as exc:  # noqa: BLE001 - try the next provider, report both
        errors.append(f"cupy: {exc}")
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(device)
            return GpuInfo(name=torch.cuda.get_device_name(device), compute_capability=(major, minor))
        errors.append("torch: CUDA not available")
    except Exception as exc:  # noqa: BLE001
        errors.append(f"torch: {exc}")
    raise RuntimeError(f"no CUDA device {device} visible ({'; '.join(errors)})")


def _make_logger(trt_mod: Any, verbose: bool) -> Any:
    """A TensorRT logger that forwards to :mod:`logging`."""
    levels = {
        trt_mod.ILogger.Severity.INTERNAL_ERROR: logging.CRITICAL,
        trt_mod.ILogger.Severity.ERROR: logging.ERROR,
        trt_mod.ILogger.Severity.WARNING: logging.WARNING,
        trt_mod.ILogger.Severity.INFO: logging.INFO,
        trt_mod.ILogger.Severity.VERBOSE: logging.DEBUG,
    }
    trt_logger = logging.getLogger("resunet_trt.tensorrt")

    class _Logger(trt_mod.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt_mod.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            level = levels.get(severity, logging.INFO)
            if level == logging.DEBUG and not verbose:
                return
            trt_logger.log(level, "%s", msg)

    return _Logger()


def collect_parser_errors(parser: trt.OnnxParser) -> list[str]:
    """Every error the ONNX parser recorded, as text (node, name, code and description)."""
    out: list[str] = []
    for i in range(int(parser.num_errors)):
        err: Any = parser.get_error(i)
        try:
            out.append(f"node {err.node()} ({err.node_name()}): {err.code()}: {err.desc()}")
        except Exception:  # noqa: BLE001 - fall back to the error's own text
            out.append(str(err))
    return out


def build_engine(
    onnx_path: str | os.PathLike[str],
    plan_path: str | os.PathLike[str],
    *,
    min_batch: int = 1,
    opt_batch: int = 8,
    max_batch: int = 32,
    workspace_gb: float = 4.0,
    timing_cache: str | os.PathLike[str] | None = None,
    device: str | int = "cuda:0",
    verbose: bool = False,
    max_plane: int = MAX_PLANE_SIDE,
) -> Path:
    """Build a strongly typed TensorRT engine from one of our ONNX files, with its sidecar.

    Args:
        onnx_path: fp32, fp16 or int8 (Q/DQ) ONNX from :mod:`resunet_trt.export`; the engine has its precision.
        plan_path: the .plan to write (and ``plan_path + ".json"``).
        min_batch: smallest batch of the optimisation profile.
        opt_batch: the batch TensorRT tunes for.
        max_batch: largest batch; larger batches are split by the TensorRT backend.
        workspace_gb: workspace memory pool limit in GiB (> 0).
        timing_cache: file to load the timing cache from (when it exists) and save it to after the build.
        device: the CUDA device to build for.
        verbose: forward TensorRT's verbose log to logging's DEBUG.
        max_plane: largest plane side of the profile when the ONNX plane is dynamic (models with ``pixel_mm``);
            see :meth:`PlaneProfile.for_model`. Ignored for a fixed plane.

    Returns:
        The plan path.

    Raises:
        ImportError: without TensorRT (with how to install it).
        ValueError: on bad arguments or an ONNX without our metadata.
        EngineBuildError: when parsing or building fails (TensorRT's errors in the message).
    """
    from .export import read_onnx_metadata

    profile = BatchProfile(min=min_batch, opt=opt_batch, max=max_batch)
    if isinstance(workspace_gb, bool) or not isinstance(workspace_gb, (int, float)) or not workspace_gb > 0:
        raise ValueError(f"workspace_gb must be a number > 0, got {workspace_gb!r}")
    device_index = parse_device_index(device)
    onnx_path = Path(onnx_path)
    plan_path = Path(plan_path)
    metadata = read_onnx_metadata(onnx_path)
    import_tensorrt()
    import tensorrt as trt

    gpu = current_gpu(device_index)
    _set_cuda_device(device_index)

    trt_logger = _make_logger(trt, verbose)
    builder = trt.Builder(trt_logger)
    flags = network_creation_flags(
        str(trt.__version__), int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    )
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = collect_parser_errors(parser)
        raise EngineBuildError(
            f"TensorRT {trt.__version__} could not parse {onnx_path} ({len(errors)} error(s)):\n  "
            + "\n  ".join(errors or ["(the parser reported failure without an error record)"])
        )
    dynamic_plane = _check_network_io(network, metadata, onnx_path)
    plane = PlaneProfile.for_model(metadata, dynamic=dynamic_plane, max_side=max_plane)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    opt_profile = builder.create_optimization_profile()
    shape_min, shape_opt, shape_max = profile_shapes(profile, plane, metadata.context)
    opt_profile.set_shape(
        INPUT_NAME, trt.Dims(list(shape_min)), trt.Dims(list(shape_opt)), trt.Dims(list(shape_max))
    )
    config.add_optimization_profile(opt_profile)

    cache_path = Path(timing_cache) if timing_cache is not None else None
    cache_bytes = cache_path.read_bytes() if cache_path is not None and cache_path.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    if not config.set_timing_cache(cache, False):
        logger.warning("timing cache %s does not match this TensorRT/GPU; starting a new one", cache_path)
        config.set_timing_cache(config.create_timing_cache(b""), True)
    if cache_bytes:
        logger.info("loaded timing cache %s (%d bytes)", cache_path, len(cache_bytes))

    logger.info(
        "building %s engine from %s on %s (batch %d/%d/%d, plane %s/%s/%s, workspace %.1f GiB)",
        metadata.precision,
        onnx_path,
        gpu.name,
        profile.min,
        profile.opt,
        profile.max,
        plane.min,
        plane.opt,
        plane.max,
        workspace_gb,
    )
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    build_seconds = time.perf_counter() - started
    if serialized is None:
        raise EngineBuildError(
            f"TensorRT {trt.__version__} failed to build an engine from {onnx_path}; see the "
            "resunet_trt.tensorrt log records above for the reason"
        )
    plan = bytes(memoryview(serialized))
    if cache_path is not None:
        atomic_write_bytes(cache_path, bytes(memoryview(config.get_timing_cache().serialize())))
        logger.info("saved timing cache %s", cache_path)
    atomic_write_bytes(plan_path, plan)
    sidecar = make_sidecar(
        metadata=metadata,
        plan=plan,
        tensorrt_version=str(trt.__version__),
        gpu=gpu,
        profile=profile,
        onnx_sha256=sha256_file(onnx_path),
        extra={"workspace_gb": workspace_gb, "onnx": onnx_path.name, "build_seconds": round(build_seconds, 1)},
        plane=plane,
    )
    write_sidecar(plan_path, sidecar)
    logger.info("wrote %s (%d bytes) and %s", plan_path, len(plan), sidecar_path(plan_path))
    return plan_path


def _check_network_io(network: trt.INetworkDefinition, metadata: ModelMetadata, source: Path) -> bool:
    """Checks names and the input shape against the metadata; True when the plane (h, w) is dynamic."""
    names_in = [network.get_input(i).name for i in range(network.num_inputs)]
    names_out = [network.get_output(i).name for i in range(network.num_outputs)]
    if names_in != [INPUT_NAME] or names_out != [OUTPUT_NAME]:
        raise ValueError(
            f"{source}: expected one input {INPUT_NAME!r} and one output {OUTPUT_NAME!r}, "
            f"got inputs {names_in} and outputs {names_out}"
        )
    shape = network.get_input(0).shape
    dims = tuple(int(shape[i]) for i in range(len(shape)))
    k = metadata.context
    h, w = metadata.plane_size
    if len(dims) == 4 and dims[1] == k and dims[2] == -1 and dims[3] == -1 and metadata.pixel_mm is not None:
        return True
    if len(dims) != 4 or tuple(dims[1:]) != (k, h, w):
        raise ValueError(
            f"{source}: input must be (N, {k}, {h}, {w}) as its metadata says (or (N, {k}, -1, -1) for a model "
            f"with pixel_mm), got {dims}"
        )
    return False


def _set_cuda_device(index: int) -> None:
    try:
        import cupy as cp

        cp.cuda.Device(index).use()
    except ImportError:
        logger.debug("cupy not installed; building on the current CUDA device")


@dataclass
class LoadedEngine:
    """A deserialised engine with the runtime that owns it and its verified sidecar."""

    engine: trt.ICudaEngine
    runtime: trt.Runtime
    sidecar: EngineSidecar
    path: Path

    @property
    def metadata(self) -> ModelMetadata:
        return self.sidecar.metadata


def load_engine(
    plan_path: str | os.PathLike[str],
    *,
    device: str | int = "cuda:0",
    expected_metadata: ModelMetadata | None = None,
) -> LoadedEngine:
    """Deserialise a plan after checking its sidecar against the plan bytes, TensorRT and the GPU.

    Args:
        plan_path: the .plan written by :func:`build_engine` (its ``.plan.json`` sidecar must sit beside it).
        device: the CUDA device to load on.
        expected_metadata: when given, the plan must be fed like this model.

    Returns:
        The engine, its runtime and its sidecar.

    Raises:
        FileNotFoundError: when the plan or its sidecar is missing.
        EngineMismatchError: when sha256, TensorRT release, compute capability or metadata differ.
        ImportError: without TensorRT.
        RuntimeError: when TensorRT cannot deserialise the plan.
    """
    plan_path = Path(plan_path)
    if not plan_path.is_file():
        raise FileNotFoundError(f"TensorRT plan not found: {plan_path}")
    sidecar = read_sidecar(plan_path)
    index = parse_device_index(device)
    plan = plan_path.read_bytes()
    plan_sha = sha256_bytes(plan)
    if plan_sha != sidecar.plan_sha256:  # checked before anything needs TensorRT or a GPU
        verify_sidecar(
            sidecar,
            plan_sha256=plan_sha,
            tensorrt_version=sidecar.tensorrt_version,
            gpu=GpuInfo(sidecar.device_name, sidecar.compute_capability),
            plan_name=str(plan_path),
        )
    import_tensorrt()
    import tensorrt as trt

    gpu = current_gpu(index)
    verify_sidecar(
        sidecar,
        plan_sha256=plan_sha,
        tensorrt_version=str(trt.__version__),
        gpu=gpu,
        expected_metadata=expected_metadata,
        plan_name=str(plan_path),
    )
    _set_cuda_device(index)
    runtime = trt.Runtime(_make_logger(trt, False))
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise RuntimeError(f"TensorRT {trt.__version__} could not deserialise {plan_path}; see the log above")
    return LoadedEngine(engine=engine, runtime=runtime, sidecar=sidecar, path=plan_path)


# --------------------------------------------------------------------------------------------------------------
# Engine cache: build once per model, TensorRT release, GPU architecture and profile; reuse afterwards
# --------------------------------------------------------------------------------------------------------------

ENGINE_CACHE_ENV = "RESUNET_TRT_ENGINE_CACHE"


def default_engine_cache_dir() -> Path:
    """``$RESUNET_TRT_ENGINE_CACHE``, else ``$XDG_CACHE_HOME/resunet-trt/engines``, else under ``~/.cache``."""
    env = os.environ.get(ENGINE_CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "resunet-trt" / "engines"


def _release(tensorrt_version: str) -> str:
    return ".".join(str(v) for v in (parse_version(tensorrt_version) + (0, 0))[:3])


def engine_cache_name(
    onnx_path: str | os.PathLike[str],
    *,
    onnx_sha256: str,
    tensorrt_version: str,
    gpu: GpuInfo,
    profile: BatchProfile,
    max_plane: int | None = None,
) -> str:
    """File name of a cached plan: the cache key (model sha256, TensorRT major.minor.patch, compute capability,
    batch profile, and the largest plane side for a dynamic plane) in readable form."""
    cc = f"sm{gpu.compute_capability[0]}{gpu.compute_capability[1]}"
    plane = "" if max_plane is None else f"-p{max_plane}"
    return (
        f"{Path(onnx_path).stem}-{onnx_sha256[:16]}-trt{_release(tensorrt_version)}-{cc}"
        f"-b{profile.min}-{profile.opt}-{profile.max}{plane}.plan"
    )


def expected_build_seconds(cache_dir: str | os.PathLike[str], *, gpu: GpuInfo, tensorrt_version: str) -> float | None:
    """Median build time of the engines in ``cache_dir`` built on this GPU model and TensorRT release (None: none)."""
    times: list[float] = []
    for side in sorted(Path(cache_dir).glob("*.plan.json")):
        try:
            d = json.loads(side.read_text())
            if (
                d.get("device_name") == gpu.name
                and same_tensorrt_release(str(d.get("tensorrt_version")), tensorrt_version)
                and d.get("extra", {}).get("build_seconds") is not None
            ):
                times.append(float(d["extra"]["build_seconds"]))
        except (OSError, ValueError, TypeError, AttributeError):
            continue  # an unreadable neighbour says nothing about the time
    if not times:
        return None
    times.sort()
    mid = len(times) // 2
    return times[mid] if len(times) % 2 else (times[mid - 1] + times[mid]) / 2


def cached_plan_problem(
    plan_path: Path,
    *,
    onnx_sha256: str,
    tensorrt_version: str,
    gpu: GpuInfo,
    profile: BatchProfile,
    metadata: ModelMetadata,
) -> str | None:
    """Why the cached ``plan_path`` cannot be used (missing, damaged, stale), or None when it can."""
    if not plan_path.is_file():
        return "not in the cache"
    try:
        sidecar = read_sidecar(plan_path)
        if sidecar.onnx_sha256 != onnx_sha256:
            return "built from another ONNX file"
        if sidecar.profile != profile:
            return f"built for batch profile {sidecar.profile.to_dict()}, not {profile.to_dict()}"
        verify_sidecar(
            sidecar,
            plan_sha256=sha256_file(plan_path),
            tensorrt_version=tensorrt_version,
            gpu=gpu,
            expected_metadata=metadata,
            plan_name=str(plan_path),
        )
    except (OSError, ValueError) as exc:  # EngineMismatchError is a ValueError
        return str(exc)
    return None


def cached_engine(
    onnx_path: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    min_batch: int = 1,
    opt_batch: int = 8,
    max_batch: int = 32,
    max_plane: int = MAX_PLANE_SIDE,
    workspace_gb: float = 4.0,
    device: str | int = "cuda:0",
    rebuild: bool = False,
) -> Path:
    """A plan for ``onnx_path`` on this GPU and TensorRT: from the engine cache, or built once and cached.

    The cache key is the ONNX file's sha256, the TensorRT release (major.minor.patch), the GPU's compute capability
    and the batch profile (and ``max_plane`` for a model with a dynamic plane); it is the plan's file name (see
    :func:`engine_cache_name`). A cached plan is used only when its sidecar verifies (plan sha256, TensorRT release,
    compute capability, metadata, ONNX sha256, profile); a damaged or stale one is rebuilt. A build is announced
    with its expected time (the median of earlier builds on this GPU in the cache, when there are some), and a
    timing cache per TensorRT release and GPU speeds up later builds. Writes are atomic, so an interrupted build
    leaves no plan behind.

    Args:
        onnx_path: an fp32, fp16 or int8 (Q/DQ) ONNX from :mod:`resunet_trt.export`.
        cache_dir: the cache folder; None for :func:`default_engine_cache_dir`.
        min_batch: see :func:`build_engine`.
        opt_batch: see :func:`build_engine`.
        max_batch: see :func:`build_engine`.
        max_plane: see :func:`build_engine`.
        workspace_gb: see :func:`build_engine`.
        device: the CUDA device.
        rebuild: build even when a usable plan is cached (e.g. after TensorRT could not deserialise it).

    Returns:
        The cached plan's path (its sidecar beside it).

    Raises:
        ImportError: without TensorRT.
        EngineBuildError: when TensorRT cannot build the engine.
    """
    from .export import read_onnx_metadata

    onnx_path = Path(onnx_path)
    profile = BatchProfile(min=min_batch, opt=opt_batch, max=max_batch)
    metadata = read_onnx_metadata(onnx_path)
    index = parse_device_index(device)
    trt_mod = import_tensorrt()
    version = str(trt_mod.__version__)
    gpu = current_gpu(index)
    onnx_sha = sha256_file(onnx_path)
    folder = Path(cache_dir) if cache_dir is not None else default_engine_cache_dir()
    plan = folder / engine_cache_name(
        onnx_path,
        onnx_sha256=onnx_sha,
        tensorrt_version=version,
        gpu=gpu,
        profile=profile,
        max_plane=max_plane if metadata.pixel_mm is not None else None,
    )
    problem = "a rebuild was asked for" if rebuild else cached_plan_problem(
        plan, onnx_sha256=onnx_sha, tensorrt_version=version, gpu=gpu, profile=profile, metadata=metadata
    )
    if problem is None:
        logger.info("TensorRT engine from the cache: %s", plan)
        return plan
    if plan.is_file():
        logger.warning("cached TensorRT engine %s is unusable (%s); building it again", plan, problem)
    expected = expected_build_seconds(folder, gpu=gpu, tensorrt_version=version) if folder.is_dir() else None
    eta = (
        f"about {expected:.0f} s, as earlier builds on this GPU"
        if expected is not None
        else "usually a few minutes (first build on this GPU: TensorRT times every layer)"
    )
    logger.warning(
        "building the TensorRT %s engine of %s for %s (compute capability %d.%d, TensorRT %s): %s; it is cached "
        "in %s and reused next time",
        metadata.precision,
        onnx_path.name,
        gpu.name,
        gpu.compute_capability[0],
        gpu.compute_capability[1],
        version,
        eta,
        folder,
    )
    folder.mkdir(parents=True, exist_ok=True)
    cc = f"sm{gpu.compute_capability[0]}{gpu.compute_capability[1]}"
    return build_engine(
        onnx_path,
        plan,
        min_batch=min_batch,
        opt_batch=opt_batch,
        max_batch=max_batch,
        max_plane=max_plane,
        workspace_gb=workspace_gb,
        timing_cache=folder / f"timing-trt{_release(version)}-{cc}.cache",
        device=index,
    )
