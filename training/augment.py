"""On-the-fly 2D augmentation of (K, h, w) samples with their (h, w) labels, kept aligned.

Geometry: optional exact flips and 90-degree rotations (index permutations, invertible bit for bit), then one
affine map (rotation, isotropic scaling, translation) plus an optional smooth elastic displacement, applied to the
image and the label through the *same* sampling grid: bilinear for the image, nearest for the label.

Intensity (image only, after the geometry): contrast and brightness jitter around the sample mean, gamma, and
Gaussian noise. The input is windowed HU in [0, 1]; outside the field of view the image is padded with 0
(the bottom of the window, i.e. air/fat) and the label with background.

Every random draw comes from a ``numpy.random.Generator`` passed in by the caller, so a sample's augmentation
is a pure function of its seed (deterministic across worker processes and across resumed runs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from resunet_trt._checks import reject_unknown_keys


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation strengths; 0 or False disables a transform.

    Attributes:
        flip_prob: probability of a left-right flip (and, independently, of an up-down flip when ``flip_ud``).
        flip_ud: also flip up-down.
        rot90_prob: probability of a random multiple of 90 degrees.
        rotate_deg: maximal absolute in-plane rotation (uniform).
        scale: (min, max) isotropic zoom factor (log-uniform); > 1 zooms in.
        translate: maximal shift as a fraction of the plane size.
        elastic_prob: probability of an elastic deformation.
        elastic_alpha: displacement amplitude in pixels (at the plane size).
        elastic_grid: control points per side of the random displacement field (smoothness).
        affine_prob: probability of applying the affine/elastic resampling at all.
        contrast: maximal relative contrast change.
        brightness: maximal additive shift (in window units, 1 = whole window).
        gamma: maximal relative gamma change (gamma in [1 - g, 1 + g]).
        noise_std: maximal standard deviation of additive Gaussian noise.
        intensity_prob: probability of the intensity transforms.
        slice_flip_prob: probability of reversing the K context channels (the slice axis flipped), which makes
            the network's answer the same for a volume stored head-first or feet-first and lets inference average
            the two (test-time flip averaging).
        dark_vessel_prob: probability of turning the liver's bright vessels dark (their contrast to the liver's
            median inverted and scaled by U(0.3, 1)), as they are in non-contrast, arterial-phase or delayed scans;
            they stay labelled liver, so that a dark tube in the liver is not taken for a tumor.
        lowres_prob: probability of blurring the image as a coarser scan would show it: area-downsampled in
            plane by a factor drawn log-uniformly from ``lowres_factor`` and interpolated back (bilinear); the
            label keeps its detail. A scan at 5 mm pixels resampled to the model's 1.5 mm looks like this.
        lowres_factor: (min, max) downsampling factor for ``lowres_prob``.
    """

    flip_prob: float = 0.5
    flip_ud: bool = False
    rot90_prob: float = 0.0
    rotate_deg: float = 15.0
    scale: tuple[float, float] = (0.85, 1.2)
    translate: float = 0.05
    elastic_prob: float = 0.2
    elastic_alpha: float = 6.0
    elastic_grid: int = 5
    affine_prob: float = 0.8
    contrast: float = 0.2
    brightness: float = 0.08
    gamma: float = 0.25
    noise_std: float = 0.03
    intensity_prob: float = 0.8
    slice_flip_prob: float = 0.0
    dark_vessel_prob: float = 0.0
    lowres_prob: float = 0.0
    lowres_factor: tuple[float, float] = (1.5, 3.5)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AugmentConfig:
        reject_unknown_keys(d, cls.__dataclass_fields__, "augment")
        d = dict(d)
        for key in ("scale", "lowres_factor"):
            if key in d:
                d[key] = tuple(float(v) for v in d[key])
        lo, hi = d.get("lowres_factor", (1.5, 3.5))
        if not 1.0 <= lo <= hi:
            raise ValueError(f"augment.lowres_factor must be (min, max) with 1 <= min <= max, got {(lo, hi)}")
        return cls(**d)

    @classmethod
    def disabled(cls) -> AugmentConfig:
        return cls(flip_prob=0.0, rot90_prob=0.0, affine_prob=0.0, intensity_prob=0.0)


def flip_rot90(image: np.ndarray, label: np.ndarray, *, flip_lr: bool, flip_ud: bool, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact flips then ``k`` quarter turns (counter-clockwise) of (K, h, w) image and (h, w) label."""
    if flip_lr:
        image, label = image[..., ::-1], label[..., ::-1]
    if flip_ud:
        image, label = image[..., ::-1, :], label[..., ::-1, :]
    if k % 4:
        image, label = np.rot90(image, k, axes=(-2, -1)), np.rot90(label, k, axes=(-2, -1))
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


def affine_matrix(*, angle_deg: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    """2x3 matrix mapping output normalised coordinates (x, y in [-1, 1]) to input coordinates.

    A rotation by ``angle_deg`` and zoom by ``scale`` of the content (``scale > 1`` enlarges it), then a shift of
    the content by ``shift`` (x, y) in normalised units.
    """
    a = math.radians(angle_deg)
    c, s = math.cos(a) / scale, math.sin(a) / scale
    tx, ty = shift
    # inverse of (rotate, scale, translate): input = R(-a) / scale @ (output - t)
    return np.array([[c, s, -(c * tx + s * ty)], [-s, c, -(-s * tx + c * ty)]], dtype=np.float64)


def sampling_grid(
    theta: np.ndarray, size: tuple[int, int], displacement: np.ndarray | None = None
) -> Any:
    """A (1, h, w, 2) torch grid for ``grid_sample`` (align_corners=False) from a 2x3 affine ``theta`` and an
    optional (2, h, w) displacement in pixels (x, y)."""
    import torch
    import torch.nn.functional as F

    h, w = size
    t = torch.from_numpy(theta.astype(np.float32))[None]
    grid = F.affine_grid(t, [1, 1, h, w], align_corners=False)
    if displacement is not None:
        d = torch.from_numpy(displacement.astype(np.float32))
        grid = grid + torch.stack([d[0] * (2.0 / w), d[1] * (2.0 / h)], -1)[None]
    return grid


def warp(image: np.ndarray, label: np.ndarray, grid: Any) -> tuple[np.ndarray, np.ndarray]:
    """Resample (K, h, w) image (bilinear) and (h, w) label (nearest) through one grid; pad with 0."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    y = torch.from_numpy(np.ascontiguousarray(label, dtype=np.float32))[None, None]
    xo = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    yo = F.grid_sample(y, grid, mode="nearest", padding_mode="zeros", align_corners=False)[0, 0]
    return xo.numpy(), yo.round().to(torch.uint8).numpy()


def elastic_displacement(rng: np.random.Generator, size: tuple[int, int], *, alpha: float, grid: int) -> np.ndarray:
    """Smooth random (2, h, w) displacement in pixels: Gaussian control points upsampled bicubically."""
    import torch
    import torch.nn.functional as F

    coarse = torch.from_numpy(rng.normal(0.0, 1.0, size=(1, 2, grid, grid)).astype(np.float32))
    fine = F.interpolate(coarse, size=size, mode="bicubic", align_corners=True)[0]
    return (fine * alpha).numpy()


def random_crop(
    image: np.ndarray,
    label: np.ndarray,
    size: tuple[int, int],
    rng: np.random.Generator,
    *,
    foreground_prob: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Crop (K, h, w) image and (h, w) label to ``size`` at the same place.

    With probability ``foreground_prob`` (and when the label has foreground) the crop is centred, as far as the
    borders allow, on a random foreground pixel; otherwise its corner is uniform. Cropping keeps the pixel scale,
    so a network trained on crops of the plane sees structures at the size it meets at inference.
    """
    ch, cw = size
    h, w = label.shape
    if ch > h or cw > w:
        raise ValueError(f"crop size {size} exceeds the plane {(h, w)}")
    if rng.random() < foreground_prob and label.any():
        ys, xs = np.nonzero(label)
        i = int(rng.integers(0, len(ys)))
        top = int(np.clip(ys[i] - ch // 2, 0, h - ch))
        left = int(np.clip(xs[i] - cw // 2, 0, w - cw))
    else:
        top = int(rng.integers(0, h - ch + 1))
        left = int(rng.integers(0, w - cw + 1))
    return (
        np.ascontiguousarray(image[:, top : top + ch, left : left + cw]),
        np.ascontiguousarray(label[top : top + ch, left : left + cw]),
    )


# Liver voxels brighter than the liver's median by this much (in window units: 25 HU of the -200..250 window) are
# taken for contrast-filled vessels.
VESSEL_MARGIN = 25.0 / 450.0


def darken_vessels(image: np.ndarray, liver: np.ndarray, *, strength: float) -> np.ndarray:
    """(K, h, w) window-scaled image with the bright vessels inside ``liver`` (h, w) turned dark.

    A vessel voxel ``v`` (brighter than the median ``m`` of the liver's centre-slice voxels by more than
    :data:`VESSEL_MARGIN`) becomes ``m - strength * (v - m)``; nothing outside the liver changes.
    """
    if not liver.any():
        return image
    centre = image[image.shape[0] // 2]
    m = float(np.median(centre[liver]))
    vessels = liver[None] & (image > m + VESSEL_MARGIN)
    out = np.array(image, dtype=np.float32, copy=True)
    out[vessels] = np.clip(m - strength * (out[vessels] - m), 0.0, 1.0)
    return out


def blur_lowres(image: np.ndarray, factor: float) -> np.ndarray:
    """(K, h, w) image as a scan ``factor`` times coarser in plane would show it, at the same size.

    Area (box) downsampling to ``round(h / factor) x round(w / factor)``, then bilinear interpolation back.
    """
    import torch
    import torch.nn.functional as F

    k, h, w = image.shape
    small = (max(1, round(h / factor)), max(1, round(w / factor)))
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    x = F.interpolate(F.interpolate(x, size=small, mode="area"), size=(h, w), mode="bilinear", align_corners=False)
    return x[0].numpy()


def augment_sample(
    image: np.ndarray, label: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Augment one (K, h, w) float image and its (h, w) uint8 label.

    Returns:
        (float32 (K, h, w), uint8 (h, w)), aligned.
    """
    if image.ndim != 3 or label.shape != image.shape[1:]:
        raise ValueError(f"expected image (K, h, w) and label (h, w), got {image.shape} and {label.shape}")
    image = np.asarray(image, dtype=np.float32)
    label = np.asarray(label, dtype=np.uint8)
    flip_lr = bool(rng.random() < cfg.flip_prob)
    flip_ud = bool(cfg.flip_ud and rng.random() < cfg.flip_prob)
    k = int(rng.integers(1, 4)) if rng.random() < cfg.rot90_prob else 0
    image, label = flip_rot90(image, label, flip_lr=flip_lr, flip_ud=flip_ud, k=k)
    if cfg.slice_flip_prob > 0 and rng.random() < cfg.slice_flip_prob:  # no draw when off: old runs repeat
        image = image[::-1]
    if cfg.dark_vessel_prob > 0 and rng.random() < cfg.dark_vessel_prob:
        image = darken_vessels(image, label == 1, strength=float(rng.uniform(0.3, 1.0)))

    if rng.random() < cfg.affine_prob:
        h, w = label.shape
        angle = float(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg))
        lo, hi = cfg.scale
        scale = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        shift = (float(rng.uniform(-1, 1) * 2 * cfg.translate), float(rng.uniform(-1, 1) * 2 * cfg.translate))
        disp = None
        if cfg.elastic_alpha > 0 and rng.random() < cfg.elastic_prob:
            disp = elastic_displacement(rng, (h, w), alpha=cfg.elastic_alpha, grid=cfg.elastic_grid)
        grid = sampling_grid(affine_matrix(angle_deg=angle, scale=scale, shift=shift), (h, w), disp)
        image, label = warp(image, label, grid)

    if cfg.lowres_prob > 0 and rng.random() < cfg.lowres_prob:  # no draw when off: old runs repeat
        lo, hi = cfg.lowres_factor
        image = blur_lowres(image, float(math.exp(rng.uniform(math.log(lo), math.log(hi)))))

    if rng.random() < cfg.intensity_prob:
        mean = float(image.mean())
        contrast = 1.0 + float(rng.uniform(-cfg.contrast, cfg.contrast))
        brightness = float(rng.uniform(-cfg.brightness, cfg.brightness))
        image = (image - mean) * contrast + mean + brightness
        if cfg.gamma > 0:
            gamma = 1.0 + float(rng.uniform(-cfg.gamma, cfg.gamma))
            image = np.clip(image, 0.0, 1.0) ** gamma
        if cfg.noise_std > 0:
            std = float(rng.uniform(0.0, cfg.noise_std))
            image = image + rng.normal(0.0, std, size=image.shape).astype(np.float32)
    return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(label, dtype=np.uint8)
