"""Lesion report: per tumor component numbers a reader checks first, and the JSON file of a case.

The numbers come from :func:`resunet_trt.kernels.lesion_stats` (voxel count, bounding box, centroid per tumor
component of a postprocessed label volume); this module adds what needs the CT and its geometry: volume in
mL from the spacing, longest axial diameter in mm (:func:`resunet_trt.lesions.longest_axial_diameter_mm`),
the centroid in world millimetres through the volume's affine, and the mean HU.

Coordinates: voxel indices are (d, h, w) in the volume's canonical grid (d inferior -> superior, h anterior ->
posterior, w patient right -> left); world coordinates are RAS millimetres, ``affine @ (d, h, w, 1)``, the
same world the input file lives in (a NIfTI's own RAS world; a DICOM series' patient LPS world with x and y
negated).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ._version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from .io import CTVolume
    from .results import Result

REPORT_SCHEMA = 1

#: Whole adult livers measure about 1 to 3 L; a segmented volume outside this range (mL) is not believable as a
#: whole liver: a voxel size that is wrong in the header, a scan covering part of the liver, or a failure.
PLAUSIBLE_LIVER_ML = (300.0, 6000.0)
#: Voxel sizes (mm) of clinical CT; outside this range the header's spacing is more likely wrong than the scan.
PLAUSIBLE_VOXEL_MM = (0.2, 10.0)


@dataclass(frozen=True)
class Lesion:
    """One tumor component.

    Attributes:
        id: component number (1..n, raster order of the component's first voxel).
        voxels: number of voxels.
        volume_ml: voxels x dz x dy x dx / 1000.
        longest_axial_diameter_mm: largest in-plane distance between voxel centres over the axial slices.
        centroid_voxel: (d, h, w) mean voxel index, canonical grid.
        centroid_world_mm: (x, y, z) RAS mm of the centroid.
        bbox: ((d0, h0, w0), (d1, h1, w1)), inclusive voxel index bounds, canonical grid.
        mean_hu: mean CT value over the component's voxels.
        largest_slice: index k, in the input file's own slice order (its third on-disk axis; for a DICOM
            series, the slice order of ``volume.meta["sop_instance_uids"]``), of the slice holding the most
            voxels of the lesion (the first such slice on a tie); None when not measured.
    """

    id: int
    voxels: int
    volume_ml: float
    longest_axial_diameter_mm: float
    centroid_voxel: tuple[float, float, float]
    centroid_world_mm: tuple[float, float, float]
    bbox: tuple[tuple[int, int, int], tuple[int, int, int]]
    mean_hu: float
    largest_slice: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        d = asdict(self)
        d["centroid_voxel"] = [float(v) for v in self.centroid_voxel]
        d["centroid_world_mm"] = [float(v) for v in self.centroid_world_mm]
        d["bbox"] = {"min": [int(v) for v in self.bbox[0]], "max": [int(v) for v in self.bbox[1]]}
        return d


def voxel_to_world(affine: np.ndarray, index: Sequence[float]) -> tuple[float, float, float]:
    """World mm of a (d, h, w) voxel index through a 4x4 ``affine``."""
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got shape {a.shape}")
    p = a @ np.array([float(index[0]), float(index[1]), float(index[2]), 1.0])
    return float(p[0]), float(p[1]), float(p[2])


def _to_host(x: Any) -> Any:
    """numpy copy of a CuPy array; anything else unchanged."""
    if hasattr(x, "__cuda_array_interface__"):
        return x.get()
    return x


def build_lesions(
    stats: Mapping[str, Any], *, volume: CTVolume, origin: Sequence[int] = (0, 0, 0)
) -> list[Lesion]:
    """Per-lesion report entries from :func:`resunet_trt.kernels.lesion_stats` output.

    Only the bounding box of all lesions is read from ``stats["component_labels"]`` (on the GPU, that crop is
    the one copy that comes down), and each lesion's diameter and mean HU are measured inside its own box.

    Args:
        stats: ``kernels.lesion_stats(labels, connectivity=...)`` of the labels of ``volume`` (numpy or CuPy
            arrays): ``count``, ``voxels`` (n,), ``bbox`` (n, 6) half-open ``(d0, h0, w0, d1, h1, w1)``,
            ``centroid`` (n, 3) voxel ``(d, h, w)``, ``component_labels`` int32 (D, H, W).
        volume: the CTVolume (HU, spacing (dz, dy, dx) mm, affine) the labels belong to.
        origin: (d, h, w) of the crop's first voxel when ``stats`` were measured on a crop of the labels (a box
            holding every tumor voxel: the components and their raster order are then those of the whole volume);
            the lesions are reported in the whole volume's voxels.

    Returns:
        one :class:`Lesion` per tumor component, in component order (id 1 first).
    """
    from .lesions import longest_axial_diameter_mm

    shift = np.asarray([int(v) for v in origin], dtype=np.int64)
    if shift.shape != (3,) or (shift < 0).any():
        raise ValueError(f"origin must be three voxel indices >= 0, got {tuple(origin)!r}")
    count = int(stats["count"])
    if count == 0:
        return []
    voxels = np.asarray(_to_host(stats["voxels"]), dtype=np.int64).reshape(count)
    bbox = np.asarray(_to_host(stats["bbox"]), dtype=np.int64).reshape(count, 6)
    centroid = np.asarray(_to_host(stats["centroid"]), dtype=np.float64).reshape(count, 3)
    lo, hi = bbox[:, :3].min(axis=0), bbox[:, 3:].max(axis=0)
    crop = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    components = np.asarray(_to_host(stats["component_labels"][crop]))
    bbox = bbox + np.concatenate([shift, shift])
    centroid = centroid + shift
    lo, hi = lo + shift, hi + shift
    crop = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    hu = volume.hu[crop]
    spacing = tuple(float(s) for s in volume.spacing)
    voxel_ml = spacing[0] * spacing[1] * spacing[2] / 1000.0
    lesions = []
    slice_axis, slice_reversed = volume.geometry.disk_axis_in_canonical(2) if volume.geometry else (0, False)
    other_axes = tuple(a for a in range(3) if a != slice_axis)
    for i in range(count):
        box = tuple(slice(int(bbox[i, a] - lo[a]), int(bbox[i, a + 3] - lo[a])) for a in range(3))
        mask = components[box] == i + 1
        widest = int(bbox[i, slice_axis]) + int(np.argmax(mask.sum(axis=other_axes)))
        if slice_reversed:
            widest = volume.hu.shape[slice_axis] - 1 - widest
        c = tuple(float(v) for v in centroid[i])
        lesions.append(
            Lesion(
                id=i + 1,
                voxels=int(voxels[i]),
                volume_ml=int(voxels[i]) * voxel_ml,
                longest_axial_diameter_mm=float(longest_axial_diameter_mm(mask, spacing)),
                centroid_voxel=c,  # type: ignore[arg-type]
                centroid_world_mm=voxel_to_world(volume.affine, c),
                bbox=(
                    (int(bbox[i, 0]), int(bbox[i, 1]), int(bbox[i, 2])),
                    (int(bbox[i, 3]) - 1, int(bbox[i, 4]) - 1, int(bbox[i, 5]) - 1),
                ),
                mean_hu=float(hu[box][mask].mean(dtype=np.float64)),
                largest_slice=widest,
            )
        )
    return lesions


def plausibility_warnings(liver_volume_ml: float, spacing: Sequence[float]) -> list[str]:
    """Why a result is physically implausible, one sentence each (empty when nothing is).

    The one place the limits live: :data:`PLAUSIBLE_LIVER_ML` for the liver (including tumor) and
    :data:`PLAUSIBLE_VOXEL_MM` for each voxel size. A reader should doubt such a result before its numbers.

    Args:
        liver_volume_ml: segmented liver volume in mL (labels >= 1).
        spacing: (dz, dy, dx) voxel size in mm.

    Returns:
        list of warning texts.
    """
    out = []
    lo_mm, hi_mm = PLAUSIBLE_VOXEL_MM
    odd = [f"{axis} {float(s):g} mm" for axis, s in zip(("dz", "dy", "dx"), spacing) if not lo_mm <= s <= hi_mm]
    if odd:
        out.append(
            f"voxel size {', '.join(odd)} is outside {lo_mm:g}-{hi_mm:g} mm, unusual for CT: check the file's "
            "spacing, every volume in mL depends on it"
        )
    lo_ml, hi_ml = PLAUSIBLE_LIVER_ML
    if not lo_ml <= float(liver_volume_ml) <= hi_ml:
        out.append(
            f"liver volume {float(liver_volume_ml):.1f} mL is outside {lo_ml:g}-{hi_ml:g} mL, implausible for a "
            "whole adult liver: check the voxel size, the scan's coverage of the liver, and the mask"
        )
    return out


def build_report(result: Result, *, case: str | None = None) -> dict[str, Any]:
    """The JSON-ready report of one segmented case.

    Args:
        result: a :class:`resunet_trt.results.Result`.
        case: case name to record (defaults to the source file's name, or None).
    """
    volume = result.volume
    source = getattr(volume, "source", None)
    if case is None and source is not None:
        from .naming import case_name

        case = case_name(source)
    lesions = [les.to_dict() for les in result.lesions]
    meta = getattr(volume, "meta", None) or {}
    dicom = meta.get("format") == "dicom"
    if dicom:  # a viewer jumps to a lesion by its slice's SOPInstanceUID
        uids = meta.get("sop_instance_uids") or ()
        for entry, les in zip(lesions, result.lesions):
            k = les.largest_slice
            entry["largest_slice_sop_instance_uid"] = uids[k] if k is not None and k < len(uids) else None
    return {
        "schema": REPORT_SCHEMA,
        "resunet_trt": __version__,
        "not_for_clinical_use": True,
        "intended_use": "research; not a medical device, not for diagnosis or treatment decisions",
        "model_name": result.info.get("model"),
        "case": case,
        "source": None if source is None else os.fspath(source),
        "study_instance_uid": (meta.get("study_uid") or None) if dicom else None,
        "series_instance_uid": (meta.get("series_uid") or None) if dicom else None,
        "shape_dhw": [int(n) for n in volume.hu.shape],
        "spacing_mm_dhw": [float(s) for s in volume.spacing],
        "coordinates": {
            "voxel": "(d, h, w) canonical grid: d inferior->superior, h anterior->posterior, w right->left",
            "world": "RAS mm, affine @ (d, h, w, 1), the input's world",
            "bbox": "inclusive voxel index bounds",
        },
        "liver_volume_ml": float(result.liver_volume_ml),
        "tumor_volume_ml": float(result.tumor_volume_ml),
        "tumor_burden": float(result.tumor_burden),
        "lesion_count": len(lesions),
        "lesions": lesions,
        "warnings": plausibility_warnings(result.liver_volume_ml, volume.spacing),
        "model": dict(result.info),
        "timings_s": {k: float(v) for k, v in result.timings.items()},
    }


def write_report(path: str | os.PathLike[str], report: Mapping[str, Any]) -> None:
    """Write ``report`` as JSON to ``path`` atomically (a failure leaves no partial file).

    Raises:
        ValueError: the report holds values JSON cannot represent (NaN, Inf, objects).
    """
    try:
        text = json.dumps(report, indent=2, allow_nan=False, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{os.fspath(path)}: report is not JSON-serialisable ({exc})") from exc
    from .files import atomic_write

    with atomic_write(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text + "\n")


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    raise TypeError(f"{type(x).__name__} is not JSON-serialisable")
