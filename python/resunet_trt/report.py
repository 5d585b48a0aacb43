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
    from .segmenter import Result

REPORT_SCHEMA = 1


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
    """

    id: int
    voxels: int
    volume_ml: float
    longest_axial_diameter_mm: float
    centroid_voxel: tuple[float, float, float]
    centroid_world_mm: tuple[float, float, float]
    bbox: tuple[tuple[int, int, int], tuple[int, int, int]]
    mean_hu: float

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
    """numpy view of a CuPy array; anything else unchanged."""
    if hasattr(x, "__cuda_array_interface__"):
        return x.get()
    return x


def stats_records(stats: Any) -> list[dict[str, Any]]:
    """Normalise :func:`kernels.lesion_stats` output to one dict per component.

    Each dict holds ``id``, ``voxels``, ``bbox`` ((d0, h0, w0), (d1, h1, w1)) inclusive and ``centroid``
    (d, h, w).
    """
    if isinstance(stats, Mapping):
        return _records_from_columns(stats)
    records = []
    for i, rec in enumerate(stats, start=1):
        get = rec.get if isinstance(rec, Mapping) else lambda k, default=None, r=rec: getattr(r, k, default)
        bbox = _to_host(get("bbox"))
        records.append(
            {
                "id": int(get("id", i)),
                "voxels": int(get("voxels", get("voxel_count", 0))),
                "bbox": _bbox_pair(bbox),
                "centroid": tuple(float(v) for v in _to_host(get("centroid"))),
            }
        )
    return records


def _records_from_columns(stats: Mapping[str, Any]) -> list[dict[str, Any]]:
    voxels = np.asarray(_to_host(stats.get("voxels", stats.get("voxel_count"))), dtype=np.int64).reshape(-1)
    bbox = np.asarray(_to_host(stats["bbox"]), dtype=np.int64).reshape(len(voxels), -1)
    centroid = np.asarray(_to_host(stats["centroid"]), dtype=np.float64).reshape(len(voxels), 3)
    ids = stats.get("id", stats.get("ids"))
    ids = np.arange(1, len(voxels) + 1) if ids is None else np.asarray(_to_host(ids)).reshape(-1)
    return [
        {"id": int(ids[i]), "voxels": int(voxels[i]), "bbox": _bbox_pair(bbox[i]), "centroid": tuple(centroid[i])}
        for i in range(len(voxels))
    ]


def _bbox_pair(bbox: Any) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    b = np.asarray(bbox, dtype=np.int64).reshape(-1)
    if b.size != 6:
        raise ValueError(f"lesion bbox must have 6 numbers, got {b.size}")
    return (int(b[0]), int(b[1]), int(b[2])), (int(b[3]), int(b[4]), int(b[5]))


def tumor_components(labels: np.ndarray, *, connectivity: int = 26) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Tumor components of ``labels`` inside the bounding box of all tumor voxels.

    Labelling the crop gives the same numbering as the whole volume: every component lies inside it, and
    raster order of first voxels is unchanged by a shift of the origin.

    Returns:
        (components int32 over the crop, the crop as a tuple of slices into (D, H, W)).
    """
    from . import kernels

    tumor = labels == 2
    if not tumor.any():
        return np.zeros((0, 0, 0), dtype=np.int32), (slice(0, 0),) * 3
    crop = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(tumor.any(axis=other))
        crop.append(slice(int(idx[0]), int(idx[-1]) + 1))
    comp, _ = kernels.connected_components(
        np.ascontiguousarray(tumor[tuple(crop)]).view(np.uint8), connectivity=connectivity
    )
    return np.asarray(comp), tuple(crop)


def build_lesions(
    stats: Any, *, volume: CTVolume, labels: np.ndarray, connectivity: int = 26
) -> list[Lesion]:
    """Per-lesion report entries from :func:`kernels.lesion_stats` output.

    Args:
        stats: ``kernels.lesion_stats(labels, connectivity=connectivity)``.
        volume: the CTVolume (HU, spacing (dz, dy, dx) mm, affine) the labels belong to.
        labels: uint8 (D, H, W) postprocessed labels on the host.
        connectivity: the connectivity ``stats`` was computed with.

    Returns:
        one :class:`Lesion` per tumor component, in component order.

    Raises:
        RuntimeError: ``stats`` does not describe the tumor components of ``labels``.
    """
    from .lesions import longest_axial_diameter_mm

    records = stats_records(stats)
    if not records:
        return []
    spacing = tuple(float(s) for s in volume.spacing)
    voxel_ml = spacing[0] * spacing[1] * spacing[2] / 1000.0
    comp, crop = tumor_components(labels, connectivity=connectivity)
    origin = np.array([s.start for s in crop])
    hu = volume.hu[crop]
    lesions = []
    for rec in records:
        lo = np.array(rec["bbox"][0]) - origin
        hi = np.array(rec["bbox"][1]) - origin + 1
        if (lo < 0).any() or (hi > comp.shape).any():
            raise RuntimeError(f"lesion {rec['id']}: bounding box {rec['bbox']} lies outside the tumor voxels")
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        mask = comp[box] == rec["id"]
        count = int(np.count_nonzero(mask))
        if count != rec["voxels"]:
            raise RuntimeError(
                f"lesion {rec['id']}: lesion_stats counts {rec['voxels']} voxels, its component has {count}"
            )
        lesions.append(
            Lesion(
                id=rec["id"],
                voxels=rec["voxels"],
                volume_ml=rec["voxels"] * voxel_ml,
                longest_axial_diameter_mm=float(longest_axial_diameter_mm(mask, spacing)),
                centroid_voxel=tuple(float(v) for v in rec["centroid"]),  # type: ignore[arg-type]
                centroid_world_mm=voxel_to_world(volume.affine, rec["centroid"]),
                bbox=rec["bbox"],
                mean_hu=float(hu[box][mask].mean(dtype=np.float64)),
            )
        )
    return lesions


def build_report(result: Result, *, case: str | None = None) -> dict[str, Any]:
    """The JSON-ready report of one segmented case.

    Args:
        result: a :class:`resunet_trt.segmenter.Result`.
        case: case name to record (defaults to the source file's name, or None).
    """
    volume = result.volume
    source = getattr(volume, "source", None)
    if case is None and source is not None:
        from .segmenter import case_name

        case = case_name(source)
    lesions = [les.to_dict() for les in result.lesions]
    return {
        "schema": REPORT_SCHEMA,
        "resunet_trt": __version__,
        "case": case,
        "source": None if source is None else os.fspath(source),
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
    from .io import atomic_write

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
