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
match, with a message that says what to rebuild. Everything except :func:`build_engine` and :func:`load_engine`
is plain Python (sidecar I/O and checks, profile shapes, version parsing) and is tested without TensorRT; tensorrt
is imported lazily.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
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
            )
        except (TypeError, KeyError, ValueError) as exc:
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
) -> EngineSidecar:
    """The sidecar for freshly built ``plan`` bytes."""
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
    _check_network_io(network, metadata, onnx_path)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    opt_profile = builder.create_optimization_profile()
    shape_min, shape_opt, shape_max = profile.shapes(metadata)
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
        "building %s engine from %s on %s (batch %d/%d/%d, workspace %.1f GiB)",
        metadata.precision,
        onnx_path,
        gpu.name,
        profile.min,
        profile.opt,
        profile.max,
        workspace_gb,
    )
    serialized = builder.build_serialized_network(network, config)
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
        extra={"workspace_gb": workspace_gb, "onnx": onnx_path.name},
    )
    write_sidecar(plan_path, sidecar)
    logger.info("wrote %s (%d bytes) and %s", plan_path, len(plan), sidecar_path(plan_path))
    return plan_path


def _check_network_io(network: trt.INetworkDefinition, metadata: ModelMetadata, source: Path) -> None:
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
    if len(dims) != 4 or tuple(dims[1:]) != (k, h, w):
        raise ValueError(f"{source}: input must be (N, {k}, {h}, {w}) as its metadata says, got {dims}")


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
