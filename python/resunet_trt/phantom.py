"""A synthetic abdominal CT phantom with liver and tumor labels, fast enough for LiTS-size benchmarks.

The anatomy is a set of analytic shapes (ellipses and ellipsoids, some with a smooth "lobulation" term) laid out
in normalised coordinates of the field of view, so any ``shape`` gets a whole abdomen:

* ``u`` along W, -1 at the image's left edge (patient right) to +1 (patient left);
* ``v`` along H, -1 anterior to +1 posterior;
* ``t`` along D, 0 inferior to 1 superior.

This is the project's canonical orientation (D inferior->superior, H anterior->posterior, W patient right->left),
so the liver sits at small W and large D. Tumors are spheroids sized in millimetres from ``spacing`` (radii
from 2.5 mm to 30 mm), clamped to at least one voxel and to the liver's size.

Generation works slab by slab (16 slices): each shape is evaluated only inside its bounding box, with
separable 1D terms broadcast over the box, into a uint8 tissue map. The tissue map gives the labels through one
lookup and the HU image through another, then a [1, 2, 1] partial-volume blur along each axis (slabs carry one
halo slice on each side) and Gaussian noise (cut from a small bank, see ``NoiseBank``). Peak memory is the two
outputs plus a few slab buffers; a 512 x 512 x 400 phantom takes a few seconds on two cores.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._checks import checked_spacing
from .phantom_shapes import Ellipsoid, Grid, NoiseBank, blur121, paint

__all__ = ["TISSUE_HU", "make_phantom"]

logger = logging.getLogger(__name__)

# Tissue ids of the internal tissue map. Tumor ids follow _TUMOR_BASE (one id per tumor and one per necrotic core).
_AIR, _FAT, _MUSCLE, _CAVITY, _LUNG, _LIVER, _GALLBLADDER, _SPLEEN, _KIDNEY, _KIDNEY_SINUS = range(10)
_AORTA, _IVC, _CORTICAL, _CANCELLOUS, _DISC, _CSF, _RIB, _HEPATIC_VESSEL = range(10, 18)
_TUMOR_BASE = 32
_MAX_TUMORS = 100

#: Nominal HU of each tissue before blur and noise (contrast-enhanced, portal venous phase).
TISSUE_HU: dict[str, float] = {
    "air": -1000.0,
    "fat": -100.0,
    "muscle": 50.0,
    "lung": -850.0,
    "liver": 100.0,
    "gallbladder": 10.0,
    "spleen": 115.0,
    "kidney": 170.0,
    "kidney_sinus": -40.0,
    "aorta": 190.0,
    "ivc": 140.0,
    "hepatic_vessel": 165.0,
    "cortical_bone": 750.0,
    "cancellous_bone": 450.0,
    "disc": 90.0,
    "csf": 15.0,
    "rib": 600.0,
}

_SLAB = 16  # slices per slab: a few MB of float32 buffers at 512 x 512


def _check_shape(shape: Any) -> tuple[int, int, int]:
    try:
        dims = tuple(shape)
    except TypeError:
        raise ValueError(f"shape must be a sequence of 3 positive ints (D, H, W), got {shape!r}") from None
    if len(dims) != 3 or not all(
        isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1 for n in dims
    ):
        raise ValueError(f"shape must be 3 positive ints (D, H, W), got {shape!r}")
    return int(dims[0]), int(dims[1]), int(dims[2])


class _Anatomy:
    """The per-seed layout: organ shapes, ribs and tumors, plus the HU and label lookup tables."""

    def __init__(
        self,
        shape: tuple[int, int, int],
        spacing: tuple[float, float, float],
        rng: np.random.Generator,
        n_tumors: int | None,
    ) -> None:
        self.shape = shape
        self.spacing = spacing
        depth = shape[0]
        self.z_extent_mm = depth * spacing[0]

        def jit(scale: float) -> float:
            return float(rng.uniform(-scale, scale))

        def lob(amp: float) -> tuple[float, float, float, float, float, float, float]:
            return (
                amp,
                float(rng.uniform(5.0, 9.0)),
                float(rng.uniform(0, 2 * math.pi)),
                float(rng.uniform(4.0, 8.0)),
                float(rng.uniform(0, 2 * math.pi)),
                float(rng.uniform(3.0, 7.0)),
                float(rng.uniform(0, 2 * math.pi)),
            )

        # Body outline: semi-axes vary slowly with t (wider pelvis below, narrower towards the chest).
        self.body_center = (0.0, 0.03)
        self.body_u = (0.84 + jit(0.03), 0.04, float(rng.uniform(0, 2 * math.pi)))
        self.body_v = (0.60 + jit(0.03), 0.03, float(rng.uniform(0, 2 * math.pi)))
        self.fat_thickness = (0.07 + jit(0.015), 0.06 + jit(0.015))
        self.wall_thickness = 0.035

        liver_shift = (jit(0.03), jit(0.03), jit(0.02))

        def liver_lobe(c: tuple[float, float, float], s: tuple[float, float, float]) -> Ellipsoid:
            center = (c[0] + liver_shift[0], c[1] + liver_shift[1], c[2] + liver_shift[2])
            return Ellipsoid(_LIVER, center, s, only_on=_CAVITY, lob=lob(0.18))

        self.liver_lobes = [
            liver_lobe((-0.42, 0.02, 0.70), (0.34, 0.40, 0.27)),  # right lobe
            liver_lobe((-0.02, -0.20, 0.78), (0.30, 0.16, 0.16)),  # left lobe, anterior
            liver_lobe((-0.52, 0.10, 0.48), (0.18, 0.25, 0.11)),  # inferior tip of the right lobe
            liver_lobe((-0.14, 0.14, 0.70), (0.10, 0.10, 0.11)),  # caudate
        ]
        self.before_liver = [
            Ellipsoid(_LUNG, (-0.40, 0.12, 1.10), (0.30, 0.36, 0.17), only_on=_CAVITY),
            Ellipsoid(_LUNG, (0.40, 0.12, 1.08), (0.30, 0.36, 0.17), only_on=_CAVITY),
        ]
        kidney_t = (0.36 + jit(0.03), 0.40 + jit(0.03))
        self.after_liver = [
            Ellipsoid(_GALLBLADDER, (-0.30, -0.16, 0.52 + jit(0.03)), (0.07, 0.09, 0.07)),
            Ellipsoid(
                _SPLEEN, (0.55, 0.22, 0.70 + jit(0.03)), (0.14, 0.22, 0.13), only_on=_CAVITY, lob=lob(0.12)
            ),
            Ellipsoid(_KIDNEY, (-0.32, 0.36, kidney_t[0]), (0.09, 0.12, 0.13)),
            Ellipsoid(_KIDNEY_SINUS, (-0.29, 0.34, kidney_t[0]), (0.035, 0.05, 0.07)),
            Ellipsoid(_KIDNEY, (0.32, 0.36, kidney_t[1]), (0.09, 0.12, 0.13)),
            Ellipsoid(_KIDNEY_SINUS, (0.29, 0.34, kidney_t[1]), (0.035, 0.05, 0.07)),
            Ellipsoid(_AORTA, (0.07, 0.26, 0.0), (0.045, 0.045, math.inf)),
            Ellipsoid(_IVC, (-0.13, 0.22, 0.0), (0.05, 0.035, math.inf)),
            # Paraspinal muscles, then the vertebra: body (cortex + cancellous), arch, canal, spinous process.
            Ellipsoid(_MUSCLE, (-0.14, 0.50, 0.0), (0.10, 0.07, math.inf)),
            Ellipsoid(_MUSCLE, (0.14, 0.50, 0.0), (0.10, 0.07, math.inf)),
            Ellipsoid(_CORTICAL, (0.0, 0.40, 0.0), (0.085, 0.075, math.inf)),
            Ellipsoid(_CANCELLOUS, (0.0, 0.40, 0.0), (0.070, 0.060, math.inf)),
            Ellipsoid(_CORTICAL, (0.0, 0.515, 0.0), (0.060, 0.050, math.inf)),
            Ellipsoid(_CSF, (0.0, 0.515, 0.0), (0.032, 0.030, math.inf)),
            Ellipsoid(_CORTICAL, (0.0, 0.58, 0.0), (0.016, 0.040, math.inf)),
        ]
        self.spine_center = (0.0, 0.40)
        self.disc_phase = float(rng.uniform(0, 1))
        # Ribs: dots on a ring inside the abdominal wall, each seen in a band of slices (every 30 mm).
        self.ribs = [
            (math.radians(angle + jit(5.0)), float(rng.uniform(0, 1)), float(rng.uniform(-0.3, 0.3)))
            for angle in (-45, -20, 5, 30, 55, 125, 150, 175, 200, 225)
        ]
        self.liver_hu = TISSUE_HU["liver"] + jit(10.0)
        self.tumors = self._place_tumors(rng, n_tumors)
        # Enhanced hepatic veins (running up to the IVC) and portal branches (across the liver from the hilum):
        # thin ellipsoids painted on liver only, after the tumors, so they never cut a lesion.
        ivc_u, ivc_v = -0.13, 0.22
        self.vessels = [
            Ellipsoid(
                _HEPATIC_VESSEL,
                (ivc_u + du + jit(0.02), ivc_v + dv + jit(0.02), 0.80 + jit(0.03)),
                (0.018, 0.018, 0.14),
                only_on=_LIVER,
            )
            for du, dv in ((-0.20, -0.05), (-0.08, -0.22), (0.12, -0.25))
        ] + [
            Ellipsoid(
                _HEPATIC_VESSEL,
                (-0.30 + jit(0.03), 0.08 + jit(0.03), 0.62 + jit(0.03)),
                (0.20, 0.02, 0.02),
                only_on=_LIVER,
            ),
            Ellipsoid(
                _HEPATIC_VESSEL,
                (-0.45 + jit(0.03), -0.08 + jit(0.03), 0.70 + jit(0.03)),
                (0.02, 0.17, 0.02),
                only_on=_LIVER,
            ),
            Ellipsoid(
                _HEPATIC_VESSEL,
                (-0.05 + jit(0.03), -0.15 + jit(0.03), 0.72 + jit(0.03)),
                (0.16, 0.02, 0.02),
                only_on=_LIVER,
            ),
        ]

        self.hu_lut = np.zeros(256, dtype=np.float32)
        names = {
            _AIR: "air", _FAT: "fat", _MUSCLE: "muscle", _LUNG: "lung", _GALLBLADDER: "gallbladder",
            _SPLEEN: "spleen", _KIDNEY: "kidney", _KIDNEY_SINUS: "kidney_sinus", _AORTA: "aorta", _IVC: "ivc",
            _HEPATIC_VESSEL: "hepatic_vessel",
            _CORTICAL: "cortical_bone", _CANCELLOUS: "cancellous_bone", _DISC: "disc", _CSF: "csf", _RIB: "rib",
        }  # fmt: skip
        for tid, name in names.items():
            self.hu_lut[tid] = TISSUE_HU[name]
        self.hu_lut[_CAVITY] = 0.0  # replaced by a bowel/fat texture
        self.hu_lut[_LIVER] = self.liver_hu
        self.label_lut = np.zeros(256, dtype=np.uint8)
        self.label_lut[_LIVER] = 1
        self.label_lut[_HEPATIC_VESSEL] = 1  # vessels inside the liver are liver in LiTS-style labels
        for k, tumor in enumerate(self.tumors):
            self.hu_lut[_TUMOR_BASE + 2 * k] = tumor["hu"]
            self.hu_lut[_TUMOR_BASE + 2 * k + 1] = tumor["core_hu"]
            self.label_lut[_TUMOR_BASE + 2 * k : _TUMOR_BASE + 2 * k + 2] = 2
        self.tex = tuple(float(x) for x in rng.uniform(0, 2 * math.pi, size=3)) + tuple(
            float(x) for x in rng.uniform(9.0, 15.0, size=3)
        )

    # -- liver and tumors ------------------------------------------------------------------------------------------
    def liver_value(self, u: np.ndarray, v: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Implicit liver value (<= 0 inside the union of lobes), ignoring what other organs cut away."""
        return np.minimum.reduce([lobe.value(u, v, t) for lobe in self.liver_lobes])

    def _occupied_by_others(self, u: np.ndarray, v: np.ndarray, t: np.ndarray) -> np.ndarray:
        out = np.zeros(np.broadcast(u, v, t).shape, dtype=bool)
        for organ in self.after_liver + self.before_liver:
            out |= organ.value(u, v, t) <= 0.05
        (cu, cv), (au, av) = self.body_center, self._cavity_semi(t)
        out |= ((u - cu) / au) ** 2 + ((v - cv) / av) ** 2 > 0.9
        return out

    def _body_semi(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a0, da, pa = self.body_u
        b0, db, pb = self.body_v
        au = a0 + da * np.cos(2 * np.pi * t + pa) + 0.03 * (0.5 - t)
        av = b0 + db * np.cos(2 * np.pi * 0.7 * t + pb)
        return au, av

    def _cavity_semi(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        au, av = self._body_semi(t)
        fu, fv = self.fat_thickness
        return au - fu - self.wall_thickness, av - fv - self.wall_thickness

    def _place_tumors(self, rng: np.random.Generator, n_tumors: int | None) -> list[dict]:
        depth, height, width = self.shape
        dz, dy, dx = self.spacing
        if n_tumors is None:
            n_tumors = int(rng.integers(3, 9))
        if n_tumors == 0:
            return []
        # Radii spread over 2.5 mm .. 30 mm (log scale), shuffled, so every phantom has small and large lesions.
        radii = np.geomspace(2.5, 30.0, n_tumors) if n_tumors > 1 else np.array([rng.uniform(5.0, 25.0)])
        radii = radii * rng.uniform(0.85, 1.15, size=n_tumors)
        rng.shuffle(radii)
        # The right lobe's half extents in mm bound the largest lesion along each axis.
        au, av, at = self.liver_lobes[0].semi
        half_mm = np.array([at * depth * dz, av * height * dy, au * width * dx])
        step = np.array([dz, dy, dx])

        # Candidate centres on voxel centres inside the right lobe's box, deep inside the liver.
        n_cand = 4096
        lobe = self.liver_lobes[0]
        cand_t = rng.uniform(lobe.center[2] - at, min(lobe.center[2] + at, 1.0), n_cand)
        cand_v = rng.uniform(-1.0, 1.0, n_cand) * av + lobe.center[1]
        cand_u = rng.uniform(-1.0, 1.0, n_cand) * au + lobe.center[0]
        idx = np.stack(
            [
                np.clip(np.floor(cand_t * depth), 0, depth - 1),
                np.clip(np.floor((cand_v + 1.0) * height / 2.0), 0, height - 1),
                np.clip(np.floor((cand_u + 1.0) * width / 2.0), 0, width - 1),
            ],
            axis=1,
        )
        t = (idx[:, 0] + 0.5) / depth
        v = (idx[:, 1] + 0.5) / height * 2.0 - 1.0
        u = (idx[:, 2] + 0.5) / width * 2.0 - 1.0
        depth_value = self.liver_value(u, v, t)
        ok = ~self._occupied_by_others(u, v, t)
        tumors: list[dict] = []
        for k, radius in enumerate(radii):
            semi_mm = float(radius) * rng.uniform(0.8, 1.2, size=3)
            semi_mm = np.minimum(semi_mm, 0.45 * half_mm)
            semi_vox = np.maximum(semi_mm / step, 1.0)
            centre_mm = None
            for limit in (-0.45, -0.25, 0.0):
                good = np.flatnonzero(ok & (depth_value <= limit))
                for i in good:
                    c_mm = idx[i] * step
                    if all(
                        np.linalg.norm((c_mm - o["center_mm"]) / (o["semi_mm"] + semi_mm)) > 1.1
                        for o in tumors
                    ):
                        centre_mm = c_mm
                        break
                if centre_mm is not None:
                    break
            if centre_mm is None:
                logger.debug("phantom: no room for tumor %d (radius %.1f mm)", k, radius)
                continue
            hypo = k % 3 != 2
            contrast = rng.uniform(35.0, 65.0) if hypo else rng.uniform(35.0, 70.0)
            hu = self.liver_hu - contrast if hypo else self.liver_hu + contrast
            tumors.append(
                {
                    "center_mm": centre_mm,
                    "semi_mm": semi_mm,
                    "center_vox": centre_mm / step,
                    "semi_vox": semi_vox,
                    "hu": float(hu),
                    # Large hypodense lesions get a necrotic core at half the radius.
                    "core_hu": float(rng.uniform(5.0, 25.0) if hypo and radius > 12.0 else hu),
                }
            )
        return tumors

    # -- one slab ----------------------------------------------------------------------------------------------------
    def tissue_slab(self, d0: int, d1: int) -> tuple[np.ndarray, Grid]:
        """uint8 tissue map (d1-d0, H, W) of slices [d0, d1)."""
        _depth, height, width = self.shape
        grid = Grid(self.shape, d0, d1)
        u, v, t = grid.u[None, None, :], grid.v[None, :, None], grid.t[:, None, None]
        tissue = np.zeros((d1 - d0, height, width), dtype=np.uint8)
        cu, cv = self.body_center
        du2 = (u - cu) ** 2
        dv2 = (v - cv) ** 2
        au, av = self._body_semi(t)
        fu, fv = self.fat_thickness
        for tid, (su, sv) in (
            (_FAT, (au, av)),
            (_MUSCLE, (au - fu, av - fv)),
            (_CAVITY, (au - fu - self.wall_thickness, av - fv - self.wall_thickness)),
        ):
            inside = du2 * (1.0 / su**2) + dv2 * (1.0 / sv**2) <= 1.0
            np.copyto(tissue, np.uint8(tid), where=inside)
        for organ in self.before_liver + self.liver_lobes:
            paint(tissue, grid, organ)
        self._paint_tumors(tissue, d0, d1)
        for vessel in self.vessels:
            paint(tissue, grid, vessel)
        for organ in self.after_liver:
            paint(tissue, grid, organ)
        self._paint_discs(tissue, grid)
        self._paint_ribs(tissue, grid)
        return tissue, grid

    def _paint_tumors(self, tissue: np.ndarray, d0: int, d1: int) -> None:
        depth, height, width = self.shape
        for k, tumor in enumerate(self.tumors):
            c, s = tumor["center_vox"], tumor["semi_vox"]
            lo = np.maximum(np.floor(c - s).astype(int), 0)
            hi = np.minimum(np.ceil(c + s).astype(int) + 1, (depth, height, width))
            z0, z1 = max(lo[0], d0), min(hi[0], d1)
            if z0 >= z1 or lo[1] >= hi[1] or lo[2] >= hi[2]:
                continue
            rz = ((np.arange(z0, z1) - c[0]) / s[0]) ** 2
            ry = ((np.arange(lo[1], hi[1]) - c[1]) / s[1]) ** 2
            rx = ((np.arange(lo[2], hi[2]) - c[2]) / s[2]) ** 2
            r2 = rz[:, None, None] + ry[None, :, None] + rx[None, None, :]
            target = tissue[z0 - d0 : z1 - d0, lo[1] : hi[1], lo[2] : hi[2]]
            on_liver = target == _LIVER
            np.copyto(target, np.uint8(_TUMOR_BASE + 2 * k), where=on_liver & (r2 <= 1.0))
            if tumor["core_hu"] != tumor["hu"]:
                np.copyto(target, np.uint8(_TUMOR_BASE + 2 * k + 1), where=on_liver & (r2 <= 0.25))

    def _paint_discs(self, tissue: np.ndarray, grid: Grid) -> None:
        # A 36 mm vertebral period: 8 mm of disc replaces the vertebral body.
        z_mm = grid.t * self.z_extent_mm
        disc_slices = np.flatnonzero((z_mm / 36.0 + self.disc_phase) % 1.0 < 8.0 / 36.0)
        vertebral_body = Ellipsoid(_DISC, (*self.spine_center, 0.0), (0.085, 0.075, math.inf))
        box = grid.box(vertebral_body.center, vertebral_body.semi, 1.0)
        if box is None or disc_slices.size == 0:
            return
        _, sh, sw = box
        in_body = vertebral_body.value(grid.u[None, sw], grid.v[sh, None], grid.t[:1, None]) <= 0.0
        for i in disc_slices:
            target = tissue[i, sh, sw]
            bone = (target == _CORTICAL) | (target == _CANCELLOUS)
            np.copyto(target, np.uint8(_DISC), where=bone & in_body)

    def _paint_ribs(self, tissue: np.ndarray, grid: Grid) -> None:
        z_mm = grid.t * self.z_extent_mm
        for i, t in enumerate(grid.t):
            if t < 0.42:
                continue
            cavity_u, cavity_v = self._cavity_semi(grid.t[i : i + 1])
            su, sv = float(cavity_u[0]) + 0.017, float(cavity_v[0]) + 0.017
            for angle, phase, drift in self.ribs:
                if (z_mm[i] / 30.0 + phase) % 1.0 > 0.3:
                    continue
                a = angle + drift * float(t)
                centre = (self.body_center[0] + su * math.cos(a), self.body_center[1] + sv * math.sin(a), 0.0)
                rib = Ellipsoid(_RIB, centre, (0.022, 0.016, math.inf))
                box = grid.box(rib.center, rib.semi, 1.0)
                if box is None:
                    continue
                _, sh, sw = box
                inside = rib.value(grid.u[None, sw], grid.v[sh, None], grid.t[i : i + 1, None]) <= 0.0
                np.copyto(tissue[i, sh, sw], np.uint8(_RIB), where=inside)

    def hu_slab(self, tissue: np.ndarray, grid: Grid) -> np.ndarray:
        """float32 HU (before blur and noise) of a tissue slab."""
        hu = self.hu_lut[tissue]
        # Bowel and mesenteric fat: a smooth separable mixture between -70 and 40 HU.
        pu, pv, pt, fu, fv, ft = self.tex
        mix = (
            np.sin(fu * grid.u + pu)[None, None, :]
            * np.sin(fv * grid.v + pv)[None, :, None]
            * np.cos(ft * grid.t + pt)[:, None, None]
        )
        cavity = tissue == _CAVITY
        np.copyto(hu, (-15.0 + 55.0 * mix).astype(np.float32), where=cavity)
        return hu


def make_phantom(
    shape: Sequence[int] = (400, 512, 512),
    spacing: Sequence[float] = (1.0, 0.8, 0.8),
    seed: int = 0,
    *,
    n_tumors: int | None = None,
    noise_hu: float = 12.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Make a synthetic contrast-enhanced abdominal CT with liver and tumor labels.

    The abdomen fills the field of view whatever ``shape`` is (see the module docstring); the default geometry,
    512 x 512 at 0.8 mm over 400 slices of 1 mm, gives a body about 35 cm wide. Orientation is canonical:
    D inferior->superior, H anterior->posterior, W patient right->patient left, so the liver lies at small W in
    the upper (large D) part of the volume.

    Args:
        shape: (D, H, W) of the volume, each >= 1.
        spacing: (dz, dy, dx) voxel size in mm, each > 0. It sets tumor sizes in mm (the anatomy scales with
            the field of view).
        seed: Seed of the layout, tumors and noise; the same seed gives the same phantom.
        n_tumors: Number of tumors; None draws 3 to 8. Radii spread from about 2.5 mm to 30 mm, two thirds
            hypodense (35-65 HU below liver, large ones with a necrotic core), one third hyperdense. Fewer
            are placed when the liver has no room left.
        noise_hu: Standard deviation of the Gaussian noise in HU (0 for a noise-free image).

    Returns:
        (ct, labels): ct int16 (D, H, W) in HU (air -1000, fat about -100, muscle 50, liver about 100, bone
        450-750), after a [1, 2, 1] partial-volume blur along each axis and noise; labels uint8 (D, H, W) with
        0 background, 1 liver, 2 tumor (tumor voxels always lie inside the liver).

    Raises:
        ValueError: On a bad shape, spacing, n_tumors or noise_hu.
        TypeError: When seed is not an int.
    """
    dims = _check_shape(shape)
    steps = checked_spacing(spacing)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if n_tumors is not None and (
        isinstance(n_tumors, bool)
        or not isinstance(n_tumors, (int, np.integer))
        or not 0 <= n_tumors <= _MAX_TUMORS
    ):
        raise ValueError(f"n_tumors must be None or an int in [0, {_MAX_TUMORS}], got {n_tumors!r}")
    try:
        noise = float(noise_hu)
    except (TypeError, ValueError):
        raise ValueError(f"noise_hu must be a finite float >= 0, got {noise_hu!r}") from None
    if not (math.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise_hu must be a finite float >= 0, got {noise_hu!r}")

    layout_seq, noise_seq = np.random.SeedSequence(int(seed)).spawn(2)
    anatomy = _Anatomy(dims, steps, np.random.default_rng(layout_seq), n_tumors)
    bank = NoiseBank(dims, noise, np.random.default_rng(noise_seq)) if noise > 0 else None

    depth = dims[0]
    ct = np.empty(dims, dtype=np.int16)
    labels = np.empty(dims, dtype=np.uint8)
    for s0 in range(0, depth, _SLAB):
        s1 = min(s0 + _SLAB, depth)
        h0, h1 = max(s0 - 1, 0), min(s1 + 1, depth)  # one halo slice each side for the blur along D
        tissue, grid = anatomy.tissue_slab(h0, h1)
        core = slice(s0 - h0, s0 - h0 + (s1 - s0))
        labels[s0:s1] = anatomy.label_lut[tissue[core]]
        hu = anatomy.hu_slab(tissue, grid)
        del tissue
        # Blur along D on the slab with its halo, then keep the core slices: the halo makes the blur exact
        # across slab borders, and the volume's own edges replicate.
        hu = blur121(blur121(blur121(hu, 1), 2), 0)[core]
        hu *= np.float32(1.0 / 64.0)  # the three [1, 2, 1] filters' normalisation
        if bank is not None:
            bank.add_to(hu, s0)
        np.rint(hu, out=hu)
        np.clip(hu, -1024, 3071, out=hu)
        ct[s0:s1] = hu
    return ct, labels
