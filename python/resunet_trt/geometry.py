"""Geometry of a CT volume: the canonical (D, H, W) orientation, affines, and the file's own layout.

See :mod:`resunet_trt.io` for the conventions: D inferior -> superior, H anterior -> posterior, W patient right ->
left, spacing (dz, dy, dx) in mm, affines mapping the canonical voxel index to world RAS mm.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from ._checks import checked_spacing
from .ct_values import _to_int16

#: nibabel orientation of the canonical axes (D, H, W): superior, posterior, patient left.
CANONICAL_AXCODES = ("S", "P", "L")
_CANONICAL_ORNT = axcodes2ornt(CANONICAL_AXCODES)
AFFINE_ATOL_MM = 1e-3  # float32 storage of qform/sform and DICOM decimal strings differ below this


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
    def from_disk(cls, data: np.ndarray, geometry: DiskGeometry, *, source: str, meta: dict[str, Any]) -> CTVolume:
        """The canonical volume of int16 HU ``data`` as stored on disk in ``geometry``.

        Args:
            data: int16 HU in the file's own axis order and shape (``geometry.shape``).
            geometry: the file's layout, kept for writing masks back.
            source: the file or folder it came from.
            meta: format details (``{"format": "nifti"}``...).
        """
        affine = geometry.canonical_affine()
        return cls(
            hu=np.ascontiguousarray(geometry.to_canonical(data)),
            spacing=_spacing_of(affine),
            affine=affine,
            source=source,
            geometry=geometry,
            meta=meta,
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


def check_labels(labels: Any, like: CTVolume) -> None:
    """Refuse a label map that cannot be written for ``like``: TypeError/ValueError naming what is wrong.

    Args:
        labels: integer or bool numpy array (D, H, W) of ``like``'s shape, values 0, 1 or 2.
        like: the CT volume the labels belong to.
    """
    if not isinstance(like, CTVolume):
        raise TypeError(f"like must be a CTVolume, got {type(like).__name__}")
    if not isinstance(labels, np.ndarray) or not (labels.dtype == np.bool_ or labels.dtype.kind in "iu"):
        got = labels.dtype if isinstance(labels, np.ndarray) else type(labels).__name__
        raise TypeError(f"labels must be an integer or bool numpy array, got {got}")
    if labels.shape != like.shape:
        raise ValueError(f"labels must have the CT's shape {like.shape} (D, H, W), got {labels.shape}")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) > 2):
        raise ValueError(f"labels must hold 0, 1 or 2, got the range [{labels.min()}, {labels.max()}]")
