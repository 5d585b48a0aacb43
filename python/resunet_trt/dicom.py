"""DICOM series folders through pydicom (imported lazily): one CT series in, in the canonical orientation.

Slices are sorted by position along the slice normal; non-uniform spacing, missing or duplicate slices, mixed
sizes or orientations, gantry tilt, multi-frame images and modalities other than CT are refused with the reason
(see :mod:`resunet_trt.io` for the on-disk layout a DICOM series is given).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from .ct_values import _check_looks_like_ct, _to_int16
from .geometry import CTVolume, DiskGeometry

logger = logging.getLogger("resunet_trt.io")

_SLICE_SPACING_RTOL = 0.01


def read_dicom_series(folder: Path, *, series_uid: str | None) -> CTVolume:
    """The CT volume of one DICOM series in ``folder`` (see :func:`resunet_trt.io.load_ct`)."""
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError as exc:
        raise ImportError(f"{folder}: reading DICOM needs pydicom (pip install pydicom)") from exc

    series: dict[str, list[tuple[Path, Any]]] = {}
    for file in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            ds = pydicom.dcmread(file, defer_size="64 KB")
        except InvalidDicomError:
            logger.debug("%s: not a DICOM file, skipped", file)
            continue
        except Exception as exc:
            raise ValueError(
                f"{folder}: cannot read DICOM file {file.name} ({type(exc).__name__}: {exc})"
            ) from exc
        if "PixelData" not in ds:
            logger.debug("%s: DICOM file without pixel data, skipped", file)
            continue
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((file, ds))
    if not series:
        raise ValueError(f"{folder}: no DICOM images found in the folder")
    if series_uid is not None:
        if series_uid not in series:
            raise ValueError(
                f"{folder}: no series with SeriesInstanceUID {series_uid}; found: {_series_listing(series)}"
            )
        slices = series[series_uid]
    elif len(series) > 1:
        raise ValueError(
            f"{folder}: {len(series)} DICOM series in one folder; choose one by its SeriesInstanceUID "
            f"(resunet-seg --series-uid UID, or load_ct(..., series_uid=UID)): {_series_listing(series)}"
        )
    else:
        slices = next(iter(series.values()))

    modalities = {str(ds.get("Modality", "")) for _, ds in slices}
    if modalities != {"CT"}:
        raise ValueError(f"{folder}: modality {sorted(modalities)} is not CT")
    for file, ds in slices:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames > 1 or "PerFrameFunctionalGroupsSequence" in ds:
            raise ValueError(
                f"{folder}: {file.name} is a multi-frame image ({_sop_class_name(ds)}, {frames} frames); only "
                "series of single-frame CT slices are read: convert it to NIfTI (dcm2niix) or to single-frame "
                "slices first"
            )
    for file, ds in slices:
        missing = [
            tag
            for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")
            if ds.get(tag) is None
        ]
        if missing:
            raise ValueError(f"{folder}: {file.name} lacks {', '.join(missing)}")
    sizes = {(int(ds.Rows), int(ds.Columns)) for _, ds in slices}
    if len(sizes) > 1:
        raise ValueError(f"{folder}: mixed image sizes (rows, columns) {sorted(sizes)} in one series")
    rows, cols = sizes.pop()
    iop = np.array([_dicom_numbers(folder, file, ds, "ImageOrientationPatient", 6) for file, ds in slices])
    if np.max(np.abs(iop - iop[0])) > 1e-4:
        raise ValueError(f"{folder}: slices have different ImageOrientationPatient")
    row_dir, col_dir = iop[0, :3], iop[0, 3:]
    normal = np.cross(row_dir, col_dir)
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
        raise ValueError(
            f"{folder}: ImageOrientationPatient {iop[0].tolist()} is not two orthogonal unit vectors"
        )
    pixel_spacing = np.array([_dicom_numbers(folder, file, ds, "PixelSpacing", 2) for file, ds in slices])
    if np.max(np.abs(pixel_spacing - pixel_spacing[0])) > 1e-4:
        raise ValueError(f"{folder}: slices have different PixelSpacing")
    dy, dx = float(pixel_spacing[0, 0]), float(pixel_spacing[0, 1])  # row spacing, column spacing
    if not all(math.isfinite(v) and v > 0 for v in (dy, dx)):
        raise ValueError(f"{folder}: PixelSpacing {pixel_spacing[0].tolist()} is not two positive sizes in mm")

    positions = np.array([_dicom_numbers(folder, file, ds, "ImagePositionPatient", 3) for file, ds in slices])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    slices = [slices[i] for i in order]
    positions, along = positions[order], along[order]
    step_vec = _check_slice_positions(folder, positions, along, normal, slices)

    volume = np.empty((len(slices), rows, cols), dtype=np.int16)
    for k, (file, ds) in enumerate(slices):
        try:
            pixels = ds.pixel_array
        except Exception as exc:
            raise ValueError(
                f"{folder}: cannot decode the pixels of {file.name} ({type(exc).__name__}: {exc})"
            ) from exc
        if pixels.shape != (rows, cols):
            raise ValueError(
                f"{folder}: {file.name} has pixel array shape {pixels.shape}, expected {(rows, cols)}"
            )
        slope = _dicom_rescale(folder, file, ds, "RescaleSlope", 1.0)
        intercept = _dicom_rescale(folder, file, ds, "RescaleIntercept", 0.0)
        if slope == 0.0:
            raise ValueError(f"{folder}: {file.name} has RescaleSlope 0 (every pixel would be one value)")
        if slope == 1.0 and intercept.is_integer():
            hu = pixels.astype(np.int32) + int(intercept)
        else:
            hu = pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
        volume[k] = _to_int16(hu, f"{folder}/{file.name}")

    # The usual NIfTI layout of a DICOM series: i = column, j = row, k = slice (ascending along the normal).
    lps = np.eye(4)
    lps[:3, 0] = row_dir * dx
    lps[:3, 1] = col_dir * dy
    lps[:3, 2] = step_vec
    lps[:3, 3] = positions[0]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # DICOM patient LPS -> RAS
    disk = volume.transpose(2, 1, 0)
    _check_looks_like_ct(disk, str(folder))
    geometry = DiskGeometry.from_affine(disk.shape, affine)
    first = slices[0][1]
    return CTVolume.from_disk(
        disk,
        geometry,
        source=str(folder),
        meta={
            "format": "dicom",
            "series_uid": str(first.get("SeriesInstanceUID", "")),
            "series_description": str(first.get("SeriesDescription", "")),
            "n_files": len(slices),
            "study_uid": str(first.get("StudyInstanceUID", "")),
            "frame_of_reference_uid": str(first.get("FrameOfReferenceUID", "")),
            # Per source slice, in the on-disk slice order k (ascending along the slice normal): what a
            # DICOM-SEG references and where its frames sit. geometry.disk_axis_in_canonical(2) maps k to
            # the canonical grid.
            "files": tuple(str(file) for file, _ in slices),
            "sop_instance_uids": tuple(str(ds.get("SOPInstanceUID", "")) for _, ds in slices),
            "image_positions_lps": tuple(tuple(float(v) for v in pos) for pos in positions),
        },
    )


def _dicom_numbers(folder: Path, file: Path, ds: Any, keyword: str, count: int) -> list[float]:
    """``count`` finite numbers from a multi-valued DICOM attribute, or a ValueError naming the file."""
    value = ds.get(keyword)
    values = list(value) if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) != count or not all(math.isfinite(v) for v in numbers):
        raise ValueError(f"{folder}: {file.name} has {keyword} {value!r}; expected {count} finite numbers")
    return numbers


def _dicom_rescale(folder: Path, file: Path, ds: Any, keyword: str, default: float) -> float:
    """RescaleSlope/RescaleIntercept as a finite float (``default`` when absent or empty)."""
    value = ds.get(keyword)
    if value is None or str(value).strip() == "":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or abs(number) > 4e6:
        raise ValueError(f"{folder}: {file.name} has {keyword} {value!r}; expected a finite number up to 4e6")
    return number


def _sop_class_name(ds: Any) -> str:
    uid = ds.get("SOPClassUID")
    return str(getattr(uid, "name", uid)) if uid else "unknown SOP class"


def _series_listing(series: dict[str, list[tuple[Path, Any]]]) -> str:
    """One line per series found in a folder: UID, description, slice count and modality, largest first."""
    rows = sorted(series.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    return "; ".join(
        f"{uid or '(no UID)'} '{items[0][1].get('SeriesDescription', '')}' "
        f"({len(items)} slices, {items[0][1].get('Modality', '?')})"
        for uid, items in rows
    )


def _check_slice_positions(
    folder: Path, positions: np.ndarray, along: np.ndarray, normal: np.ndarray, slices: list[tuple[Path, Any]]
) -> np.ndarray:
    """Refuse duplicate, missing or unevenly spaced slices and gantry tilt; return the slice step vector (LPS mm)."""
    if len(slices) == 1:
        ds = slices[0][1]
        given = ds.get("SpacingBetweenSlices")
        given = ds.get("SliceThickness") if given is None else given
        thickness = float(given) if given is not None and str(given).strip() else math.nan
        if not (math.isfinite(thickness) and thickness > 0):  # never guess: a guess would invent every mL
            raise ValueError(
                f"{folder}: one slice ({slices[0][0].name}) without a positive SpacingBetweenSlices or "
                f"SliceThickness (got {given!r}): its voxel volume is unknown"
            )
        return normal * thickness
    gaps = np.diff(along)
    if np.any(gaps < 1e-3):
        k = int(np.argmin(gaps))
        raise ValueError(
            f"{folder}: {slices[k][0].name} and {slices[k + 1][0].name} share the slice position {along[k]:.3f} mm "
            "(duplicate slices or several acquisitions in one series)"
        )
    step = float(np.median(gaps))
    off = np.abs(gaps - step) > _SLICE_SPACING_RTOL * step
    if np.any(off):
        k = int(np.flatnonzero(off)[0])
        ratio = gaps[k] / step
        if ratio > 1.5 and abs(ratio - round(ratio)) < 0.1:
            raise ValueError(
                f"{folder}: missing slices: a gap of {gaps[k]:.3f} mm between {slices[k][0].name} and "
                f"{slices[k + 1][0].name} (positions {along[k]:.3f} and {along[k + 1]:.3f} mm) where the series "
                f"steps {step:.3f} mm"
            )
        raise ValueError(
            f"{folder}: non-uniform slice spacing: steps range over [{gaps.min():.3f}, {gaps.max():.3f}] mm "
            f"(median {step:.3f} mm, tolerance {100 * _SLICE_SPACING_RTOL:g} %)"
        )
    step_vec = (positions[-1] - positions[0]) / (len(positions) - 1)
    in_plane = step_vec - (step_vec @ normal) * normal
    if np.linalg.norm(in_plane) > 0.01 * step:
        raise ValueError(
            f"{folder}: slice positions are not stacked along the slice normal (gantry tilt of "
            f"{math.degrees(math.atan2(np.linalg.norm(in_plane), step_vec @ normal)):.2f} degrees); resample first"
        )
    return step_vec
