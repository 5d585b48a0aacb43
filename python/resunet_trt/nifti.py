"""NIfTI files (.nii, .nii.gz) through nibabel: CT and label volumes in, label masks out.

``.nii.gz`` is read and written through ISA-L's igzip when the ``isal`` package is installed, otherwise through
nibabel's own gzip (zlib); masks are written at igzip level 1.
"""

from __future__ import annotations

import io
import logging
import math
import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ._checks import checked_path
from .files import atomic_write
from .ct_values import _check_looks_like_ct, _to_int16
from .geometry import AFFINE_ATOL_MM, CTVolume, DiskGeometry, _check_affine, check_labels

logger = logging.getLogger("resunet_trt.io")

NIFTI_SUFFIXES = (".nii", ".nii.gz")
_GZIP_LEVEL = 1

PathLike = str | os.PathLike[str]


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
        with nib.openers.ImageOpener(str(path)) as stream:
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


def read_nifti_ct(path: Path) -> CTVolume:
    """The CT volume of a NIfTI file (see :func:`resunet_trt.io.load_ct`); errors name the file."""
    data, geometry = _nifti_to_canonical(path)
    _check_looks_like_ct(data, str(path))
    volume = CTVolume.from_disk(_to_int16(data, str(path)), geometry, source=str(path), meta={"format": "nifti"})
    logger.debug("%s: %s on disk -> %s canonical", path, geometry.shape, volume.hu.shape)
    return volume


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
    file = checked_path(path, "path")
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
    if data.shape != target.shape or not np.allclose(affine, target.affine, rtol=0.0, atol=AFFINE_ATOL_MM):
        # The same voxels stored in another axis order or direction describe the same canonical grid.
        try:
            own = DiskGeometry.from_affine(data.shape, affine)
            same_grid = own.canonical_shape() == target.canonical_shape() and np.allclose(
                own.canonical_affine(), target.canonical_affine(), rtol=0.0, atol=AFFINE_ATOL_MM
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
    if not target.name.lower().endswith(NIFTI_SUFFIXES):
        raise ValueError(f"path must end in .nii or .nii.gz, got {target}")
    check_labels(labels, like)
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
