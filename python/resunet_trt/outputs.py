"""A case's output files: the mask (NIfTI and/or DICOM-SEG), the JSON report and the PNG overlay."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .io import CTVolume
    from .results import Result

logger = logging.getLogger(__name__)

__all__ = ["MASK_FORMATS", "mask_outputs", "write_outputs"]

#: Mask formats of :meth:`Segmenter.segment_files`: "auto" is "both" for DICOM input, "nifti" otherwise.
MASK_FORMATS = ("auto", "nifti", "dicom-seg", "both")


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


def write_outputs(
    result: Result,
    out_dir: str | os.PathLike[str],
    name: str,
    *,
    overlay: bool = False,
    report: bool = True,
    mask_format: str = "auto",
    window: tuple[float, float] = (-200.0, 250.0),
    model_sha256: str | None = None,
    model_name: str | None = None,
) -> dict[str, Path]:
    """Write one case's ``<name>_mask.nii.gz`` (+ ``_seg.dcm``, ``_overlay.png``, ``_report.json``) into ``out_dir``.

    Each file is written atomically; when one write fails, the files this call already wrote are removed
    (no mask without its report) and the error propagates. Sets ``result.timings["write"]``.

    Args:
        result: the case's :class:`~resunet_trt.results.Result`.
        out_dir: an existing output folder.
        name: the case name the files are named after (unique within ``out_dir``).
        overlay: also write the PNG overlay.
        report: also write the JSON lesion report.
        mask_format: ``"auto"``, ``"nifti"``, ``"dicom-seg"`` or ``"both"`` (see :func:`mask_outputs`).
        window: HU window (lo, hi) of the overlay: the model's.
        model_sha256: the model file's sha256, recorded in a DICOM-SEG.
        model_name: the model file's name, recorded in a DICOM-SEG.

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
                model_sha256=model_sha256,
                model_name=model_name,
            )
            outputs["dicom_seg"] = seg_path
        if overlay:
            from .overlay import write_overlay

            overlay_path = out / f"{name}_overlay.png"
            write_overlay(overlay_path, result, window=window, case=name)
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
