"""CT and mask files: NIfTI through nibabel, DICOM series folders through pydicom, one canonical orientation.

This module is the face of reading and writing: :func:`load_ct`, :func:`load_label`, :func:`save_mask` and
:class:`CTVolume`. The work lives in one module per concept: :mod:`resunet_trt.geometry` (orientation, affines,
the file's own layout), :mod:`resunet_trt.ct_values` (what HU values must look like), :mod:`resunet_trt.nifti`,
:mod:`resunet_trt.dicom`, and :mod:`resunet_trt.files` (atomic writes).

Every volume in memory is ``hu`` int16 (D, H, W) in the canonical orientation

* D: inferior -> superior (axial slices, feet to head),
* H: anterior -> posterior (rows of the radiological axial view, anterior at the top),
* W: patient right -> patient left (the patient's right on the image's left),

with ``spacing`` (dz, dy, dx) in mm and ``affine`` mapping the canonical voxel index (d, h, w, 1) to world RAS
coordinates in mm. Files may be stored in any orientation: the reader permutes and flips axes (never resamples)
with nibabel's orientation tools and keeps the on-disk geometry (:class:`DiskGeometry`), so :func:`save_mask`
writes a mask with exactly the input file's shape and affine, and it overlays the CT in 3D Slicer or ITK-SNAP.

Decisions worth knowing:

* HU are the scaled values (NIfTI scl_slope/scl_inter, DICOM RescaleSlope/RescaleIntercept), rounded to the
  nearest integer and clipped to int16 (a warning is logged when clipping changes values). DICOM padding such as
  -3024 HU outside the reconstruction field of view is kept as stored: it fits int16 and the network's HU window
  clips it anyway.
* NaN or Inf anywhere in a float image is refused (ValueError naming the file): it means missing or broken data,
  and filling it with a guess would hide that.
* Images that do not look like CT in HU are refused: no negative values (an 8-bit image, a mask, or CT stored
  without its rescale intercept), ten or fewer distinct values (a label map), or values beyond +-40000.
* DICOM series are sorted by position along the slice normal (row x column direction cosines); non-uniform
  spacing (more than 1 %), missing slices, duplicate positions, mixed image sizes or orientations, gantry tilt and
  modalities other than CT are refused with the reason. The on-disk layout of a DICOM series is taken as the
  ITK/3D Slicer conversion's (i = column, j = row, k = slice in ascending normal position, LPS turned into RAS),
  so a mask saved for a DICOM input matches the NIfTI that ITK or 3D Slicer would make of that series. dcm2niix
  stores the rows flipped (j reversed, with the affine to match): the same world positions, but not the same
  voxel array (:func:`load_label` reorients such a label).
  Multi-frame images (Enhanced or Legacy Converted Enhanced CT) are refused by name: convert them first. The
  volume's ``meta`` keeps, per slice in that k order, the file, SOPInstanceUID and ImagePositionPatient (and the
  study, series and frame of reference UIDs), which :mod:`resunet_trt.dicom_seg` needs to write a DICOM-SEG.
* ``.nii.gz`` is read and written through ISA-L's igzip when the ``isal`` package is installed, otherwise
  through nibabel's own gzip (zlib). On a 2-core machine, for a 512 x 512 x 400 int16 phantom (112 MB
  compressed), :func:`load_ct` took 1.1 s with igzip against 2.3 s with nibabel + zlib, and :func:`save_mask`
  0.04 s (benchmarks/results/pipeline_cpu_int8.json, ``files``; the README quotes the same run). Masks are
  written at igzip level 1: fast, and label maps compress well at any level (0.4 MB here).
"""

from __future__ import annotations

import logging
import os

from ._checks import checked_path
from .dicom import read_dicom_series
from .files import atomic_write, atomic_write_bytes
from .geometry import CANONICAL_AXCODES, CTVolume, DiskGeometry, canonical_affine
from .nifti import load_label, read_nifti_ct, save_mask

__all__ = [
    "CANONICAL_AXCODES",
    "CTVolume",
    "DiskGeometry",
    "atomic_write",
    "atomic_write_bytes",
    "canonical_affine",
    "load_ct",
    "load_label",
    "save_mask",
]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


def load_ct(path_or_dir: PathLike, *, series_uid: str | None = None) -> CTVolume:
    """Read a CT volume from a NIfTI file (.nii, .nii.gz) or a DICOM series folder.

    Args:
        path_or_dir: A NIfTI file, or a folder holding the DICOM files of one series (other files are skipped).
        series_uid: For a folder with several series: the SeriesInstanceUID to read.

    Returns:
        CTVolume with hu int16 (D, H, W) in the canonical orientation (D inferior->superior, H
        anterior->posterior, W patient right->left), spacing (dz, dy, dx) mm and the canonical affine; its
        ``geometry`` is the file's own layout, used by :func:`save_mask`.

    Raises:
        FileNotFoundError: The path does not exist.
        ValueError: The file cannot be read, is not a 3-D scalar image, has NaN/Inf, does not look like CT in
            HU, or the DICOM series is incomplete or inconsistent. The message names the file or folder.
    """
    path = checked_path(path_or_dir, "path_or_dir")
    if path.is_dir():
        try:
            return read_dicom_series(path, series_uid=series_uid)
        except ValueError as exc:  # a check deep in the geometry may not know the folder: name it
            if str(path) in str(exc):
                raise
            raise ValueError(f"{path}: {exc}") from exc
    if series_uid is not None:
        raise ValueError(f"series_uid is only for DICOM folders; {path} is a file")
    if path.suffix.lower() in (".dcm", ".ima"):
        raise ValueError(f"{path}: a single DICOM file; pass the folder that holds the whole series")
    return read_nifti_ct(path)
