"""DICOM-SEG output for DICOM input: the label map as a DICOM Segmentation that files under the source study.

A CT read from a DICOM series folder (:func:`resunet_trt.io.load_ct`) remembers, per source slice and in the
series' own slice order k (ascending along the slice normal), the file, its SOPInstanceUID and its
ImagePositionPatient. :func:`write_dicom_seg` writes the labels as one multi-frame BINARY Segmentation
(highdicom) with

* two segments: 1 "Liver" (Anatomical Structure / Liver) and 2 "Liver tumor" (Morphologically Abnormal
  Structure / Neoplasm, anatomic region Liver), SNOMED CT codes, segment algorithm type AUTOMATIC and the
  algorithm identified by name, version and the model file's sha256;
* one frame per source slice and segment where the segment has pixels (empty frames are left out, as usual
  for DICOM-SEG; a segment with no pixels at all, e.g. no tumor, is described but has no frames; an all-empty
  mask keeps every frame), each frame referencing its source instance and sitting at that slice's
  ImagePositionPatient, in the source's pixel grid;
* new Series and SOP Instance UIDs; patient, study and frame of reference copied from the source, so the SEG
  files under the same study.

The frames come from :meth:`resunet_trt.io.DiskGeometry.from_canonical`: the DICOM reader lays a series out on
disk as (i = column, j = row, k = slice), so ``from_canonical(labels).transpose(2, 1, 0)`` is the mask as
(slice, row, column) in the source's own order and orientation, the same mapping that writes the NIfTI mask.

highdicom and pydicom are imported only when a SEG is written (``pip install resunet-trt[dicom]``).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from .io import CTVolume

__all__ = ["SEGMENT_LABELS", "dicom_seg_unavailable_reason", "source_frames", "write_dicom_seg"]

logger = logging.getLogger(__name__)

#: Segment number -> segment label, as written; the numbers are the label values (LiTS convention).
SEGMENT_LABELS = {1: "Liver", 2: "Liver tumor"}

ALGORITHM_NAME = "resunet-trt"
_SEG_SERIES_NUMBER_OFFSET = 1000


def dicom_seg_unavailable_reason(volume: CTVolume) -> str | None:
    """Why a DICOM-SEG cannot be written for ``volume``, or None when it can.

    A SEG needs a CT read from a DICOM series whose slices carry SOP Instance, Study and Series UIDs (it
    references them), and highdicom installed.
    """
    meta = getattr(volume, "meta", None) or {}
    if meta.get("format") != "dicom":
        got = meta.get("format", "an unknown format")
        return f"a DICOM-SEG needs a DICOM series as input, got {got} input"
    uids = meta.get("sop_instance_uids") or ()
    if not uids or not all(uids) or not meta.get("study_uid") or not meta.get("series_uid"):
        return (
            "the source slices lack SOPInstanceUID, StudyInstanceUID or SeriesInstanceUID (an incompletely "
            "de-identified series?), so a DICOM-SEG cannot reference them"
        )
    if len(set(uids)) != len(uids):
        return "two source slices share one SOPInstanceUID, so a DICOM-SEG cannot reference them"
    try:
        import highdicom  # noqa: F401
    except ImportError:
        return "writing DICOM-SEG needs highdicom (pip install 'resunet-trt[dicom]')"
    return None


def source_frames(labels: np.ndarray, like: CTVolume) -> np.ndarray:
    """The labels as frames of the source series: (K, rows, columns), frame k on source slice k.

    Args:
        labels: (D, H, W) in ``like``'s canonical grid.
        like: the CT read from a DICOM series folder.

    Returns:
        uint8 (K, rows, columns) view: k in the series' slice order (``like.meta["sop_instance_uids"]``),
        rows and columns as in the source pixel data.
    """
    geometry = like.geometry
    if geometry is None:  # pragma: no cover - CTVolume always fills it in
        raise ValueError("like has no on-disk geometry")
    disk = geometry.from_canonical(labels)  # (i = column, j = row, k = slice), the DICOM reader's layout
    return np.asarray(disk).transpose(2, 1, 0)


def write_dicom_seg(
    path: str | os.PathLike[str],
    labels: np.ndarray,
    like: CTVolume,
    *,
    algorithm_version: str = __version__,
    model_sha256: str | None = None,
    model_name: str | None = None,
    series_description: str = "Liver and liver tumor (resunet-trt)",
) -> Path:
    """Write ``labels`` as a DICOM Segmentation of ``like``'s source series, atomically.

    Args:
        path: output file (``.dcm`` by convention).
        labels: uint8 (or other integer/bool) (D, H, W), 0 background, 1 liver, 2 tumor, in ``like``'s
            canonical grid (as :attr:`resunet_trt.segmenter.Result.labels`).
        like: the CT volume the labels belong to, read from a DICOM series folder by
            :func:`resunet_trt.io.load_ct` (its source files are read again, headers only).
        algorithm_version: the algorithm version recorded in the segments' Algorithm Identification.
        model_sha256: hex sha256 of the model file, recorded as an algorithm parameter and as the device
            serial number; None records "unknown".
        model_name: the model file's name, recorded as the Manufacturer's Model Name.
        series_description: the SEG series' description.

    Returns:
        The written path.

    Raises:
        TypeError: labels is not an integer/bool array, or like is not a CTVolume.
        ValueError: wrong shape or values, the input was not a usable DICOM series, or its files changed
            since they were read (the message names the file).
        ImportError: highdicom is not installed.
        OSError: the file cannot be written; no partial file is left behind.
    """
    from .files import atomic_write
    from .geometry import check_labels

    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    check_labels(labels, like)
    reason = dicom_seg_unavailable_reason(like)
    if reason is not None:
        if reason.startswith("writing DICOM-SEG needs"):
            raise ImportError(reason)
        raise ValueError(f"{like.source}: {reason}")
    if model_sha256 is not None and (
        not isinstance(model_sha256, str)
        or len(model_sha256) != 64
        or any(c not in "0123456789abcdef" for c in model_sha256)
    ):
        raise ValueError(f"model_sha256 must be 64 lowercase hex digits or None, got {model_sha256!r}")

    import highdicom as hd
    from pydicom.sr.codedict import codes

    sources = _source_datasets(like)
    frames = np.ascontiguousarray(source_frames(labels.astype(np.uint8, copy=False), like))
    first = sources[0]
    if frames.shape[1:] != (int(first.Rows), int(first.Columns)):  # pragma: no cover - guarded by the reader
        raise ValueError(
            f"{like.source}: frames {frames.shape[1:]} differ from the source's (rows, columns) "
            f"{(int(first.Rows), int(first.Columns))}"
        )

    algorithm = hd.AlgorithmIdentificationSequence(
        name=ALGORITHM_NAME,
        family=codes.DCM.ArtificialIntelligence,
        version=str(algorithm_version),
        parameters={"model_sha256": model_sha256 or "unknown", "model": model_name or "unknown"},
    )
    liver = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABELS[1],
        segmented_property_category=codes.SCT.AnatomicalStructure,
        segmented_property_type=codes.SCT.Liver,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )
    tumor = hd.seg.SegmentDescription(
        segment_number=2,
        segment_label=SEGMENT_LABELS[2],
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        anatomic_regions=[codes.SCT.Liver],
    )
    source_number = first.get("SeriesNumber")
    try:
        series_number = int(source_number) + _SEG_SERIES_NUMBER_OFFSET
    except (TypeError, ValueError):
        series_number = _SEG_SERIES_NUMBER_OFFSET
    # highdicom warns about the source's own attributes (a one-component patient name, say): facts about the
    # input that the SEG copies as they are, logged rather than raised since they do not make it invalid.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=frames,  # label-map style: value n is segment n
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[liver, tumor],
            series_instance_uid=hd.UID(),
            series_number=series_number,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=ALGORITHM_NAME,
            manufacturer_model_name=(model_name or ALGORITHM_NAME)[:64],
            software_versions=str(algorithm_version),
            device_serial_number=model_sha256 or "unknown",
            content_label="LIVER_SEG",
            content_description="Liver and liver tumor, automatic",
            series_description=series_description[:64],
            omit_empty_frames=True,
        )
    for w in caught:
        logger.info("%s: highdicom on the source's attributes: %s", like.source, w.message)
    target = Path(path)
    with atomic_write(target) as tmp:
        seg.save_as(tmp)
    logger.debug("wrote DICOM-SEG %s: %d frames", target, int(seg.NumberOfFrames))
    return target


def _source_datasets(like: CTVolume) -> list[Any]:
    """The source slices' headers (no pixel data) in the reader's slice order, checked against the reading."""
    import pydicom

    meta = like.meta
    files, uids = meta["files"], meta["sop_instance_uids"]
    positions = np.asarray(meta["image_positions_lps"], dtype=np.float64)
    datasets = []
    for k, (file, uid) in enumerate(zip(files, uids)):
        try:
            ds = pydicom.dcmread(file, stop_before_pixels=True)
        except Exception as exc:
            raise ValueError(
                f"{file}: cannot read the source slice again ({type(exc).__name__}: {exc})"
            ) from exc
        position = np.array([float(v) for v in ds.get("ImagePositionPatient") or (np.nan,) * 3])
        if str(ds.get("SOPInstanceUID", "")) != uid or not np.allclose(position, positions[k], atol=1e-3):
            raise ValueError(f"{file}: the source slice changed since the series was read")
        if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
            del ds.SpecificCharacterSet  # empty means the default repertoire; highdicom wants it absent then
        datasets.append(ds)
    return datasets
