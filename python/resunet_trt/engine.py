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
is plain Python (profile shapes and version rules in :mod:`resunet_trt.engine_profiles`, the sidecar and its checks
in :mod:`resunet_trt.engine_sidecar`, cache names in :mod:`resunet_trt.engine_cache`, all importable from here) and
is tested without TensorRT; tensorrt is imported lazily.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .engine_cache import (
    ENGINE_CACHE_ENV,
    cached_plan_problem,
    default_engine_cache_dir,
    engine_cache_name,
    expected_build_seconds,
    release_of,
)
from .engine_profiles import (
    MAX_PLANE_SIDE,
    MIN_TENSORRT_MAJOR,
    OPT_PLANE_SIDE,
    BatchProfile,
    Enqueue,
    PlaneProfile,
    network_creation_flags,
    parse_version,
    plan_enqueues,
    plane_divisor,
    profile_shapes,
    same_tensorrt_release,
    split_batches,
)
from .engine_sidecar import (
    INPUT_NAME,
    INSTALL_HINT,
    OUTPUT_NAME,
    SIDECAR_SCHEMA,
    EngineMismatchError,
    EngineSidecar,
    GpuInfo,
    current_gpu,
    import_tensorrt,
    make_sidecar,
    parse_device_index,
    read_sidecar,
    sha256_bytes,
    sha256_file,
    sidecar_path,
    tensorrt_available,
    verify_sidecar,
    write_sidecar,
)
from .files import atomic_write_bytes
from .metadata import ModelMetadata, read_onnx_metadata

if TYPE_CHECKING:  # pragma: no cover
    import tensorrt as trt

logger = logging.getLogger(__name__)

# The engine's whole API, its pure parts included, stays importable from here.
__all__ = [
    "ENGINE_CACHE_ENV", "INPUT_NAME", "INSTALL_HINT", "MAX_PLANE_SIDE", "MIN_TENSORRT_MAJOR", "OPT_PLANE_SIDE",
    "OUTPUT_NAME", "SIDECAR_SCHEMA", "BatchProfile", "EngineBuildError", "EngineMismatchError", "EngineSidecar",
    "Enqueue", "GpuInfo", "LoadedEngine", "PlaneProfile", "build_engine", "cached_engine", "cached_plan_problem",
    "collect_parser_errors", "current_gpu", "default_engine_cache_dir", "engine_cache_name",
    "expected_build_seconds", "import_tensorrt", "load_engine", "make_sidecar", "network_creation_flags",
    "parse_device_index", "parse_version", "plan_enqueues", "plane_divisor", "profile_shapes", "read_sidecar",
    "same_tensorrt_release", "sha256_bytes", "sha256_file", "sidecar_path", "split_batches", "tensorrt_available",
    "verify_sidecar", "write_sidecar",
]


class EngineBuildError(RuntimeError):
    """TensorRT could not parse the ONNX or build the engine; the message holds TensorRT's errors."""


# --------------------------------------------------------------------------------------------------------------
# Build and load
# --------------------------------------------------------------------------------------------------------------


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
        timing_cache=folder / f"timing-trt{release_of(version)}-{cc}.cache",
        device=index,
    )
