"""Synthetic liver tumors inserted into real CT on the fly, as training augmentation.

The recipe follows Hu et al., "Label-Free Liver Tumor Segmentation" (CVPR 2023), where a network trained on
synthetic tumors alone matched one trained on real annotated tumors on LiTS:

1. Location: a random liver voxel (the centre may lie a fraction of the radius off it along D, so that thin
   2.5D stacks also show the edge of big tumors centred between or beyond their slices); rejected when the tumor
   would touch a bright vessel, leave the liver by more than a configured fraction, or touch a tumor already
   placed. Vessels are liver voxels brighter than the liver median + ``vessel_threshold_hu`` after a 3x3
   in-plane mean (so that CT noise alone does not count as a vessel).
2. Shape: an ellipsoid of random orientation and axis ratios (volume of the sphere of the drawn diameter), its
   normalised radius distorted by a smooth random field (lobulated, irregular outlines).
3. Texture: Gaussian noise on a coarse grid, interpolated with a Gaussian kernel (scaled-up, blurred noise),
   scaled to ``texture_std_hu``.
4. Intensity: the lesion *adds* ``contrast_hu + texture`` to the CT (hypodense when negative), so the scanner's
   own noise and grain stay in the lesion; large lesions may get a darker necrotic core, some an enhancing rim
   (a brighter ring just inside the edge, ``rim_hu`` relative to the liver).
5. Edge: the added intensity fades in over a soft edge (a Gaussian-blurred step of ``edge_blur_mm``).
6. Mass effect (optional): the liver around the lesion is pushed outwards by a small radial warp in the plane
   (bilinear resampling of each slice inside a box around the lesion; only liver is moved, only from liver).

Decisions: the tumor mask is the set of liver voxels inside the distorted ellipsoid (where the edge blend is
at least one half), minus vessel voxels: a vessel next to or through a lesion keeps its HU and stays liver,
as in the expert labels of LiTS. Nothing outside ``liver`` changes, ever. Everything runs on a box around each
lesion, in numpy only, so a 3x256x256 sample costs a few milliseconds.

Every random draw comes from the ``numpy.random.Generator`` passed in, so a sample's tumors are a pure
function of the generator's state.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from resunet_trt._checks import checked_spacing, reject_unknown_keys

logger = logging.getLogger(__name__)

_RANGE_FIELDS = (
    "count",
    "diameter_mm",
    "contrast_hu",
    "texture_std_hu",
    "texture_scale_mm",
    "edge_blur_mm",
    "rim_hu",
    "necrosis_hu",
)


@dataclass(frozen=True)
class TumorConfig:
    """What the synthetic tumors look like; ranges are (min, max) and drawn uniformly unless said otherwise.

    Attributes:
        probability: chance that a sample gets tumors at all.
        count: (min, max) number of tumors per sample (inclusive, uniform); fewer when the liver has no room.
        diameter_mm: (min, max) diameter of the sphere of equal volume, drawn log-uniformly.
        contrast_hu: (min, max) HU added to the liver inside the lesion (negative: hypodense).
        texture_std_hu: (min, max) standard deviation of the lesion's texture in HU.
        texture_scale_mm: (min, max) grain size of the texture in mm (the interpolation kernel's sigma).
        irregularity: amplitude of the random distortion of the normalised radius (0: a clean ellipsoid).
        elongation: axis ratios are exp(U(-e, e)), renormalised to keep the volume.
        edge_blur_mm: (min, max) sigma of the soft edge in mm (capped at half the radius).
        rim_probability: chance that a lesion of at least ``rim_min_diameter_mm`` has an enhancing rim.
        rim_hu: (min, max) HU of the rim's peak relative to the liver (positive: brighter than the liver).
        rim_width_mm: width of the rim in mm.
        rim_min_diameter_mm: smaller lesions never get a rim.
        necrosis_probability: chance that a lesion of at least ``necrosis_min_diameter_mm`` has a necrotic core.
        necrosis_hu: (min, max) HU added to the core on top of the lesion's contrast.
        necrosis_min_diameter_mm: smaller lesions never get a necrotic core.
        vessel_threshold_hu: vessels are liver voxels brighter than the liver median + this.
        vessel_distance_mm: the lesion (its distorted surface) stays at least this far from vessels.
        min_inside_fraction: at least this fraction of the lesion's voxels must be liver.
        z_offset_fraction: the centre may lie up to this fraction of the radius off the drawn voxel along D.
        max_tries: candidate centres per lesion before it is placed at the least bad one (vessel voxels
            then stay out of its mask) or dropped (no room).
        mass_effect: push the surrounding liver outwards.
        mass_effect_strength: relative radial shift at the lesion's edge (0.1: 10 % of the radius).
    """

    probability: float = 0.5
    count: tuple[int, int] = (1, 4)
    diameter_mm: tuple[float, float] = (3.0, 60.0)
    contrast_hu: tuple[float, float] = (-80.0, -15.0)
    texture_std_hu: tuple[float, float] = (2.0, 10.0)
    texture_scale_mm: tuple[float, float] = (1.0, 4.0)
    irregularity: float = 0.12
    elongation: float = 0.25
    edge_blur_mm: tuple[float, float] = (1.0, 2.5)
    rim_probability: float = 0.2
    rim_hu: tuple[float, float] = (-10.0, 25.0)
    rim_width_mm: float = 2.5
    rim_min_diameter_mm: float = 10.0
    necrosis_probability: float = 0.5
    necrosis_hu: tuple[float, float] = (-40.0, -10.0)
    necrosis_min_diameter_mm: float = 25.0
    vessel_threshold_hu: float = 40.0
    vessel_distance_mm: float = 2.0
    min_inside_fraction: float = 0.7
    z_offset_fraction: float = 0.5
    max_tries: int = 12
    mass_effect: bool = True
    mass_effect_strength: float = 0.12

    def __post_init__(self) -> None:
        for name in _RANGE_FIELDS:
            value = getattr(self, name)
            try:
                lo, hi = value
                lo, hi = float(lo), float(hi)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"TumorConfig.{name} must be a (min, max) pair of numbers, got {value!r}") from exc
            if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
                raise ValueError(f"TumorConfig.{name} must be finite with min <= max, got {value!r}")
            if name == "count":
                if lo != int(lo) or hi != int(hi) or lo < 0:
                    raise ValueError(f"TumorConfig.count must be two integers >= 0, got {value!r}")
                object.__setattr__(self, name, (int(lo), int(hi)))
            else:
                object.__setattr__(self, name, (lo, hi))
        positive = {"diameter_mm": self.diameter_mm[0], "texture_scale_mm": self.texture_scale_mm[0]}
        for name, v in positive.items():
            if v <= 0:
                raise ValueError(f"TumorConfig.{name} must be > 0, got {getattr(self, name)!r}")
        non_negative = {
            "texture_std_hu": self.texture_std_hu[0],
            "edge_blur_mm": self.edge_blur_mm[0],
            "elongation": self.elongation,
            "rim_width_mm": self.rim_width_mm,
            "rim_min_diameter_mm": self.rim_min_diameter_mm,
            "necrosis_min_diameter_mm": self.necrosis_min_diameter_mm,
            "vessel_distance_mm": self.vessel_distance_mm,
            "z_offset_fraction": self.z_offset_fraction,
        }
        for name, v in non_negative.items():
            if not (math.isfinite(float(v)) and v >= 0):
                raise ValueError(f"TumorConfig.{name} must be finite and >= 0, got {getattr(self, name)!r}")
        unit = {
            "probability": self.probability,
            "rim_probability": self.rim_probability,
            "necrosis_probability": self.necrosis_probability,
            "min_inside_fraction": self.min_inside_fraction,
        }
        for name, v in unit.items():
            if not (0.0 <= float(v) <= 1.0):
                raise ValueError(f"TumorConfig.{name} must be in [0, 1], got {v!r}")
        if not 0.0 <= self.irregularity <= 0.3:
            raise ValueError(f"TumorConfig.irregularity must be in [0, 0.3], got {self.irregularity!r}")
        if not 0.0 <= self.mass_effect_strength <= 0.5:
            raise ValueError(
                f"TumorConfig.mass_effect_strength must be in [0, 0.5], got {self.mass_effect_strength!r}"
            )
        if not math.isfinite(self.vessel_threshold_hu):
            raise ValueError(f"TumorConfig.vessel_threshold_hu must be finite, got {self.vessel_threshold_hu!r}")
        if isinstance(self.max_tries, bool) or not isinstance(self.max_tries, int) or self.max_tries < 1:
            raise ValueError(f"TumorConfig.max_tries must be an integer >= 1, got {self.max_tries!r}")
        if not isinstance(self.mass_effect, bool):
            raise ValueError(f"TumorConfig.mass_effect must be a bool, got {self.mass_effect!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TumorConfig:
        """Build from a mapping (a YAML section); unknown keys raise ValueError."""
        reject_unknown_keys(d, {f.name for f in fields(cls)}, "synthetic_tumors")
        d = dict(d)
        for name in _RANGE_FIELDS:
            if name in d and isinstance(d[name], list):
                d[name] = tuple(d[name])
        return cls(**d)


@dataclass(frozen=True)
class PlacedTumor:
    """One lesion as it was drawn (before clipping by the liver and vessels).

    Attributes:
        centre: (d, h, w) centre in voxels (fractional; d may lie outside the array).
        diameter_mm: diameter of the sphere of equal volume.
        contrast_hu: HU added to the liver in the lesion (before texture, rim and necrosis).
        rim: whether it has an enhancing rim.
        necrotic: whether it has a necrotic core.
        vessel_free: False when no vessel-free place was found and vessel voxels were cut out of the lesion.
        voxels: voxels in the returned mask.
    """

    centre: tuple[float, float, float]
    diameter_mm: float
    contrast_hu: float
    rim: bool
    necrotic: bool
    vessel_free: bool
    voxels: int


@dataclass(frozen=True)
class SyntheticTumors:
    """What :func:`synthesize_tumors` returns.

    Attributes:
        hu: float32 (D, H, W) HU with the lesions.
        mask: bool (D, H, W) lesion voxels, all inside the liver.
        tumors: the lesions placed, in drawing order.
    """

    hu: np.ndarray
    mask: np.ndarray
    tumors: tuple[PlacedTumor, ...]


def insert_tumors(
    hu: np.ndarray,
    liver: np.ndarray,
    spacing: Any,
    rng: np.random.Generator,
    config: TumorConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """Insert synthetic tumors into the liver of a CT stack (see the module docstring for the recipe).

    Args:
        hu: (D, H, W) HU, any real dtype; a whole volume or a 2.5D stack of a few slices. Not modified.
        liver: bool (D, H, W) liver mask (pass liver without existing tumors to keep new ones off them).
            Not modified.
        spacing: (dz, dy, dx) in mm.
        rng: the source of every random draw.
        config: what the tumors look like.

    Returns:
        (float32 (D, H, W) HU with the tumors, bool (D, H, W) tumor mask inside ``liver``).

    Raises:
        TypeError: wrong array, generator or config type.
        ValueError: shapes differ, not 3-D, NaN/Inf in ``hu``, bad spacing.
    """
    out = synthesize_tumors(hu, liver, spacing, rng, config)
    return out.hu, out.mask


def synthesize_tumors(
    hu: np.ndarray,
    liver: np.ndarray,
    spacing: Any,
    rng: np.random.Generator,
    config: TumorConfig,
) -> SyntheticTumors:
    """:func:`insert_tumors`, also returning the parameters of every lesion placed."""
    if not isinstance(hu, np.ndarray) or hu.dtype == np.bool_ or hu.dtype.kind not in "iuf":
        got = hu.dtype if isinstance(hu, np.ndarray) else type(hu).__name__
        raise TypeError(f"hu must be a real-valued numpy array, got {got}")
    if hu.ndim != 3 or hu.size == 0:
        raise ValueError(f"hu must be a non-empty (D, H, W) array, got shape {hu.shape}")
    if not isinstance(liver, np.ndarray) or liver.dtype != np.bool_:
        got = liver.dtype if isinstance(liver, np.ndarray) else type(liver).__name__
        raise TypeError(f"liver must be a bool numpy array, got {got}")
    if liver.shape != hu.shape:
        raise ValueError(f"liver must have hu's shape {hu.shape}, got {liver.shape}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if not isinstance(config, TumorConfig):
        raise TypeError(f"config must be a TumorConfig, got {type(config).__name__}")
    step = np.asarray(checked_spacing(spacing), dtype=np.float64)

    out = np.array(hu, dtype=np.float32, copy=True, order="C")
    mask = np.zeros(hu.shape, dtype=bool)
    if hu.dtype.kind == "f" and not np.isfinite(out).all():
        raise ValueError("hu has NaN or Inf values")
    if config.probability <= 0.0 or config.count[1] == 0 or rng.random() >= config.probability:
        return SyntheticTumors(out, mask, ())
    liver = np.ascontiguousarray(liver)
    liver_flat = np.flatnonzero(liver)
    if liver_flat.size == 0:
        return SyntheticTumors(out, mask, ())
    # The median of a strided subsample: exact enough for a threshold, and cheap on a whole volume.
    stride = max(1, liver_flat.size // 50_000)
    vessel_level = float(np.median(out.ravel()[liver_flat[::stride]])) + config.vessel_threshold_hu

    placed: list[PlacedTumor] = []
    n = int(rng.integers(config.count[0], config.count[1] + 1))
    for _ in range(n):
        tumor = _place_one(out, mask, liver, liver_flat, step, vessel_level, rng, config)
        if tumor is not None:
            placed.append(tumor)
    return SyntheticTumors(out, mask, tuple(placed))


# ---------------------------------------------------------------------------------------------------------------------
# One lesion
# ---------------------------------------------------------------------------------------------------------------------
def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1])) if bounds[1] > bounds[0] else float(bounds[0])


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3x3 rotation (QR of a Gaussian matrix with the sign fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _smooth_noise_axis(coords_mm: np.ndarray, scale_mm: float) -> tuple[np.ndarray, int]:
    """Interpolation matrix (n, m) from m coarse nodes ``scale_mm`` apart to the points ``coords_mm``.

    The weights are a Gaussian of sigma ``scale_mm``, each row normalised to unit sum of squares, so that
    i.i.d. unit-variance noise on the nodes becomes smooth unit-variance noise on the points.
    """
    lo, hi = float(coords_mm.min()) - 2 * scale_mm, float(coords_mm.max()) + 2 * scale_mm
    nodes = np.arange(lo, hi + scale_mm, scale_mm)
    w = np.exp(-0.5 * ((coords_mm[:, None] - nodes[None, :]) / scale_mm) ** 2)
    w /= np.sqrt((w * w).sum(axis=1, keepdims=True))
    return w.astype(np.float32), nodes.size


def _smooth_noise(
    rng: np.random.Generator, z: np.ndarray, y: np.ndarray, x: np.ndarray, scale_mm: float
) -> np.ndarray:
    """Smooth unit-variance Gaussian noise (nz, ny, nx) on the grid z x y x w (mm): scaled-up, blurred noise."""
    wz, mz = _smooth_noise_axis(z, scale_mm)
    wy, my = _smooth_noise_axis(y, scale_mm)
    wx, mx = _smooth_noise_axis(x, scale_mm)
    coarse = rng.standard_normal((mz, my, mx), dtype=np.float32)
    # Three small products, one axis at a time; einsum's own loops, no BLAS threads to wake per lesion.
    field = np.einsum("abc,xc->abx", coarse, wx)  # (mz, my, nx)
    field = np.einsum("abx,yb->ayx", field, wy)  # (mz, ny, nx)
    return np.einsum("ayx,za->zyx", field, wz)  # (nz, ny, nx)


def _box_mean_inplane(a: np.ndarray) -> np.ndarray:
    """3x3 in-plane mean of (d, h, w), edges replicated."""
    p = np.pad(a, ((0, 0), (1, 1), (1, 1)), mode="edge")
    h, w = a.shape[1], a.shape[2]
    acc = np.zeros(a.shape, dtype=np.float32)
    for i in range(3):
        for j in range(3):
            acc += p[:, i : i + h, j : j + w]
    return acc / 9.0


@dataclass
class _Shape:
    """The normalised, distorted radius of one lesion on a box of the array."""

    box: tuple[slice, slice, slice]
    rn: np.ndarray  # (bd, bh, bw) float32, 1 on the surface
    coords: tuple[np.ndarray, np.ndarray, np.ndarray]  # mm offsets from the centre along d, h, w


def _shape_on_box(
    centre: np.ndarray,
    extent_mm: float,
    shape: tuple[int, int, int],
    step: np.ndarray,
    rotation: np.ndarray,
    axes_mm: np.ndarray,
    distortion: tuple[np.random.Generator, float, float] | None,
) -> _Shape | None:
    """Evaluate the lesion's normalised radius on the box of half-size ``extent_mm`` around ``centre``."""
    lo = np.maximum(np.floor(centre - extent_mm / step).astype(int), 0)
    hi = np.minimum(np.ceil(centre + extent_mm / step).astype(int) + 1, np.asarray(shape))
    if np.any(hi <= lo):
        return None
    z = (np.arange(lo[0], hi[0]) - centre[0]) * step[0]
    y = (np.arange(lo[1], hi[1]) - centre[1]) * step[1]
    x = (np.arange(lo[2], hi[2]) - centre[2]) * step[2]
    rn2 = np.zeros((z.size, y.size, x.size), dtype=np.float32)
    for k in range(3):
        u = (
            (rotation[0, k] / axes_mm[k]) * z[:, None, None]
            + (rotation[1, k] / axes_mm[k]) * y[None, :, None]
            + (rotation[2, k] / axes_mm[k]) * x[None, None, :]
        )
        rn2 += (u * u).astype(np.float32)
    rn = np.sqrt(rn2)
    if distortion is not None:
        rng, amplitude, scale_mm = distortion
        field = np.clip(_smooth_noise(rng, z, y, x, scale_mm), -2.5, 2.5)
        rn /= 1.0 + amplitude * field
    box = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
    return _Shape(box=box, rn=rn, coords=(z, y, x))


def _place_one(
    out: np.ndarray,
    mask: np.ndarray,
    liver: np.ndarray,
    liver_flat: np.ndarray,
    step: np.ndarray,
    vessel_level: float,
    rng: np.random.Generator,
    cfg: TumorConfig,
) -> PlacedTumor | None:
    """Draw one lesion, find it a place, and write it into ``out`` and ``mask`` (in place)."""
    d_lo, d_hi = cfg.diameter_mm
    diameter = float(math.exp(rng.uniform(math.log(d_lo), math.log(d_hi)))) if d_hi > d_lo else d_lo
    radius = diameter / 2.0
    ratios = np.exp(rng.uniform(-cfg.elongation, cfg.elongation, size=3)) if cfg.elongation > 0 else np.ones(3)
    axes_mm = radius * ratios / float(np.prod(ratios)) ** (1.0 / 3.0)
    rotation = _random_rotation(rng)
    sigma = min(_uniform(rng, cfg.edge_blur_mm), 0.5 * radius)
    reach_mm = float(axes_mm.max()) * (1.0 + 2.5 * cfg.irregularity)  # farthest the surface can go
    gap_mm = max(cfg.vessel_distance_mm, 3.0 * sigma, float(step.max()))
    extent_mm = reach_mm + gap_mm + float(step.max())
    separation = 1.0 + (2.0 + float(step.max())) / radius  # normalised radius kept free of earlier lesions
    vessel_margin = 1.0 + cfg.vessel_distance_mm / radius
    shape3 = out.shape

    best: tuple[int, _Shape, np.ndarray, np.ndarray] | None = None
    for _ in range(cfg.max_tries):
        idx = np.unravel_index(int(liver_flat[rng.integers(liver_flat.size)]), shape3)
        centre = np.asarray(idx, dtype=np.float64) + rng.uniform(-0.5, 0.5, size=3)
        centre[0] += rng.uniform(-1.0, 1.0) * cfg.z_offset_fraction * radius / step[0]
        distortion = (rng, cfg.irregularity, max(0.6 * radius, 1.0)) if cfg.irregularity > 0 else None
        shp = _shape_on_box(centre, extent_mm, shape3, step, rotation, axes_mm, distortion)
        if shp is None:
            continue
        inside = shp.rn <= 1.0
        n_inside = int(np.count_nonzero(inside))
        liver_box = liver[shp.box]
        if n_inside == 0 or np.count_nonzero(inside & liver_box) < cfg.min_inside_fraction * n_inside:
            continue
        if np.any(mask[shp.box] & (shp.rn <= separation)):
            continue
        vessels = liver_box & (_box_mean_inplane(out[shp.box]) > vessel_level)
        hits = int(np.count_nonzero(vessels & (shp.rn <= vessel_margin)))
        if best is None or hits < best[0]:
            best = (hits, shp, centre, vessels)
        if hits == 0:
            break
    if best is None:
        return None
    hits, shp, centre, vessels = best

    if cfg.mass_effect and cfg.mass_effect_strength > 0:
        # The warp reaches twice as far as the lesion; a clean ellipsoid is smooth enough to drive it.
        around = _shape_on_box(centre, 2.0 * reach_mm, shape3, step, rotation, axes_mm, None)
        if around is not None:
            moving = liver[around.box] & ~mask[around.box]
            _mass_effect(out, around, centre, moving, cfg.mass_effect_strength)
            # Vessels near the lesion moved with the liver: find them again where they are now.
            vessels = liver[shp.box] & (_box_mean_inplane(out[shp.box]) > vessel_level)
    free = liver[shp.box] & ~vessels & ~mask[shp.box]

    rn = shp.rn
    distance_in_mm = (1.0 - rn) * radius  # approximate signed distance to the surface, positive inside
    alpha = 0.5 * (1.0 + np.tanh(0.8 * distance_in_mm / max(sigma, 1e-3)))  # erf-shaped step of sigma
    contrast = _uniform(rng, cfg.contrast_hu)
    texture_std = _uniform(rng, cfg.texture_std_hu)
    texture_scale = _uniform(rng, cfg.texture_scale_mm)
    z, y, x = shp.coords
    delta = contrast + texture_std * _smooth_noise(rng, z, y, x, texture_scale)
    necrotic = diameter >= cfg.necrosis_min_diameter_mm and rng.random() < cfg.necrosis_probability
    if necrotic:
        core = rng.uniform(0.3, 0.6)
        core_hu = _uniform(rng, cfg.necrosis_hu)
        delta += core_hu * 0.5 * (1.0 + np.tanh((core - rn) * radius / 2.0))
    rim = diameter >= cfg.rim_min_diameter_mm and rng.random() < cfg.rim_probability
    if rim:
        rim_hu = _uniform(rng, cfg.rim_hu)
        half = 0.5 * cfg.rim_width_mm
        ring = np.exp(-0.5 * (((1.0 - rn) * radius - half) / max(half, 1e-3)) ** 2)
        delta += (rim_hu - contrast) * ring
    weight = alpha * free
    out[shp.box] += (weight * delta).astype(np.float32)
    lesion = (rn <= 1.0) & free
    mask[shp.box] |= lesion
    return PlacedTumor(
        centre=(float(centre[0]), float(centre[1]), float(centre[2])),
        diameter_mm=diameter,
        contrast_hu=contrast,
        rim=bool(rim),
        necrotic=bool(necrotic),
        vessel_free=hits == 0,
        voxels=int(np.count_nonzero(lesion)),
    )


def _mass_effect(out: np.ndarray, shp: _Shape, centre: np.ndarray, free: np.ndarray, strength: float) -> None:
    """Push the liver around the lesion outwards, in the plane of each slice (in place on ``out``).

    A voxel outside the lesion, at normalised radius rn >= 1, shows the tissue that was at rn * q(rn),
    q = 1 - s * exp(-2 (rn - 1)): the map's slope is above 1 everywhere, so tissue is compressed, never folded
    and no pixel is repeated. Inside, the CT stays as it was (only its noise shows through the lesion's
    intensity; magnifying it would repeat pixels and thin out the noise). Only voxels in ``free``
    (liver, not an earlier lesion) are written, and only from sources in ``free``, so no fat or earlier lesion
    is pulled into the liver; vessels move with the liver around them. The source is the nearest pixel:
    interpolating would smooth the CT noise around every lesion, a cue no real tumor has.
    """
    rn = shp.rn
    q = 1.0 - strength * np.exp(-2.0 * np.maximum(rn - 1.0, 0.0))
    bd, bh, bw = rn.shape
    box = shp.box
    h0, w0 = box[1].start, box[2].start
    rows = np.arange(h0, h0 + bh, dtype=np.float32)[None, :, None]
    cols = np.arange(w0, w0 + bw, dtype=np.float32)[None, None, :]
    src_r = np.rint(np.float32(centre[1]) + (rows - np.float32(centre[1])) * q - h0).astype(np.intp)
    src_c = np.rint(np.float32(centre[2]) + (cols - np.float32(centre[2])) * q - w0).astype(np.intp)
    valid = free & (rn >= 1.0) & (src_r >= 0) & (src_c >= 0) & (src_r < bh) & (src_c < bw)
    src_r = np.clip(src_r, 0, bh - 1)
    src_c = np.clip(src_c, 0, bw - 1)
    dd = np.broadcast_to(np.arange(bd)[:, None, None], rn.shape)
    valid &= free[dd, src_r, src_c]
    region = out[box]
    warped = region[dd, src_r, src_c]
    region[valid] = warped[valid]
