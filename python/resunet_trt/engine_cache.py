"""Where cached TensorRT engines live and when a cached plan may be reused (pure Python; no TensorRT needed).

A plan is cached once per ONNX sha256, TensorRT release, compute capability and profile (see
:func:`resunet_trt.engine.cached_engine`, which builds or reuses it).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from .engine_profiles import BatchProfile, parse_version, same_tensorrt_release
from .engine_sidecar import GpuInfo, read_sidecar, sha256_file, verify_sidecar
from .metadata import ModelMetadata

logger = logging.getLogger("resunet_trt.engine")


ENGINE_CACHE_ENV = "RESUNET_TRT_ENGINE_CACHE"


def default_engine_cache_dir() -> Path:
    """``$RESUNET_TRT_ENGINE_CACHE``, else ``$XDG_CACHE_HOME/resunet-trt/engines``, else under ``~/.cache``."""
    env = os.environ.get(ENGINE_CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "resunet-trt" / "engines"


def release_of(tensorrt_version: str) -> str:
    """``major.minor.patch`` of a TensorRT version: the part a plan and a timing cache depend on."""
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
        f"{Path(onnx_path).stem}-{onnx_sha256[:16]}-trt{release_of(tensorrt_version)}-{cc}"
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
