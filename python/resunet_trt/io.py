"""CT and mask files: NIfTI through nibabel, DICOM series folders through pydicom, one canonical orientation.

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

import contextlib
import io
import logging
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from ._checks import checked_spacing

__all__ = [
    "CTVolume",
    "DiskGeometry",
    "atomic_write",
    "canonical_affine",
    "load_ct",
    "load_label",
    "save_mask",
]

logger = logging.getLogger(__name__)

#: nibabel orientation of the canonical axes (D, H, W): superior, posterior, patient left.
CANONICAL_AXCODES = ("S", "P", "L")
_CANONICAL_ORNT = axcodes2ornt(CANONICAL_AXCODES)

_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_GZIP_LEVEL = 1
_AFFINE_ATOL_MM = 1e-3  # float32 storage of qform/sform and DICOM decimal strings differ below this
_LABEL_LIKE_MAX_VALUES = 10
_HU_LIMIT = 40000.0
_SLICE_SPACING_RTOL = 0.01

PathLike = str | os.PathLike[str]


# ---------------------------------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------------------------------
def canonical_affine(spacing: Sequence[float], origin: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """The affine of a canonical (D, H, W) grid with no rotation.

    Args:
        spacing: (dz, dy, dx) in mm.
        origin: World RAS position (x, y, z) in mm of voxel (0, 0, 0).

    Returns:
        float64 (4, 4): d steps +dz along S, h steps +dy along P (-y in RAS), w steps +dx along L (-x in RAS).
    """
    dz, dy, dx = (float(s) for s in spacing)
    affine = np.zeros((4, 4))
    affine[0, 2] = -dx
    affine[1, 1] = -dy
    affine[2, 0] = dz
    affine[:3, 3] = [float(o) for o in origin]
    affine[3, 3] = 1.0
    return affine


def _spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    norms = np.linalg.norm(affine[:3, :3], axis=0)
    return float(norms[0]), float(norms[1]), float(norms[2])


def _check_affine(affine: Any, what: str) -> np.ndarray:
    try:
        arr = np.array(affine, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a 4x4 matrix of floats, got {affine!r}") from None
    if arr.shape != (4, 4):
        raise ValueError(f"{what} must be a 4x4 matrix, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} has NaN or Inf entries")
    if not np.allclose(arr[3], [0.0, 0.0, 0.0, 1.0]):
        raise ValueError(f"{what} must have last row [0, 0, 0, 1], got {arr[3].tolist()}")
    if abs(np.linalg.det(arr[:3, :3])) < 1e-12 or np.any(np.linalg.norm(arr[:3, :3], axis=0) < 1e-9):
        raise ValueError(f"{what} is singular (a zero voxel size or collinear axes): {arr[:3, :3].tolist()}")
    if np.isnan(io_orientation(arr)).any():  # no clear world axis for some voxel axis: no orientation to read
        raise ValueError(f"{what} has voxel axes that do not map to distinct world axes: {arr[:3, :3].tolist()}")
    return arr


@dataclass(frozen=True, eq=False)
class DiskGeometry:
    """How a volume is laid out in its file, so a mask can be written back in the same geometry.

    Attributes:
        shape: On-disk shape of the three spatial axes (i, j, k).
        affine: float64 (4, 4) mapping the on-disk voxel (i, j, k, 1) to world RAS mm.
        orientation: nibabel orientation (3, 2) of the on-disk axes (``io_orientation(affine)``).
        header: The NIfTI header of the source file (qform/sform codes, units, ...), or None (DICOM, arrays).
    """

    shape: tuple[int, int, int]
    affine: np.ndarray
    orientation: np.ndarray
    header: Any = None

    @classmethod
    def from_affine(cls, shape: Sequence[int], affine: np.ndarray, header: Any = None) -> DiskGeometry:
        """Geometry of an on-disk array of ``shape`` with voxel-to-RAS ``affine``."""
        aff = np.array(affine, dtype=np.float64)
        dims = (int(shape[0]), int(shape[1]), int(shape[2]))
        return cls(shape=dims, affine=aff, orientation=io_orientation(aff), header=header)

    @property
    def _to_canonical(self) -> np.ndarray:
        return ornt_transform(self.orientation, _CANONICAL_ORNT)

    def canonical_shape(self) -> tuple[int, int, int]:
        """(D, H, W) of this geometry once reoriented."""
        perm = self._to_canonical[:, 0].astype(int)
        out = [0, 0, 0]
        for disk_axis, canon_axis in enumerate(perm):
            out[canon_axis] = self.shape[disk_axis]
        return out[0], out[1], out[2]

    def canonical_affine(self) -> np.ndarray:
        """float64 (4, 4) mapping the canonical voxel (d, h, w, 1) to world RAS mm."""
        return self.affine @ inv_ornt_aff(self._to_canonical, self.shape)

    def to_canonical(self, disk_array: np.ndarray) -> np.ndarray:
        """On-disk (i, j, k) array -> canonical (D, H, W) view (axes permuted and flipped, no copy)."""
        return apply_orientation(disk_array, self._to_canonical)

    def disk_axis_in_canonical(self, axis: int) -> tuple[int, bool]:
        """Where on-disk axis ``axis`` (0 = i, 1 = j, 2 = k) lies in the canonical grid.

        Returns:
            (canonical axis 0 = d, 1 = h, 2 = w; True when the canonical index runs against the on-disk one,
            i.e. disk index ``n - 1 - c`` for canonical index ``c``).
        """
        if axis not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1 or 2, got {axis!r}")
        canon_axis, flip = self._to_canonical[axis]
        return int(canon_axis), bool(flip < 0)

    def from_canonical(self, array: np.ndarray) -> np.ndarray:
        """Canonical (D, H, W) array -> on-disk (i, j, k) view, the inverse of :meth:`to_canonical`."""
        return apply_orientation(array, ornt_transform(_CANONICAL_ORNT, self.orientation))


@dataclass(frozen=True, eq=False)
class CTVolume:
    """A CT volume in the canonical orientation, with what is needed to write results back into its file's geometry.

    Attributes:
        hu: int16 (D, H, W) Hounsfield units; D inferior->superior, H anterior->posterior, W patient
            right->left.
        spacing: (dz, dy, dx) voxel size in mm.
        affine: float64 (4, 4) mapping the canonical voxel (d, h, w, 1) to world RAS mm.
        source: The file or DICOM folder read, or None for arrays.
        geometry: The on-disk geometry (shape, affine, orientation, header). None when built from an array in
            canonical orientation; it is then filled in as the usual NIfTI layout of that array: (W, H, D) on
            disk, i.e. i = w, j = h, k = d, with the affine's columns reordered to match.
        meta: Free-form facts about the source (format, DICOM series UID, ...).
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    source: str | None = None
    geometry: DiskGeometry | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.hu, np.ndarray) or self.hu.dtype != np.int16 or self.hu.ndim != 3:
            got = (
                f"{self.hu.dtype} {self.hu.shape}"
                if isinstance(self.hu, np.ndarray)
                else type(self.hu).__name__
            )
            raise ValueError(f"hu must be an int16 (D, H, W) array, got {got}")
        affine = _check_affine(self.affine, "affine")
        object.__setattr__(self, "affine", affine)
        spacing = checked_spacing(self.spacing)
        if not np.allclose(spacing, _spacing_of(affine), rtol=1e-3, atol=1e-6):
            raise ValueError(
                f"spacing {spacing} disagrees with the affine's voxel sizes {_spacing_of(affine)} (dz, dy, dx)"
            )
        object.__setattr__(self, "spacing", spacing)
        if self.geometry is None:
            if not np.array_equal(io_orientation(affine), _CANONICAL_ORNT):
                codes = "".join(nib.orientations.aff2axcodes(affine))
                raise ValueError(
                    f"affine must map (d, h, w) to superior, posterior, patient-left (axis codes SPL), got {codes}: "
                    "reorient the array to the canonical (D, H, W) orientation first"
                )
            # No file: a mask is written in the usual NIfTI layout, i = w, j = h, k = d (slices along k). NIfTI
            # data is stored i-fastest, so this is also the canonical array's own memory order (no transpose).
            d, h, w = self.hu.shape
            geometry = DiskGeometry.from_affine((w, h, d), affine[:, [2, 1, 0, 3]])
            object.__setattr__(self, "geometry", geometry)
        elif self.geometry.canonical_shape() != self.hu.shape:
            raise ValueError(
                f"geometry gives canonical shape {self.geometry.canonical_shape()}, hu has {self.hu.shape}"
            )

    @classmethod
    def from_array(
        cls, hu: np.ndarray, *, spacing: Sequence[float], affine: np.ndarray | None = None
    ) -> CTVolume:
        """Wrap a bare (D, H, W) HU array that is already in the canonical orientation.

        Args:
            hu: (D, H, W) HU, any integer or float dtype; floats are rounded, everything is clipped to int16.
            spacing: (dz, dy, dx) in mm.
            affine: (4, 4) voxel (d, h, w, 1) -> world RAS mm; None gives :func:`canonical_affine` (spacing)
                with the origin at 0. Its voxel sizes must agree with ``spacing`` and its axes must point
                superior, posterior and patient-left.

        An int16 C-contiguous ``hu`` is used as is (no copy).

        Raises:
            TypeError: hu is not a numeric numpy array.
            ValueError: Wrong ndim, NaN/Inf, bad spacing or affine.
        """
        if not isinstance(hu, np.ndarray):
            raise TypeError(f"hu must be a numpy array, got {type(hu).__name__}")
        if hu.dtype == np.bool_ or not (
            np.issubdtype(hu.dtype, np.integer) or np.issubdtype(hu.dtype, np.floating)
        ):
            raise TypeError(f"hu must have an integer or float dtype, got {hu.dtype}")
        if hu.ndim != 3 or hu.size == 0:
            raise ValueError(f"hu must be a non-empty (D, H, W) array, got shape {hu.shape}")
        steps = checked_spacing(spacing)
        aff = canonical_affine(steps) if affine is None else _check_affine(affine, "affine")
        if hu.dtype.kind == "f":
            lo, hi = float(np.min(hu)), float(np.max(hu))
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise ValueError("hu has NaN or Inf values")
        data = np.ascontiguousarray(_to_int16(hu, "hu"))
        return cls(hu=data, spacing=steps, affine=aff, meta={"format": "array"})

    @property
    def shape(self) -> tuple[int, int, int]:
        """(D, H, W)."""
        d, h, w = self.hu.shape
        return d, h, w

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in mL (dz * dy * dx / 1000)."""
        return float(np.prod(self.spacing)) / 1000.0

    def index_to_world(self, index: Any) -> np.ndarray:
        """Canonical voxel indices (..., 3) as (d, h, w), fractional allowed -> world RAS mm (..., 3)."""
        idx = np.asarray(index, dtype=np.float64)
        if idx.shape[-1:] != (3,):
            raise ValueError(f"index must have a last axis of 3 (d, h, w), got shape {idx.shape}")
        return idx @ self.affine[:3, :3].T + self.affine[:3, 3]


def _to_int16(data: np.ndarray, source: str) -> np.ndarray:
    """Round (floats) and clip to int16, logging a warning with the value range when clipping changes values."""
    if data.dtype == np.int16:
        return data
    info = np.iinfo(np.int16)
    lo, hi = float(np.min(data)), float(np.max(data))
    if lo < info.min or hi > info.max:
        logger.warning("%s: values in [%g, %g] clipped to the int16 range", source, lo, hi)
    if data.dtype.kind == "f":
        out = np.array(data, dtype=np.float32)  # one float32 working copy, rounded and clipped in place
        np.rint(out, out=out)
        np.clip(out, info.min, info.max, out=out)
        return out.astype(np.int16)
    if data.dtype.kind in "iu" and (lo < info.min or hi > info.max):
        return np.clip(data, info.min, info.max).astype(np.int16)
    return data.astype(np.int16)


# ---------------------------------------------------------------------------------------------------------------------
# Reading NIfTI
# ---------------------------------------------------------------------------------------------------------------------
def _check_path(path_or_dir: Any, name: str) -> Path:
    if not isinstance(path_or_dir, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or os.PathLike, got {type(path_or_dir).__name__}")
    path = Path(path_or_dir)
    if not path.exists():
        # Named by what was typed: the parameter's name means nothing to someone at a command line.
        raise FileNotFoundError(f"{path}: no such file or folder")
    return path


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray, Any]:
    """(scaled data as stored on disk, affine, header) of a NIfTI (or other nibabel-readable) image file.

    Errors from nibabel, gzip and the file system become ValueError naming the file.
    """
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file (0 bytes)")
    _check_raw_header(path)
    try:
        if path.name.lower().endswith(".gz") and _igzip() is not None:
            data, affine, header = _read_nifti_isal(path)
        else:
            img: Any = nib.load(path, mmap=False)
            data, affine, header = np.asanyarray(img.dataobj), img.affine, img.header
    except MemoryError:
        raise
    except Exception as exc:
        raise ValueError(f"{path}: cannot read as a NIfTI image ({type(exc).__name__}: {exc})") from exc
    if affine is None:
        raise ValueError(f"{path}: the image has no affine (no spatial geometry)")
    return data, np.asarray(affine, dtype=np.float64), header


#: No deflate stream expands more than this (RFC 1951's longest match per bit): a bound on a .gz file's content.
_MAX_DEFLATE_RATIO = 1032


def _check_raw_header(path: Path) -> None:
    """Refuse, from the raw NIfTI header, what nibabel would read wrong or at great cost.

    * A voxel size taken from ``pixdim`` that is zero or not finite: nibabel reads 1 mm in its place (and only
      logs it), which would make every volume in mL an invention. With an sform set, the voxel size comes from
      the sform instead (a zero there is refused as a singular affine).
    * Data larger than the file can hold (a truncated file, or a corrupt ``dim``): nibabel would allocate and
      zero the whole claimed array first (gigabytes from a header of a few bytes) before it finds out.

    Headers that are not readable NIfTI are left to the full read, which says why.
    """
    try:
        with nib.openers.ImageOpener(path) as stream:
            head = stream.read(540)
        sizeof_hdr = int.from_bytes(head[:4], "little")
        if sizeof_hdr not in (348, 540):
            sizeof_hdr = int.from_bytes(head[:4], "big")
        klass = nib.Nifti2Header if sizeof_hdr == 540 else nib.Nifti1Header
        header = klass.from_fileobj(io.BytesIO(head), check=False)
        if header["magic"] not in (b"n+1", b"ni1", b"n+2", b"ni2"):
            return
        ndim, sform_code = int(header["dim"][0]), int(header["sform_code"])
        pixdim = [float(v) for v in header["pixdim"][1:4]]
        dims = [int(n) for n in header["dim"][1 : ndim + 1]] if 1 <= ndim <= 7 else []
        itemsize = header.get_data_dtype().itemsize
        offset = float(header["vox_offset"])
    except Exception:  # noqa: BLE001 - not a readable NIfTI header: the full read below says why
        return
    if ndim >= 3 and sform_code == 0 and not all(math.isfinite(v) and v != 0 for v in pixdim):
        raise ValueError(
            f"{path}: the header gives a voxel size of ({', '.join(f'{v:g}' for v in pixdim)}) mm (pixdim[1:4]) "
            "and no sform: a zero or undefined voxel size makes volumes in mL meaningless; set the true voxel "
            "size in the header"
        )
    if not dims or min(dims) < 0 or not math.isfinite(offset) or header["magic"] in (b"ni1", b"ni2"):
        return  # malformed dims are nibabel's to report; a .hdr/.img pair keeps its data elsewhere
    claimed = int(max(offset, sizeof_hdr)) + math.prod(dims) * itemsize
    size = path.stat().st_size
    with open(path, "rb") as raw:  # the opener above decompresses: the gzip magic is in the file's own bytes
        gzipped = raw.read(2) == b"\x1f\x8b"
    if claimed > (size * _MAX_DEFLATE_RATIO if gzipped else size):
        raise ValueError(
            f"{path}: the header describes {claimed:,} bytes of image data ({' x '.join(map(str, dims))} voxels "
            f"of {itemsize} bytes), more than this {size:,}-byte file can hold: the file is truncated or corrupt"
        )


def _igzip() -> Any:
    try:
        from isal import igzip
    except ImportError:
        return None
    return igzip


def _read_nifti_isal(path: Path) -> tuple[np.ndarray, np.ndarray, Any]:
    igzip = _igzip()
    with igzip.open(path, "rb") as stream:
        head = stream.read(4)
        stream.seek(0)
        sizeof_hdr = int.from_bytes(head, "little") if len(head) == 4 else 0
        if sizeof_hdr not in (348, 540):
            sizeof_hdr = int.from_bytes(head, "big") if len(head) == 4 else 0
        klass = nib.Nifti2Image if sizeof_hdr == 540 else nib.Nifti1Image
        holder = nib.FileHolder(filename=str(path), fileobj=stream)
        img = klass.from_file_map({"header": holder, "image": holder})
        data = np.asanyarray(img.dataobj)
    return data, img.affine, img.header


def _spatial_3d(data: np.ndarray, path: Path) -> np.ndarray:
    """Drop trailing singleton axes beyond the third; refuse 2-D, 4-D+ and empty images."""
    shape = data.shape
    if data.size == 0:
        raise ValueError(f"{path}: empty image of shape {shape}")
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim < 3:
        raise ValueError(f"{path}: a {data.ndim}-D image of shape {shape}; a CT volume needs 3 dimensions")
    if data.ndim > 3:
        raise ValueError(f"{path}: a {data.ndim}-D image of shape {shape}; expected one 3-D volume")
    if data.dtype.fields is not None or not (data.dtype.kind in "iuf" or data.dtype == np.bool_):
        raise ValueError(f"{path}: voxel type {data.dtype} is not a scalar number")
    return data


def _check_looks_like_ct(data: np.ndarray, source: str) -> None:
    """Refuse NaN/Inf and images whose values are not plausible as CT in HU."""
    lo, hi = float(np.min(data)), float(np.max(data))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{source}: the image has NaN or Inf values; CT in HU must be finite everywhere")
    if lo >= 0:
        raise ValueError(
            f"{source}: doesn't look like CT in HU: no negative values (range [{lo:g}, {hi:g}]; air is -1000 and "
            "fat about -100 HU). Is it a mask, an 8-bit image, or CT saved without its rescale intercept?"
        )
    if lo < -_HU_LIMIT or hi > _HU_LIMIT:
        raise ValueError(f"{source}: doesn't look like CT in HU: values range over [{lo:g}, {hi:g}]")
    if data.size >= 1000:
        flat = (
            data.reshape(-1, order="A")
            if (data.flags.c_contiguous or data.flags.f_contiguous)
            else data.ravel()
        )
        sample = flat[:: max(1, flat.size // (1 << 20))]
        distinct = np.unique(sample).size
        if distinct <= _LABEL_LIKE_MAX_VALUES:
            raise ValueError(
                f"{source}: doesn't look like CT: only {distinct} distinct values, like a label map or mask"
            )


def _nifti_to_canonical(path: Path) -> tuple[np.ndarray, DiskGeometry]:
    data, affine, header = _read_nifti(path)
    data = _spatial_3d(data, path)
    try:
        affine = _check_affine(affine, "affine")
    except ValueError as exc:
        raise ValueError(f"{path}: unusable {exc}") from None
    geometry = DiskGeometry.from_affine(data.shape, affine, header=_nifti_header_copy(header))
    return data, geometry


def _nifti_header_copy(header: Any) -> Any:
    if isinstance(header, (nib.Nifti1Header, nib.Nifti2Header)):
        return header.copy()
    return None


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
    path = _check_path(path_or_dir, "path_or_dir")
    if path.is_dir():
        try:
            return _load_dicom_series(path, series_uid=series_uid)
        except ValueError as exc:  # a check deep in the geometry may not know the folder: name it
            if str(path) in str(exc):
                raise
            raise ValueError(f"{path}: {exc}") from exc
    if series_uid is not None:
        raise ValueError(f"series_uid is only for DICOM folders; {path} is a file")
    if path.suffix.lower() in (".dcm", ".ima"):
        raise ValueError(f"{path}: a single DICOM file; pass the folder that holds the whole series")
    data, geometry = _nifti_to_canonical(path)
    _check_looks_like_ct(data, str(path))
    hu = np.ascontiguousarray(geometry.to_canonical(_to_int16(data, str(path))))
    affine = geometry.canonical_affine()
    logger.debug("%s: %s on disk -> %s canonical", path, geometry.shape, hu.shape)
    return CTVolume(
        hu=hu,
        spacing=_spacing_of(affine),
        affine=affine,
        source=str(path),
        geometry=geometry,
        meta={"format": "nifti"},
    )


def load_label(path: PathLike, like: CTVolume, *, max_value: int = 2) -> np.ndarray:
    """Read a label map (0 background, 1 liver, 2 tumor) that belongs to ``like``.

    Args:
        path: NIfTI label file on the same voxel grid as the CT ``like`` was read from: the same on-disk shape and
            affine (to within 1e-3 mm), or the same voxels stored in another axis order or direction (a DICOM
            series converted with its rows flipped, say), which is reoriented.
        like: The CT volume the labels belong to.
        max_value: the largest label value allowed (2 for liver/tumor maps; up to 255 for organ maps).

    Returns:
        uint8 (D, H, W) in ``like``'s canonical orientation.

    Raises:
        ValueError: Unreadable file, geometry mismatch, or values other than the integers 0, 1, 2 (message
            names the file).
    """
    file = _check_path(path, "path")
    if not isinstance(like, CTVolume):
        raise TypeError(f"like must be a CTVolume, got {type(like).__name__}")
    if file.is_dir():
        raise ValueError(f"{file}: is a folder; labels are read from a NIfTI file")
    data, affine, _ = _read_nifti(file)
    data = _spatial_3d(data, file)
    target = like.geometry
    assert target is not None  # set by CTVolume.__post_init__
    if not (isinstance(max_value, int) and 0 < max_value <= 255):
        raise ValueError(f"max_value must be an integer in 1..255, got {max_value!r}")
    geometry = target
    if data.shape != target.shape or not np.allclose(affine, target.affine, rtol=0.0, atol=_AFFINE_ATOL_MM):
        # The same voxels stored in another axis order or direction describe the same canonical grid.
        try:
            own = DiskGeometry.from_affine(data.shape, affine)
            same_grid = own.canonical_shape() == target.canonical_shape() and np.allclose(
                own.canonical_affine(), target.canonical_affine(), rtol=0.0, atol=_AFFINE_ATOL_MM
            )
        except ValueError:
            same_grid = False
        if not same_grid:
            if data.shape != target.shape:
                raise ValueError(
                    f"{file}: label shape {data.shape} differs from the CT's on-disk shape {target.shape}"
                )
            raise ValueError(
                f"{file}: label affine differs from the CT's (max difference "
                f"{np.max(np.abs(affine - target.affine)):.4g} mm):\n{np.round(affine, 4)}\nvs\n"
                f"{np.round(target.affine, 4)}"
            )
        geometry = own
    lo, hi = float(np.min(data)), float(np.max(data))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{file}: label image has NaN or Inf values")
    allowed = "0, 1 or 2" if max_value == 2 else f"integers 0..{max_value}"
    if lo < 0 or hi > max_value:
        raise ValueError(f"{file}: label values must be {allowed}, found the range [{lo:g}, {hi:g}]")
    labels = data.astype(np.uint8)
    if data.dtype.kind == "f" and not np.array_equal(labels, data):
        raise ValueError(f"{file}: label values must be the {allowed}, found fractional values")
    return np.ascontiguousarray(geometry.to_canonical(labels))


# ---------------------------------------------------------------------------------------------------------------------
# Reading DICOM
# ---------------------------------------------------------------------------------------------------------------------
def _load_dicom_series(folder: Path, *, series_uid: str | None) -> CTVolume:
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
    hu_canonical = np.ascontiguousarray(geometry.to_canonical(disk))
    canon_affine = geometry.canonical_affine()
    first = slices[0][1]
    return CTVolume(
        hu=hu_canonical,
        spacing=_spacing_of(canon_affine),
        affine=canon_affine,
        source=str(folder),
        geometry=geometry,
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


# ---------------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------------
def _new_file_mode(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        pass
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    return 0o644


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in (".nii.gz", ".tar.gz"):
        if name.endswith(suffix):
            return path.name[-len(suffix) :]
    return path.suffix


_MKSTEMP_RANDOM_CHARS = 8  # tempfile's random part of a name


def _name_max(folder: Path) -> int:
    """The longest file name, in bytes, that ``folder``'s file system allows (255 when it cannot say)."""
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


def _temporary_prefix(target: Path, suffix: str) -> str:
    """``.<name>.`` for a temporary file beside ``target``, the name cut so the whole fits the file system.

    A temporary name is ``prefix + 8 random characters + suffix``; a target whose name is itself near the
    limit would otherwise get a temporary name that is too long, and a legal output could not be written.
    """
    room = _name_max(target.parent) - len(os.fsencode(suffix)) - _MKSTEMP_RANDOM_CHARS - 2
    name = target.name
    while name and len(os.fsencode(name)) > room:  # cut whole characters: the limit counts encoded bytes
        name = name[:-1]
    return f".{name}."


@contextlib.contextmanager
def atomic_write(path: PathLike) -> Iterator[Path]:
    """Write a file atomically: yield a temporary path in the same folder, then rename it over ``path``.

    The temporary file keeps ``path``'s suffix (so writers that look at it, like nibabel, pick the right
    format). When the block raises, the temporary file is removed and ``path`` is left untouched; readers never
    see a half-written file.

    Args:
        path: The final file.

    Yields:
        The temporary path to write to (it exists, empty).

    Raises:
        OSError: The folder does not exist or is not writable (the message names ``path``).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    target = Path(path)
    suffix = f".tmp{_suffix(target)}"
    try:
        fd, tmp_name = tempfile.mkstemp(
            prefix=_temporary_prefix(target, suffix), suffix=suffix, dir=target.parent
        )
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write {target}: {exc.strerror or exc}") from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, _new_file_mode(target))
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(exc, OSError) and str(target) not in str(exc):
            raise OSError(exc.errno, f"cannot write {target}: {exc.strerror or exc}") from exc
        raise


def atomic_write_bytes(path: PathLike, data: bytes | bytearray | memoryview) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`), creating missing parent folders.

    Returns:
        The written path.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(target) as tmp:
        tmp.write_bytes(data)
    return target


def _write_nifti(img: Any, path: Path) -> None:
    """nibabel save, with ISA-L gzip (level 1) for .gz when available."""
    igzip = _igzip()
    if path.name.lower().endswith(".gz") and igzip is not None:
        with igzip.open(path, "wb", compresslevel=_GZIP_LEVEL) as stream:
            holder = nib.FileHolder(filename=str(path), fileobj=stream)
            img.to_file_map({"header": holder, "image": holder})
    else:
        nib.save(img, path)


def save_mask(path: PathLike, labels: np.ndarray, like: CTVolume) -> Path:
    """Write a label map as uint8 NIfTI in ``like``'s original on-disk geometry, atomically.

    The file has the shape and affine of the file ``like`` was read from (for a DICOM series: of its usual NIfTI
    conversion; for an array: (W, H, D) on disk, see :attr:`CTVolume.geometry`), and keeps the source header's qform/sform codes
    and units, so it overlays the CT in 3D Slicer or ITK-SNAP.

    Args:
        path: Output file ending in .nii or .nii.gz.
        labels: uint8 (or other integer/bool) (D, H, W) in ``like``'s canonical orientation, values 0, 1, 2.
        like: The CT volume the labels belong to.

    Returns:
        The written path.

    Raises:
        TypeError: labels is not an integer/bool numpy array, or like is not a CTVolume.
        ValueError: Wrong suffix, shape or values.
        OSError: The file cannot be written (the message names it); no partial file is left behind.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    target = Path(path)
    if not target.name.lower().endswith(_NIFTI_SUFFIXES):
        raise ValueError(f"path must end in .nii or .nii.gz, got {target}")
    if not isinstance(like, CTVolume):
        raise TypeError(f"like must be a CTVolume, got {type(like).__name__}")
    if not isinstance(labels, np.ndarray) or not (labels.dtype == np.bool_ or labels.dtype.kind in "iu"):
        got = labels.dtype if isinstance(labels, np.ndarray) else type(labels).__name__
        raise TypeError(f"labels must be an integer or bool numpy array, got {got}")
    if labels.shape != like.shape:
        raise ValueError(f"labels must have the CT's shape {like.shape} (D, H, W), got {labels.shape}")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) > 2):
        raise ValueError(f"labels must hold 0, 1 or 2, got the range [{labels.min()}, {labels.max()}]")
    geometry = like.geometry
    assert geometry is not None  # set by CTVolume.__post_init__
    disk = np.asarray(geometry.from_canonical(labels.astype(np.uint8, copy=False)))

    header = geometry.header
    if header is not None:
        hdr = header.copy()
        hdr.extensions.clear()
        klass = nib.Nifti2Image if isinstance(hdr, nib.Nifti2Header) else nib.Nifti1Image
        hdr.set_data_dtype(np.uint8)
        img = klass(disk, geometry.affine, header=hdr)
        # Keep the source's qform and sform (and their codes) exactly as read.
        qform, qcode = header.get_qform(coded=True)
        sform, scode = header.get_sform(coded=True)
        img.set_qform(qform if qform is not None else geometry.affine, int(qcode) if qform is not None else 0)
        img.set_sform(sform if sform is not None else geometry.affine, int(scode) if sform is not None else 0)
        if qform is None and sform is None:
            img.set_sform(geometry.affine, 1)
    else:
        img = nib.Nifti1Image(disk, geometry.affine)
        img.set_qform(geometry.affine, 1)  # scanner coordinates
        img.set_sform(geometry.affine, 1)
    img.header.set_slope_inter(1.0, 0.0)
    img.header.set_intent("label")
    img.header["cal_min"], img.header["cal_max"] = 0, 2
    img.header["descrip"] = b"labels: 0 background, 1 liver, 2 tumor"
    with atomic_write(target) as tmp:
        _write_nifti(img, tmp)
    logger.debug("wrote %s %s", target, disk.shape)
    return target
