"""The pipeline: a CT volume in, liver and tumor labels, lesion statistics and timings out.

One volume flows through the same steps on both devices::

    CTVolume hu int16 (D, H, W)
      -> kernels.preprocess      one slab of ``batch_size`` slices at a time -> (N, K, h, w)
      -> backend.infer           -> logits (N, C, h, w)
      -> kernels.logits_to_labels -> uint8 (N, H, W), written into the label volume
      -> kernels.postprocess     largest liver component, tumor inside it, small lesions dropped
      -> kernels.lesion_stats    per-lesion numbers -> report.build_lesions

On the CPU the slabs bound the memory and overlap: the network runs one slab in a worker thread while the
next slab is preprocessed and the previous one decoded, so that pre- and postprocessing hide behind inference;
beside the CT and the label volume only two slabs of network input and one of logits exist. On a GPU the
int16 volume goes up once, in slabs through two pinned host buffers on a copy stream, so that the upload of the next slab overlaps the compute of this one (events order the two
streams); preprocessing, inference, decoding and postprocessing run on our compute stream, and the labels
come down once. GPU memory is the int16 volume, the labels and one slab of network input and logits,
whatever the number of slices.

Typical use::

    from resunet_trt import Segmenter

    seg = Segmenter(device="auto")
    result = seg.segment("case.nii.gz")
    print(result.liver_volume_ml, len(result.lesions))
    seg.segment_files(["a.nii.gz", "dicom_dir/"], "out/", overlay=True)
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _device
from ._checks import checked_spacing
from ._progress import progress as _progress

if TYPE_CHECKING:  # pragma: no cover
    from .io import CTVolume
    from .report import Lesion

logger = logging.getLogger(__name__)

#: Stage names of :attr:`Result.timings`, in pipeline order.
STAGES = ("read", "upload", "preprocess", "infer", "decode", "postprocess", "download", "write")

_DEVICE_RE = re.compile(r"cuda(?::(\d+))?")

#: Mask formats of :meth:`Segmenter.segment_files`: "auto" is "both" for DICOM input, "nifti" otherwise.
MASK_FORMATS = ("auto", "nifti", "dicom-seg", "both")


# --------------------------------------------------------------------------------------------------
# Small pure helpers
# --------------------------------------------------------------------------------------------------
def slabs(depth: int, batch_size: int) -> list[tuple[int, int]]:
    """Split ``depth`` slices into consecutive ``[start, stop)`` slabs of at most ``batch_size`` slices.

    Args:
        depth: number of slices D (>= 0).
        batch_size: slices per slab (>= 1).

    Returns:
        list of (start, stop) pairs covering ``range(depth)`` in order.
    """
    return [(s, min(depth, s + batch_size)) for s in range(0, depth, batch_size)]


def slab_upload_needs(depth: int, batch_size: int, halo: int) -> list[int]:
    """For each compute slab, the last upload chunk it reads (preprocess needs ``halo`` slices past its end).

    Upload chunks and compute slabs are the same ``batch_size`` slices; preprocessing slab ``[s, e)`` reads
    slices up to ``e - 1 + halo`` (clamped to the volume), so it must wait for the chunk holding that slice.

    Args:
        depth: number of slices D.
        batch_size: slices per slab and per upload chunk.
        halo: neighbouring slices each side a network input stacks (``context // 2``).

    Returns:
        list, one entry per slab, of upload chunk indices.
    """
    return [min(depth - 1, stop - 1 + halo) // batch_size for _, stop in slabs(depth, batch_size)]


def cuda_status(index: int = 0) -> tuple[bool, str]:
    """Whether the GPU path can run on CUDA device ``index``, and if not, why.

    Needs a CUDA build of the compiled core, a CUDA device with that index, and CuPy.

    Returns:
        (usable, reason); reason is empty when usable.
    """
    try:
        from . import _core
    except ImportError as exc:
        return False, f"the compiled core is not importable ({exc})"
    if not _core.built_with_cuda:
        return False, "resunet_trt was built without CUDA"
    count = int(_core.cuda_device_count())
    if count == 0:
        return False, "no CUDA device is visible"
    if index >= count:
        return False, f"CUDA device {index} does not exist ({count} visible)"
    try:
        import cupy  # noqa: F401
    except ImportError:
        return False, "CuPy is not installed (pip install cupy-cuda13x)"
    return True, ""


def resolve_device(device: str) -> str:
    """Turn a device request into ``"cpu"`` or ``"cuda:N"``.

    ``"auto"`` picks ``cuda:0`` when a CUDA build, a GPU and CuPy are present, else the CPU, and logs the
    choice. An explicit ``"cuda"``/``"cuda:N"`` that cannot run here is an error with the reason, never a
    silent fallback.

    Raises:
        TypeError: ``device`` is not a string.
        ValueError: ``device`` is not one of the accepted spellings.
        RuntimeError: CUDA was requested but is not usable.
    """
    if not isinstance(device, str):
        raise TypeError(
            f"device must be a str ('auto', 'cpu', 'cuda' or 'cuda:N'), got {type(device).__name__}"
        )
    req = device.strip().lower()
    if req == "cpu":
        return "cpu"
    if req == "auto":
        ok, reason = cuda_status(0)
        if ok:
            logger.info("device='auto': using cuda:0")
            return "cuda:0"
        logger.info("device='auto': using the CPU (%s)", reason)
        return "cpu"
    match = _DEVICE_RE.fullmatch(req)
    if match is None:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    index = int(match.group(1) or 0)
    ok, reason = cuda_status(index)
    if not ok:
        raise RuntimeError(f"device={device!r} was requested but CUDA cannot be used here: {reason}")
    return f"cuda:{index}"


def mask_outputs(mask_format: str, volume: CTVolume) -> tuple[bool, bool]:
    """Which masks to write for ``volume``: (NIfTI, DICOM-SEG).

    ``"auto"`` writes both for a DICOM series whose slices a SEG can reference, else the NIfTI alone (with a
    logged warning saying why there is no SEG for a DICOM input); ``"dicom-seg"`` and ``"both"`` on an input
    that cannot have a SEG are an error.

    Raises:
        ValueError: ``mask_format`` is not one of :data:`MASK_FORMATS`, or a SEG was asked for an input that
            cannot have one (the message says why).
    """
    if mask_format not in MASK_FORMATS:
        raise ValueError(f"mask_format must be one of {', '.join(MASK_FORMATS)}, got {mask_format!r}")
    if mask_format == "nifti":
        return True, False
    from .dicom_seg import dicom_seg_unavailable_reason

    reason = dicom_seg_unavailable_reason(volume)
    if mask_format == "auto":
        if reason is not None and volume.meta.get("format") == "dicom":
            logger.warning("%s: no DICOM-SEG written: %s", volume.source, reason)
        return True, reason is None
    if reason is not None:
        raise ValueError(f"mask_format={mask_format!r}: {reason}")
    return mask_format == "both", True


def case_name(path: str | os.PathLike[str]) -> str:
    """Name of a case from its file or folder: ``/x/liver_3.nii.gz`` -> ``liver_3``, ``/x/series/`` -> ``series``."""
    name = Path(path).name or Path(path).resolve().name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".gz"):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


#: What :meth:`Segmenter.segment_files` appends to a case name; the longest decides how long a name may be.
OUTPUT_SUFFIXES = ("_mask.nii.gz", "_seg.dcm", "_overlay.png", "_report.json")
_NAME_MAX_BYTES = 255  # file-name limit of ext4, XFS, APFS, NTFS (in bytes or UTF-16 units)


def output_names(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Output case names for ``paths``, distinct by construction (also on case-insensitive file systems).

    Each input keeps :func:`case_name` when it is free; a repeated name gets ``_2``, ``_3``... but never a name
    that another input has on its own (``a/case``, ``b/case``, ``c/case_2`` -> ``case``, ``case_3``,
    ``case_2``). Names are cut so that every output file name fits the file-system limit of 255 bytes.

    Args:
        paths: the inputs, in order.

    Returns:
        one name per input, in order.
    """
    limit = _NAME_MAX_BYTES - max(len(s) for s in OUTPUT_SUFFIXES)

    def fit(name: str, room: int) -> str:
        while name and len(os.fsencode(name)) > room:
            name = name[:-1]
        return name

    bases = [fit(case_name(p), limit) for p in paths]
    own = {b.casefold() for b in bases}
    taken: set[str] = set()
    names = []
    for base in bases:
        name, k = base, 1
        while name.casefold() in taken or (k > 1 and name.casefold() in own):
            k += 1
            name = fit(base, limit - len(f"_{k}")) + f"_{k}"
        taken.add(name.casefold())
        names.append(name)
    return names


def _dtype_name(dtype: Any) -> str:
    name = np.dtype(dtype).name
    if name not in ("float16", "float32"):
        raise RuntimeError(f"backend wants input dtype {name}; only float16 and float32 are supported")
    return name


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------
@dataclass
class Result:
    """What :meth:`Segmenter.segment` returns for one volume.

    Attributes:
        labels: uint8 (D, H, W), 0 background, 1 liver, 2 tumor, in the grid of :attr:`volume` (the canonical
            orientation; ``io.save_mask(path, labels, like=volume)`` writes it in the file's own geometry).
        volume: the CTVolume that was segmented.
        lesions: one :class:`resunet_trt.report.Lesion` per tumor component, largest first.
        liver_volume_ml: volume of liver including tumor (labels >= 1), mL.
        tumor_volume_ml: volume of tumor (label 2), mL.
        tumor_burden: tumor volume / liver volume (0.0 when there is no liver).
        timings: seconds per stage, keys :data:`STAGES` (stages that did not run are 0.0); on a GPU the
            device stages come from CUDA events and the upload overlaps the compute, so their sum can exceed
            the wall time, which is in ``timings["total"]``; on the CPU preprocess and decode run beside the
            network, so they too can sum past ``timings["slabs_wall"]``, the wall time of those three stages.
        info: backend name, device, model precision, batch size.
    """

    labels: np.ndarray
    volume: CTVolume
    lesions: list[Lesion]
    liver_volume_ml: float
    tumor_volume_ml: float
    tumor_burden: float
    timings: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    info: dict[str, Any] = field(default_factory=dict)

    def to_report(self, *, case: str | None = None) -> dict[str, Any]:
        """The JSON-ready lesion report of this case (see :func:`resunet_trt.report.build_report`)."""
        from .report import build_report

        return build_report(self, case=case)

    @property
    def warnings(self) -> list[str]:
        """Why this result is physically implausible (:func:`resunet_trt.report.plausibility_warnings`)."""
        from .report import plausibility_warnings

        return plausibility_warnings(self.liver_volume_ml, self.volume.spacing)

    def __repr__(self) -> str:
        return (
            f"Result(labels={_array_summary(self.labels)}, source={getattr(self.volume, 'source', None)!r}, "
            f"spacing={tuple(round(float(s), 4) for s in self.volume.spacing)}, "
            f"liver_volume_ml={self.liver_volume_ml:.1f}, tumor_volume_ml={self.tumor_volume_ml:.1f}, "
            f"tumor_burden={self.tumor_burden:.4f}, lesions={len(self.lesions)}, "
            f"total_s={self.timings.get('total', 0.0):.2f}, warnings={len(self.warnings)})"
        )


@dataclass
class FileOutcome:
    """The fate of one input of :meth:`Segmenter.segment_files`.

    Attributes:
        path: the input as given.
        ok: True when the mask (and the requested report/overlay) were written.
        error: the reason it failed (names the file), else None.
        outputs: kind (``"mask"``, ``"report"``, ``"overlay"``) -> written path.
        result: the Result, or None when the case failed (or ``keep_results=False``).
        summary: the case's JSON-ready report (:meth:`Result.to_report`), small enough to keep for many cases;
            None when the case failed.
    """

    path: Path
    ok: bool
    error: str | None = None
    outputs: dict[str, Path] = field(default_factory=dict)
    result: Result | None = None
    summary: dict[str, Any] | None = None

    def __repr__(self) -> str:
        parts = [f"path={os.fspath(self.path)!r}", f"ok={self.ok}"]
        if self.error is not None:
            parts.append(f"error={self.error!r}")
        parts.append(f"outputs={ {kind: p.name for kind, p in self.outputs.items()} }")
        if self.summary is not None:
            keys = ("case", "liver_volume_ml", "tumor_volume_ml", "lesion_count")
            brief = {k: self.summary[k] for k in keys if k in self.summary}
            brief["warnings"] = len(self.summary.get("warnings", ()))
            parts.append(f"summary={brief}")
        parts.append(f"result={self.result!r}")
        return f"FileOutcome({', '.join(parts)})"


# --------------------------------------------------------------------------------------------------
# The segmenter
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VolumePlan:
    """How one volume is sampled for the network: the plane (h, w), the in-plane mapping and the context step.

    ``step``/``origin`` are None for the whole-plane resize of models without ``pixel_mm``.
    """

    out_size: tuple[int, int]
    step: tuple[float, float] | None
    origin: tuple[float, float] | None
    slice_step: float

    def kernel_mapping(self) -> dict[str, Any]:
        """The ``step``/``origin`` keywords of ``kernels.preprocess`` and ``kernels.logits_to_labels``."""
        return {} if self.step is None else {"step": self.step, "origin": self.origin}


def volume_plan(metadata: Any, shape: Sequence[int], spacing: Sequence[float]) -> VolumePlan:
    """The network plane and sampling of a (D, H, W) volume with ``spacing`` (dz, dy, dx) mm, as ``metadata`` says.

    Models with ``pixel_mm`` see 1 pixel = ``pixel_mm`` mm (the plane grows past ``plane_size`` for a large field of
    view, in multiples of the network's ``2**depth``); models with ``slice_mm`` see context slices that far apart.
    Older models resize the whole plane to ``plane_size`` and stack neighbouring slices.
    """
    from . import kernels

    dz, dy, dx = (float(s) for s in spacing)
    slice_step = 1.0 if metadata.slice_mm is None else float(metadata.slice_mm) / dz
    if metadata.pixel_mm is None:
        return VolumePlan(tuple(int(v) for v in metadata.plane_size), None, None, slice_step)  # type: ignore[arg-type]
    depth = metadata.model_config.get("depth") if isinstance(metadata.model_config, dict) else None
    divisor = 2 ** int(depth) if depth else 32
    mapping = kernels.plane_mapping(
        tuple(shape[1:]), (dy, dx), float(metadata.pixel_mm), min_size=min(metadata.plane_size), divisor=divisor
    )
    return VolumePlan(tuple(mapping.out_size), tuple(mapping.step), tuple(mapping.origin), slice_step)  # type: ignore[arg-type]


class Segmenter:
    """Liver and tumor segmentation of CT volumes with one model on one device.

    Configure once, then call :meth:`segment`, :meth:`segment_batch` or :meth:`segment_files`.

    Args:
        model: model file (.pt, .onnx or .plan), or None for the bundled default model.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (see :func:`resolve_device`).
        backend: ``"auto"``, ``"tensorrt"``, ``"openvino"``, ``"onnxruntime"`` or ``"torch"`` (see
            :func:`resunet_trt.backends.open_backend`).
        batch_size: slices per slab (network batch); bounds the memory of the network input and logits.
        min_lesion_mm3: tumor components smaller than this volume (mm³) become liver; the default, 65 mm³, is a
            sphere of 5 mm diameter (smaller lesions cannot be characterised on CT), so that 0.7 mm and 5 mm scans
            are treated alike.
        min_lesion_voxels: the floor in voxels instead (overrides ``min_lesion_mm3``), or None.
        tta: test-time flip averaging: the network also sees every slab with its context slices reversed and the
            two logits are averaged (twice the network time; for models trained with slice flips).
        anatomy: remove an organ the network joined to the liver above its dome (the heart); see
            :mod:`resunet_trt.anatomy`.
        connectivity: 6, 18 or 26, for the liver and lesion components.
        progress: show progress bars (slabs within a volume, cases in :meth:`segment_files`).
        num_threads: CPU inference threads of the OpenVINO, ONNX Runtime or PyTorch backend (None: the library's
            default, about one per core).
        precision: None (the model file's, or the fastest for the default model), ``"fp32"``, ``"bf16"``
            (OpenVINO) or ``"int8"``; see :func:`resunet_trt.backends.open_backend`.

    Raises:
        TypeError/ValueError: a bad argument, named.
        RuntimeError: CUDA requested but not usable here.
    """

    def __init__(
        self,
        *,
        model: str | os.PathLike[str] | None = None,
        device: str = "auto",
        backend: str = "auto",
        batch_size: int = 16,
        min_lesion_mm3: float = 65.0,
        min_lesion_voxels: int | None = None,
        connectivity: int = 26,
        progress: bool = False,
        num_threads: int | None = None,
        precision: str | None = None,
        tta: bool = False,
        anatomy: bool = True,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if min_lesion_voxels is not None and (
            isinstance(min_lesion_voxels, bool)
            or not isinstance(min_lesion_voxels, (int, np.integer))
            or min_lesion_voxels < 0
        ):
            raise ValueError(f"min_lesion_voxels must be None or an integer >= 0, got {min_lesion_voxels!r}")
        if (
            isinstance(min_lesion_mm3, bool)
            or not isinstance(min_lesion_mm3, (int, float, np.integer, np.floating))
            or not math.isfinite(float(min_lesion_mm3))
            or min_lesion_mm3 < 0
        ):
            raise ValueError(f"min_lesion_mm3 must be a volume in mm³ >= 0, got {min_lesion_mm3!r}")
        if connectivity not in (6, 18, 26):
            raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity!r}")
        if model is not None and not isinstance(model, (str, os.PathLike)):
            raise TypeError(f"model must be a path or None, got {type(model).__name__}")
        self.batch_size = int(batch_size)
        self.min_lesion_mm3 = float(min_lesion_mm3)
        self.min_lesion_voxels = None if min_lesion_voxels is None else int(min_lesion_voxels)
        self.tta = bool(tta)
        self.anatomy = bool(anatomy)
        self.connectivity = int(connectivity)
        self.progress = bool(progress)
        self._in_files = False  # segment_files shows one bar over cases instead of one per volume
        self.device = resolve_device(device)

        from .backends import open_backend

        self.backend = open_backend(
            None if model is None else Path(model),
            backend=backend,
            device=self.device,
            threads=num_threads,
            precision=precision,
        )
        if self.backend.device.startswith("cuda") != self.device.startswith("cuda"):
            self.backend.close()
            raise RuntimeError(
                f"backend {self.backend.name!r} opened on {self.backend.device}, but device {self.device} was asked"
            )
        self.metadata = self.backend.metadata
        self._input_dtype = _dtype_name(self.backend.input_dtype)
        logger.info(
            "Segmenter: backend %s on %s, precision %s, plane %s, context %d, batch %d",
            self.backend.name,
            self.device,
            self.metadata.precision,
            tuple(self.metadata.plane_size),
            self.metadata.context,
            self.batch_size,
        )

    @property
    def model_sha256(self) -> str | None:
        """Hex sha256 of the model file (computed once), or None when the backend has no file."""
        if not hasattr(self, "_model_sha256"):
            from .engine import sha256_file

            path = getattr(self.backend, "path", None)
            self._model_sha256 = sha256_file(path) if path is not None and Path(path).is_file() else None
        return self._model_sha256

    # -- lifetime ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the backend (engine, session, device memory)."""
        self.backend.close()

    def __enter__(self) -> Segmenter:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Segmenter(backend={self.backend.name!r}, device={self.device!r}, batch_size={self.batch_size}, "
            f"min_lesion_mm3={self.min_lesion_mm3:g}, min_lesion_voxels={self.min_lesion_voxels}, tta={self.tta}, "
            f"anatomy={self.anatomy}, connectivity={self.connectivity})"
        )

    # -- inputs -----------------------------------------------------------------------------------
    def _as_volume(
        self, item: Any, spacing: Sequence[float] | None, series_uid: str | None = None
    ) -> tuple[CTVolume, float]:
        """Turn a path, CTVolume or bare array into a CTVolume; returns it and the read time in seconds.

        ``series_uid`` picks the series of a DICOM folder holding several (files ignore it)."""
        from .io import CTVolume, load_ct

        if isinstance(item, (str, os.PathLike)):
            if spacing is not None:
                raise ValueError(f"spacing is only for bare arrays; {os.fspath(item)!r} carries its own")
            t0 = time.perf_counter()
            try:
                volume = load_ct(item, series_uid=series_uid if Path(item).is_dir() else None)
            except (OSError, ValueError, TypeError, RuntimeError) as exc:
                raise _name_file(exc, item) from exc
            return _checked_volume(volume, os.fspath(item)), time.perf_counter() - t0
        if isinstance(item, CTVolume):
            if spacing is not None:
                raise ValueError("spacing is only for bare arrays; a CTVolume carries its own")
            return _checked_volume(item, "volume"), 0.0
        if isinstance(item, np.ndarray) or hasattr(item, "__array__"):
            if spacing is None:
                raise ValueError(
                    "spacing is required for a bare array: segment(array, spacing=(dz, dy, dx)) in mm"
                )
            arr = np.asarray(item)
            if arr.ndim != 3:
                raise ValueError(f"item must be a 3D array (D, H, W), got shape {arr.shape}")
            if arr.dtype.kind not in "iuf" or arr.dtype.itemsize > 8:
                raise TypeError(f"item must hold integer or float HU values, got dtype {arr.dtype}")
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise ValueError("item contains NaN or Inf values; a CT volume must be finite")
            sp = checked_spacing(spacing)
            return _checked_volume(CTVolume.from_array(arr, spacing=sp), "array"), 0.0
        raise TypeError(
            f"item must be a path, a CTVolume or a (D, H, W) array with spacing, got {type(item).__name__}"
        )

    # -- public API -------------------------------------------------------------------------------
    def segment(self, item: Any, *, spacing: Sequence[float] | None = None) -> Result:
        """Segment one CT volume.

        Args:
            item: a NIfTI file or DICOM series folder, a :class:`resunet_trt.io.CTVolume`, or a bare
                (D, H, W) array of HU values (then ``spacing`` is required).
            spacing: (dz, dy, dx) in mm, only for bare arrays.

        Returns:
            the :class:`Result`; ``labels`` are (D, H, W) uint8 in the volume's canonical grid.

        Raises:
            ValueError/TypeError: bad input (a file's errors name the file).
            RuntimeError: a backend or CUDA failure.
        """
        volume, t_read = self._as_volume(item, spacing)
        return self._segment_volume(volume, t_read)

    def _segment_volume(self, volume: CTVolume, t_read: float) -> Result:
        """The pipeline on a checked CTVolume; ``t_read`` is the time it took to read (0 for arrays)."""
        t_start = time.perf_counter()
        timings = dict.fromkeys(STAGES, 0.0)
        timings["read"] = t_read
        if self.device.startswith("cuda"):
            labels, lesions, counts = self._run_gpu(volume, timings)
        else:
            labels, lesions, counts = self._run_cpu(volume, timings)
        voxel_ml = float(np.prod(volume.spacing)) / 1000.0
        liver_ml = counts[0] * voxel_ml
        tumor_ml = counts[1] * voxel_ml
        timings["total"] = t_read + time.perf_counter() - t_start
        result = Result(
            labels=labels,
            volume=volume,
            lesions=lesions,
            liver_volume_ml=liver_ml,
            tumor_volume_ml=tumor_ml,
            tumor_burden=tumor_ml / liver_ml if liver_ml > 0 else 0.0,
            timings=timings,
            info={
                "backend": self.backend.name,
                "device": self.backend.device,
                "precision": self.backend.precision,
                "plane_size": list(self.metadata.plane_size),
                "context": int(self.metadata.context),
                "window": list(self.metadata.window),
                "batch_size": self.batch_size,
                "min_lesion_mm3": self.min_lesion_mm3,
                "min_lesion_voxels": self._lesion_floor(volume),
                "connectivity": self.connectivity,
                "tta": self.tta,
                "anatomy": self.anatomy,
                "pixel_mm": self.metadata.pixel_mm,
                "slice_mm": self.metadata.slice_mm,
                "model": self._model_name(),
            },
        )
        for warning in result.warnings:
            logger.warning("%s: %s", volume.source or "volume", warning)
        return result

    def segment_batch(self, items: Iterable[Any]) -> list[Result]:
        """Segment several volumes, in order; the next file is read while this one is segmented.

        Args:
            items: paths, CTVolumes, or ``(array, spacing)`` pairs.

        Returns:
            one :class:`Result` per item. The first error propagates (see :meth:`segment_files` to skip
            bad cases).
        """
        return [self._segment_volume(*read()) for read in self._prefetched(list(items))]

    def _read_item(self, item: Any, series_uid: str | None = None) -> tuple[CTVolume, float]:
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], np.ndarray):
            return self._as_volume(item[0], item[1])
        return self._as_volume(item, None, series_uid)

    def _prefetched(
        self, items: list[Any], series_uid: str | None = None
    ) -> Generator[Callable[[], tuple[CTVolume, float]], None, None]:
        """Yield, per item, a call returning its (CTVolume, read seconds); item i + 1 is read in a background
        thread while the caller works on item i (reading and decompressing release the GIL)."""
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="resunet-read") as pool:
            queued = deque(pool.submit(self._read_item, item, series_uid) for item in items[:1])
            for i in range(len(items)):
                if i + 1 < len(items):
                    queued.append(pool.submit(self._read_item, items[i + 1], series_uid))
                yield queued.popleft().result

    def segment_files(
        self,
        paths: Iterable[str | os.PathLike[str]],
        out_dir: str | os.PathLike[str],
        *,
        overlay: bool = False,
        report: bool = True,
        keep_results: bool = True,
        series_uid: str | None = None,
        mask_format: str = "auto",
    ) -> list[FileOutcome]:
        """Segment files and write ``<case>_mask.nii.gz`` (+ ``_report.json``, ``_overlay.png``) into ``out_dir``.

        A case that fails (unreadable, not a CT, a failed write) is logged and recorded with its reason; the
        others go on. Every output is written atomically, so a failure leaves no partial file, and the outputs
        a failed case had already written are removed. Output names are distinct by construction
        (:func:`output_names`: a repeated case name gets ``_2``, ``_3``...), and a case whose name another case of
        this call has already written to fails rather than overwrite it. Files left by an earlier call in
        ``out_dir`` are replaced.

        Args:
            paths: NIfTI files and DICOM series folders.
            out_dir: output folder (created when missing).
            overlay: also write a PNG overlay per case.
            report: also write the JSON lesion report per case.
            keep_results: keep each case's :class:`Result` (labels and CT) in its outcome; False keeps only
                the small ``summary``, so that memory does not grow with the number of cases.
            series_uid: the SeriesInstanceUID to read from DICOM folders that hold several series.
            mask_format: ``"nifti"`` (``<case>_mask.nii.gz``), ``"dicom-seg"`` (``<case>_seg.dcm``, a DICOM
                Segmentation of the source series, see :mod:`resunet_trt.dicom_seg`), ``"both"``, or
                ``"auto"``: both for DICOM input, NIfTI otherwise (see :func:`mask_outputs`).

        Returns:
            one :class:`FileOutcome` per input, in order.
        """
        if mask_format not in MASK_FORMATS:
            raise ValueError(f"mask_format must be one of {', '.join(MASK_FORMATS)}, got {mask_format!r}")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        items = [Path(p) for p in paths]
        planned = iter(output_names(items))
        claimed: set[str] = set()  # case names this call has written under (casefolded)
        outcomes: list[FileOutcome] = []
        reads = self._prefetched(items, series_uid)
        bar = _progress(items, enabled=self.progress, desc="cases", unit="case")
        for path in bar:
            read = next(reads)
            name = next(planned)
            outcome = FileOutcome(path=path, ok=False)
            try:
                self._in_files = True
                try:
                    result = self._segment_volume(*read())
                finally:
                    self._in_files = False
                if name.casefold() in claimed:  # never reached with output_names; checked before any write
                    raise FileExistsError(f"{out / name}_*: written by another input of this run, not overwritten")
                claimed.add(name.casefold())
                outcome.outputs = self.write_outputs(
                    result, out, name, overlay=overlay, report=report, mask_format=mask_format
                )
                outcome.ok, outcome.summary = True, result.to_report(case=name)
                outcome.result = result if keep_results else None
            except Exception as exc:  # noqa: BLE001 - one bad case must not stop the others
                outcome.error = str(_name_file(exc, path))
                logger.error("%s", outcome.error)
                # A failed case leaves nothing behind: no mask without its report, no half of a case.
                for written in outcome.outputs.values():
                    written.unlink(missing_ok=True)
                outcome.outputs.clear()
            outcomes.append(outcome)
        reads.close()
        return outcomes

    def write_outputs(
        self,
        result: Result,
        out_dir: str | os.PathLike[str],
        name: str,
        *,
        overlay: bool = False,
        report: bool = True,
        mask_format: str = "auto",
    ) -> dict[str, Path]:
        """Write one case's ``<name>_mask.nii.gz`` (+ ``_overlay.png``, ``_report.json``) into ``out_dir``.

        Each file is written atomically; when one write fails, the files this call already wrote are removed
        (no mask without its report) and the error propagates. Sets ``result.timings["write"]``.

        Args:
            result: the case's :class:`Result`.
            out_dir: an existing output folder.
            name: the case name the files are named after (unique within ``out_dir``).
            overlay: also write the PNG overlay.
            report: also write the JSON lesion report.
            mask_format: ``"auto"``, ``"nifti"``, ``"dicom-seg"`` (``<name>_seg.dcm``) or ``"both"`` (see
                :func:`mask_outputs`).

        Returns:
            kind (``"mask"``, ``"dicom_seg"``, ``"overlay"``, ``"report"``) -> written path.
        """
        from .io import save_mask

        out = Path(out_dir)
        outputs: dict[str, Path] = {}
        t0 = time.perf_counter()
        try:
            nifti, dicom_seg = mask_outputs(mask_format, result.volume)
            if nifti:
                mask_path = out / f"{name}_mask.nii.gz"
                save_mask(mask_path, result.labels, like=result.volume)
                outputs["mask"] = mask_path
            if dicom_seg:
                from .dicom_seg import write_dicom_seg

                seg_path = out / f"{name}_seg.dcm"
                write_dicom_seg(
                    seg_path,
                    result.labels,
                    like=result.volume,
                    model_sha256=self.model_sha256,
                    model_name=Path(self.backend.path).name if getattr(self.backend, "path", None) else None,
                )
                outputs["dicom_seg"] = seg_path
            if overlay:
                from .overlay import write_overlay

                overlay_path = out / f"{name}_overlay.png"
                lo, hi = self.metadata.window
                write_overlay(overlay_path, result, window=(float(lo), float(hi)), case=name)
                outputs["overlay"] = overlay_path
            if report:
                from .report import write_report

                report_path = out / f"{name}_report.json"
                # The report's own write time is the one stage it cannot contain.
                result.timings["write"] = time.perf_counter() - t0
                write_report(report_path, result.to_report(case=name))
                outputs["report"] = report_path
        except BaseException:
            for written in outputs.values():
                written.unlink(missing_ok=True)
            raise
        result.timings["write"] = time.perf_counter() - t0
        return outputs

    def _lesion_floor(self, volume: CTVolume) -> int:
        """Tumor components with fewer voxels than this become liver (``min_lesion_mm3`` at this spacing)."""
        if self.min_lesion_voxels is not None:
            return self.min_lesion_voxels
        voxel_mm3 = float(np.prod(volume.spacing))
        return int(math.ceil(self.min_lesion_mm3 / voxel_mm3 - 1e-9)) if voxel_mm3 > 0 else 0

    def _model_name(self) -> str:
        path = getattr(self.backend, "path", None)
        return Path(path).name if path is not None else self.backend.name

    def _plan(self, volume: CTVolume) -> VolumePlan:
        return volume_plan(self.metadata, volume.hu.shape, volume.spacing)

    def _net_input(self, hu: Any, start: int, stop: int, plan: VolumePlan) -> Any:
        """Network input (stop - start, K, h, w) for slices [start, stop) of ``hu`` (numpy or CUDA array)."""
        from . import kernels

        meta = self.metadata
        return kernels.preprocess(
            hu,
            window=tuple(meta.window),
            out_size=plan.out_size,
            context=meta.context,
            dtype=self._input_dtype,
            start=start,
            stop=stop,
            **plan.kernel_mapping(),
            slice_step=plan.slice_step,
        )

    def _infer(self, batch: Any) -> Any:
        """Logits of one slab; with ``tta``, averaged with those of the slab's context slices reversed."""
        logits = self.backend.infer(batch)
        if not self.tta:
            return logits
        flipped = batch[:, ::-1]
        xp = np if isinstance(batch, np.ndarray) else _device.cupy()
        other = self.backend.infer(xp.ascontiguousarray(flipped))
        return (logits.astype(xp.float32) + other.astype(xp.float32)) * 0.5

    def _refine(self, labels: np.ndarray, volume: CTVolume) -> np.ndarray | None:
        """The labels after the anatomy rule, or None when it changed nothing."""
        if not self.anatomy:
            return None
        from . import kernels
        from .anatomy import drop_organs_above_liver

        refined, removed_ml = drop_organs_above_liver(labels, volume.spacing)
        if removed_ml <= 0:
            return None
        return kernels.postprocess(refined, min_lesion_voxels=0, connectivity=self.connectivity)

    # -- CPU path ---------------------------------------------------------------------------------
    def _run_cpu(
        self, volume: CTVolume, timings: dict[str, float]
    ) -> tuple[np.ndarray, list, tuple[int, int]]:
        from . import kernels
        from .report import build_lesions

        hu = volume.hu
        depth, height, width = hu.shape
        plan = self._plan(volume)
        labels = np.empty((depth, height, width), dtype=np.uint8)
        bar = self.progress and not self._in_files

        def infer(batch: np.ndarray) -> tuple[Any, float]:
            t = time.perf_counter()
            return self._infer(batch), time.perf_counter() - t

        # The stages overlap: the network runs slab i in a worker thread while this thread preprocesses slab
        # i + 1 and decodes slab i - 1 (every backend and our kernels release the GIL). Alive at once: the
        # input of the slab in the network, the input being prepared and the logits being decoded.
        t_loop = time.perf_counter()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="resunet-infer") as pool:
            pending: tuple[int, int, Future[tuple[Any, float]]] | None = None
            for start, stop in _progress(slabs(depth, self.batch_size), enabled=bar, desc="slabs", leave=False):
                t0 = time.perf_counter()
                batch = self._net_input(hu, start, stop, plan)
                timings["preprocess"] += time.perf_counter() - t0
                previous, logits = pending, None
                if previous is not None:
                    logits, t_net = previous[2].result()
                    timings["infer"] += t_net
                pending = (start, stop, pool.submit(infer, batch))
                del batch
                if previous is not None:
                    self._decode_cpu(logits, labels, previous[0], previous[1], timings, plan)
                    del logits
            if pending is not None:
                logits, t_net = pending[2].result()
                timings["infer"] += t_net
                self._decode_cpu(logits, labels, pending[0], pending[1], timings, plan)
        timings["slabs_wall"] = time.perf_counter() - t_loop
        t0 = time.perf_counter()
        labels = kernels.postprocess(
            labels, min_lesion_voxels=self._lesion_floor(volume), connectivity=self.connectivity
        )
        refined = self._refine(labels, volume)
        if refined is not None:
            labels = refined
        stats = kernels.lesion_stats(labels, connectivity=self.connectivity)
        lesions = build_lesions(stats, volume=volume)
        liver_voxels = int(np.count_nonzero(labels))
        tumor_voxels = int(sum(les.voxels for les in lesions))
        timings["postprocess"] = time.perf_counter() - t0
        return labels, lesions, (liver_voxels, tumor_voxels)

    @staticmethod
    def _decode_cpu(
        logits: Any, labels: np.ndarray, start: int, stop: int, timings: dict[str, float], plan: VolumePlan
    ) -> None:
        """Write the labels of slices [start, stop) from their logits (N, C, h, w) into ``labels`` (D, H, W)."""
        from . import kernels

        t0 = time.perf_counter()
        labels[start:stop] = kernels.logits_to_labels(logits, out_size=labels.shape[1:], **plan.kernel_mapping())
        timings["decode"] += time.perf_counter() - t0

    # -- GPU path ---------------------------------------------------------------------------------
    def _run_gpu(
        self, volume: CTVolume, timings: dict[str, float]
    ) -> tuple[np.ndarray, list, tuple[int, int]]:
        import cupy as cp

        from . import kernels
        from .report import build_lesions

        meta = self.metadata
        hu = np.ascontiguousarray(volume.hu)
        depth, height, width = hu.shape
        vplan = self._plan(volume)
        bs = self.batch_size
        plan = slabs(depth, bs)
        # Context slices reach slice_step input slices apart (interpolated): the upload halo grows with it.
        needs = slab_upload_needs(depth, bs, math.ceil((meta.context // 2) * vplan.slice_step))
        slice_bytes = height * width * hu.itemsize
        device_index = int(self.device.split(":")[1])

        with cp.cuda.Device(device_index):
            compute = cp.cuda.Stream(non_blocking=True)
            copy = cp.cuda.Stream(non_blocking=True)
            with compute:  # CuPy's pool keeps blocks per stream: allocate where they will be used and freed
                d_hu = cp.empty((depth, height, width), dtype=cp.int16)
                d_labels = cp.empty((depth, height, width), dtype=cp.uint8)
            # Two pinned staging buffers: the host fills one while the copy engine drains the other.
            pinned = [cp.cuda.alloc_pinned_memory(bs * slice_bytes) for _ in range(2)]
            staging = [np.frombuffer(p, dtype=np.int16, count=bs * height * width) for p in pinned]
            copied: list[Any] = []  # event per upload chunk, recorded on the copy stream
            upload_events: list[tuple[Any, Any]] = []
            host_staging_s = 0.0

            def enqueue_upload(chunk: int) -> None:
                nonlocal host_staging_s
                start, stop = plan[chunk]
                n = stop - start
                buf = chunk % 2
                if chunk >= 2:
                    copied[chunk - 2].synchronize()  # its staging buffer is free once that copy has run
                t0 = time.perf_counter()
                staging[buf][: n * height * width] = hu[start:stop].reshape(-1)
                host_staging_s += time.perf_counter() - t0
                begin, done = cp.cuda.Event(), cp.cuda.Event()
                begin.record(copy)
                d_hu[start:stop].data.copy_from_host_async(pinned[buf].ptr, n * slice_bytes, stream=copy)
                done.record(copy)
                copied.append(done)
                upload_events.append((begin, done))

            stage_events: list[tuple[Any, Any, Any, Any]] = []
            t_wall = time.perf_counter()
            try:
                bar = self.progress and not self._in_files
                for k, (start, stop) in enumerate(_progress(plan, enabled=bar, desc="slabs", leave=False)):
                    # Queue uploads up to one chunk past what this slab reads, so the next copy overlaps compute.
                    while len(copied) <= min(len(plan) - 1, needs[k] + 1):
                        enqueue_upload(len(copied))
                    compute.wait_event(copied[needs[k]])
                    with compute:
                        e0, e1, e2, e3 = (cp.cuda.Event() for _ in range(4))
                        e0.record(compute)
                        batch = self._net_input(d_hu, start, stop, vplan)
                        e1.record(compute)
                        logits = self._infer(batch)
                        e2.record(compute)
                        d_labels[start:stop] = kernels.logits_to_labels(
                            logits, out_size=(height, width), **vplan.kernel_mapping()
                        )
                        e3.record(compute)
                        stage_events.append((e0, e1, e2, e3))
                        del batch, logits
                with compute:
                    d_hu = None  # the CT is no longer needed on the device; its memory serves postprocessing
                    p0, p1 = cp.cuda.Event(), cp.cuda.Event()
                    p0.record(compute)
                    d_post = kernels.postprocess(
                        d_labels, min_lesion_voxels=self._lesion_floor(volume), connectivity=self.connectivity
                    )
                    del d_labels
                    stats = kernels.lesion_stats(d_post, connectivity=self.connectivity)
                    liver_voxels_d = cp.count_nonzero(d_post)
                    p1.record(compute)
                    labels = np.empty((depth, height, width), dtype=np.uint8)
                    t_down = time.perf_counter()
                    d_post.get(stream=compute, out=labels)
                    liver_voxels = int(liver_voxels_d.get(stream=compute))
                    compute.synchronize()
                    timings["download"] = time.perf_counter() - t_down
            finally:
                # Never hand the pinned buffers back to CuPy's pool while a copy from them may be pending.
                copy.synchronize()
            t_device = time.perf_counter() - t_wall
            t0 = time.perf_counter()
            refined = self._refine(labels, volume)  # on the host: a rare case, and the labels are here already
            if refined is not None:
                labels = refined
                stats = kernels.lesion_stats(labels, connectivity=self.connectivity)
                liver_voxels = int(np.count_nonzero(labels))
            t_refine = time.perf_counter() - t0

            for e0, e1, e2, e3 in stage_events:
                timings["preprocess"] += cp.cuda.get_elapsed_time(e0, e1) / 1e3
                timings["infer"] += cp.cuda.get_elapsed_time(e1, e2) / 1e3
                timings["decode"] += cp.cuda.get_elapsed_time(e2, e3) / 1e3
            timings["upload"] = host_staging_s + sum(
                cp.cuda.get_elapsed_time(b, d) / 1e3 for b, d in upload_events
            )
            timings["postprocess"] = cp.cuda.get_elapsed_time(p0, p1) / 1e3 + t_refine
            timings["device_wall"] = t_device
            del d_post
            t0 = time.perf_counter()
            with compute:  # the lesion crop of the component labels comes down here
                lesions = build_lesions(stats, volume=volume)
            timings["postprocess"] += time.perf_counter() - t0
        tumor_voxels = int(sum(les.voxels for les in lesions))
        return labels, lesions, (liver_voxels, tumor_voxels)


# --------------------------------------------------------------------------------------------------
# Internals
# --------------------------------------------------------------------------------------------------


def _array_summary(a: Any) -> str:
    """``uint8(33, 64, 64)``: what a repr shows of an array instead of its values."""
    shape = getattr(a, "shape", None)
    dtype = getattr(a, "dtype", None)
    if shape is None or dtype is None:
        return type(a).__name__
    return f"{np.dtype(dtype).name}{tuple(int(n) for n in shape)}"


def _checked_volume(volume: CTVolume, what: str) -> CTVolume:
    """Reject volumes the pipeline cannot run on, naming ``what`` (the file or argument)."""
    hu = volume.hu
    if hu.ndim != 3:
        raise ValueError(f"{what}: expected a 3D CT volume (D, H, W), got shape {hu.shape}")
    if min(hu.shape) < 1:
        raise ValueError(f"{what}: the CT volume is empty (shape {hu.shape})")
    if hu.dtype != np.int16:
        raise TypeError(f"{what}: CTVolume.hu must be int16 HU, got {hu.dtype}")
    return volume


def _name_file(exc: BaseException, path: str | os.PathLike[str]) -> BaseException:
    """Make sure an error message names the file it is about."""
    where = os.fspath(path)
    message = str(exc)
    if where in message or os.path.abspath(where) in message:
        return exc
    kind = type(exc) if isinstance(exc, (ValueError, TypeError, OSError, RuntimeError)) else RuntimeError
    try:
        return kind(f"{where}: {exc}")
    except TypeError:  # an exception type with a special constructor
        return RuntimeError(f"{where}: {type(exc).__name__}: {exc}")
