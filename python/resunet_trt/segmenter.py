"""The pipeline: a CT volume in, liver and tumor labels, lesion statistics and timings out.

One volume flows through the same steps on both devices::

    CTVolume hu int16 (D, H, W)
      -> kernels.preprocess      one slab of ``batch_size`` slices at a time -> (N, K, h, w)
      -> backend.infer           -> logits (N, C, h, w)
      -> kernels.logits_to_labels -> uint8 (N, H, W), written into the label volume
      -> kernels.postprocess     largest liver component, tumor inside it, small lesions dropped
      -> kernels.lesion_stats    per-lesion numbers -> report.build_lesions

The CPU path (:mod:`resunet_trt.cpu_path`) overlaps the slabs so that pre- and postprocessing hide behind
inference; the GPU path (:mod:`resunet_trt.gpu_path`) keeps every step on the device. Inputs are read by
:mod:`resunet_trt.inputs`, outputs written by :mod:`resunet_trt.outputs`, and what comes out is a
:class:`resunet_trt.results.Result`.

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
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _device
from ._progress import progress as _progress
from .cpu_path import run_cpu
from .devices import cuda_status, resolve_device
from .gpu_path import run_gpu
from .inputs import as_volume, name_file, prefetched
from .naming import OUTPUT_SUFFIXES, case_name, output_names
from .outputs import MASK_FORMATS, mask_outputs, write_outputs
from .results import STAGES, FileOutcome, Result
from .slab_plan import VolumePlan, slab_upload_needs, slabs, volume_plan

if TYPE_CHECKING:  # pragma: no cover
    from .io import CTVolume
    from .report import Lesion

logger = logging.getLogger(__name__)

# What the pipeline's pieces offer, importable from here as before they had modules of their own.
__all__ = [
    "MASK_FORMATS",
    "OUTPUT_SUFFIXES",
    "STAGES",
    "FileOutcome",
    "Result",
    "Segmenter",
    "VolumePlan",
    "case_name",
    "cuda_status",
    "mask_outputs",
    "output_names",
    "resolve_device",
    "slab_upload_needs",
    "slabs",
    "volume_plan",
]


# --------------------------------------------------------------------------------------------------
# The segmenter
# --------------------------------------------------------------------------------------------------


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
        anatomy: remove an organ the network joined to the liver above its dome (the heart), and small lesions
            (up to 10 mL) that border liver over less than half of their surface (they lie outside it:
            gallbladder, bowel); see
            :mod:`resunet_trt.anatomy`.
        min_lesion_confidence: a lesion is kept only if the network's tumor probability reaches this somewhere in
            it; others become liver (the network hesitated there: dark vessels, partial volume). 0 keeps every
            lesion. See :mod:`resunet_trt.confidence`.
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
        min_lesion_confidence: float = 0.95,
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
        if (
            isinstance(min_lesion_confidence, bool)
            or not isinstance(min_lesion_confidence, (int, float, np.integer, np.floating))
            or not 0.0 <= float(min_lesion_confidence) < 1.0
        ):
            raise ValueError(f"min_lesion_confidence must be a probability in [0, 1), got {min_lesion_confidence!r}")
        if connectivity not in (6, 18, 26):
            raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity!r}")
        if model is not None and not isinstance(model, (str, os.PathLike)):
            raise TypeError(f"model must be a path or None, got {type(model).__name__}")
        self.batch_size = int(batch_size)
        self.min_lesion_mm3 = float(min_lesion_mm3)
        self.min_lesion_voxels = None if min_lesion_voxels is None else int(min_lesion_voxels)
        self.tta = bool(tta)
        self.anatomy = bool(anatomy)
        self.min_lesion_confidence = float(min_lesion_confidence)
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
            self.backend.precision,
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
            f"anatomy={self.anatomy}, min_lesion_confidence={self.min_lesion_confidence:g}, "
            f"connectivity={self.connectivity})"
        )

    # -- inputs -----------------------------------------------------------------------------------
    @staticmethod
    def _as_volume(
        item: Any, spacing: Sequence[float] | None, series_uid: str | None = None
    ) -> tuple[CTVolume, float]:
        return as_volume(item, spacing, series_uid)

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
                "min_lesion_confidence": self.min_lesion_confidence,
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
        return [self._segment_volume(*read()) for read in prefetched(list(items))]

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
        reads = prefetched(items, series_uid)
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
                outcome.error = str(name_file(exc, path))
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
        """Write one case's files into ``out_dir``: :func:`resunet_trt.outputs.write_outputs` (whose arguments
        these are) with this model's HU window for the overlay and its identity for a DICOM-SEG.

        Returns:
            kind (``"mask"``, ``"dicom_seg"``, ``"overlay"``, ``"report"``) -> written path.
        """
        lo, hi = self.metadata.window
        return write_outputs(
            result, out_dir, name, overlay=overlay, report=report, mask_format=mask_format,
            window=(float(lo), float(hi)), model_sha256=self.model_sha256, model_name=self._model_file_name(),
        )

    def _model_file_name(self) -> str | None:
        path = getattr(self.backend, "path", None)
        return Path(path).name if path else None

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

    def _refine(self, labels: np.ndarray, volume: CTVolume, sure: np.ndarray | None = None,
                plan: VolumePlan | None = None, *, inplace: bool = False) -> np.ndarray | None:
        """The labels after the anatomy rules and the lesion confidence floor (``sure``: bool (D, h, w) of
        :func:`resunet_trt.confidence.sure_tumor`, decoded with ``plan``), or None when they changed nothing.
        ``inplace``: the pipeline's own ``labels`` may be changed (no full-size copies)."""
        from .confidence import refine_labels

        return refine_labels(labels, volume.spacing, anatomy=self.anatomy, sure=sure,
                             mapping={} if plan is None else plan.kernel_mapping(), connectivity=self.connectivity,
                             inplace=inplace)

    # -- CPU path ---------------------------------------------------------------------------------
    def _run_cpu(
        self, volume: CTVolume, timings: dict[str, float]
    ) -> tuple[np.ndarray, list[Lesion], tuple[int, int]]:
        return run_cpu(self, volume, timings)


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
    ) -> tuple[np.ndarray, list[Lesion], tuple[int, int]]:
        return run_gpu(self, volume, timings)




# --------------------------------------------------------------------------------------------------
# Internals
# --------------------------------------------------------------------------------------------------
def _dtype_name(dtype: Any) -> str:
    name = np.dtype(dtype).name
    if name not in ("float16", "float32"):
        raise RuntimeError(f"backend wants input dtype {name}; only float16 and float32 are supported")
    return name
