"""Where a TensorRT plan is valid: its sidecar JSON (model metadata, plan sha256, TensorRT release, GPU) and the
checks that refuse a plan built for another model, TensorRT release or GPU architecture.

Every ``model.plan`` gets a ``model.plan.json`` (see :mod:`resunet_trt.engine`); the GPU is read through CuPy or
PyTorch, and TensorRT is imported only when asked for (:func:`import_tensorrt`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .engine_profiles import BatchProfile, PlaneProfile, parse_version, same_tensorrt_release
from .files import atomic_write_bytes
from .metadata import ModelMetadata, checked_record

logger = logging.getLogger("resunet_trt.engine")

SIDECAR_SCHEMA = 1
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
INSTALL_HINT = (
    "TensorRT is not installed (or only its type stubs are): on a machine with an NVIDIA GPU run "
    "`pip install tensorrt-cu12` (or tensorrt-cu13 for CUDA 13) and `pip install cupy-cuda12x` / cupy-cuda13x"
)


class EngineMismatchError(ValueError):
    """A plan does not fit this machine or this model (sha256, TensorRT version, GPU or metadata differ)."""


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
        schema = checked_record(
            d,
            ("metadata", "plan_sha256", "tensorrt_version", "compute_capability", "device_name", "profile"),
            newest=SIDECAR_SCHEMA,
            what="engine sidecar",
            source=source,
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
