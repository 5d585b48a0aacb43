"""Lesion geometry (longest axial diameter) and lesion-level detection scores."""

from __future__ import annotations

import math

import numpy as np
import pytest

from resunet_trt.lesions import longest_axial_diameter_mm


def _brute_force_diameter(mask: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """Reference: every pair of voxel centres on every slice."""
    best = 0.0
    for z in range(mask.shape[0]):
        pts = np.argwhere(mask[z]) * np.asarray(spacing[1:])
        if len(pts) > 1:
            best = max(best, float(np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1)).max()))
    return best


# ---------------------------------------------------------------- longest axial diameter: hand-built shapes


def test_diameter_single_voxel_is_zero():
    mask = np.zeros((3, 5, 5), bool)
    mask[1, 2, 2] = True
    assert longest_axial_diameter_mm(mask, (5.0, 0.8, 0.8)) == 0.0


def test_diameter_empty_mask_is_zero():
    assert longest_axial_diameter_mm(np.zeros((2, 4, 4), bool), (1.0, 1.0, 1.0)) == 0.0


@pytest.mark.parametrize(("dy", "dx"), [(1.0, 1.0), (0.7, 0.7), (0.5, 2.0), (3.0, 0.25)])
def test_diameter_rectangle_is_its_diagonal(dy, dx):
    # A 7 x 11 pixel rectangle: the farthest centres are opposite corners, 6 rows and 10 columns apart.
    mask = np.zeros((2, 20, 20), bool)
    mask[1, 4:11, 5:16] = True
    expected = math.hypot(6 * dy, 10 * dx)
    assert longest_axial_diameter_mm(mask, (2.5, dy, dx)) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("radius", [1, 3, 10, 40])
def test_diameter_disc_is_twice_the_radius(radius):
    # Pixels within radius r of a pixel centre include the four axis points at distance r, so centre-to-centre
    # diameter is exactly 2r pixels.
    n = 2 * radius + 5
    yy, xx = np.mgrid[:n, :n]
    c = n // 2
    disc = (yy - c) ** 2 + (xx - c) ** 2 <= radius**2
    mask = disc[None]
    assert longest_axial_diameter_mm(mask, (1.0, 0.6, 0.6)) == pytest.approx(2 * radius * 0.6, rel=1e-12)


def test_diameter_is_axial_only_not_along_z():
    # A tall thin column: 30 slices of one pixel; the 3D extent is large but every axial section is a point.
    mask = np.zeros((30, 4, 4), bool)
    mask[:, 1, 2] = True
    assert longest_axial_diameter_mm(mask, (5.0, 1.0, 1.0)) == 0.0


def test_diameter_takes_the_largest_slice():
    mask = np.zeros((4, 30, 30), bool)
    mask[0, 5:8, 5:8] = True  # diagonal 2*sqrt(2)
    mask[2, 10, 3:25] = True  # a 22-pixel line: 21 pixels between end centres
    assert longest_axial_diameter_mm(mask, (1.0, 1.0, 0.5)) == pytest.approx(21 * 0.5)


def test_diameter_counts_separate_pieces_of_one_slice():
    mask = np.zeros((1, 10, 40), bool)
    mask[0, 2, 1] = True
    mask[0, 7, 38] = True
    assert longest_axial_diameter_mm(mask, (1.0, 2.0, 1.0)) == pytest.approx(math.hypot(5 * 2.0, 37))


def test_diameter_ignores_cropping_offset():
    mask = np.zeros((5, 64, 64), bool)
    mask[2, 20:30, 33:40] = True
    crop = mask[1:4, 18:32, 30:45]
    assert longest_axial_diameter_mm(crop, (1, 1, 1)) == longest_axial_diameter_mm(mask, (1, 1, 1))


@pytest.mark.parametrize("seed", range(6))
def test_diameter_matches_brute_force_on_random_masks(seed):
    rng = np.random.default_rng(seed)
    shape = (3, int(rng.integers(1, 40)), int(rng.integers(1, 40)))
    mask = rng.random(shape) < rng.uniform(0.05, 0.9)
    spacing = (2.0, float(rng.uniform(0.3, 2.0)), float(rng.uniform(0.3, 2.0)))
    assert longest_axial_diameter_mm(mask, spacing) == pytest.approx(
        _brute_force_diameter(mask, spacing), rel=1e-12
    )


def test_diameter_matches_brute_force_on_real_tumors(lits_small):
    import cc3d

    _, labels = lits_small
    comps = cc3d.connected_components(labels == 2, connectivity=26)
    assert comps.max() > 0
    for k in range(1, int(comps.max()) + 1):
        comp = comps == k
        spacing = (5.0, 5.3, 5.3)
        assert longest_axial_diameter_mm(comp, spacing) == pytest.approx(_brute_force_diameter(comp, spacing))


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_diameter_accepts_numeric_masks(dtype):
    mask = np.zeros((1, 5, 5), dtype)
    mask[0, 0, 0] = 1
    mask[0, 4, 4] = 3
    assert longest_axial_diameter_mm(mask, (1, 1, 1)) == pytest.approx(4 * math.sqrt(2))


@pytest.mark.parametrize("shape", [(5, 5), (1, 2, 3, 4)])
def test_diameter_rejects_wrong_ndim(shape):
    with pytest.raises(ValueError, match="component_mask"):
        longest_axial_diameter_mm(np.ones(shape, bool), (1, 1, 1))


@pytest.mark.parametrize("spacing", [(1, 1), (1, 0, 1), (1, -1, 1), (1, float("nan"), 1)])
def test_diameter_rejects_bad_spacing(spacing):
    with pytest.raises(ValueError, match="spacing"):
        longest_axial_diameter_mm(np.ones((1, 2, 2), bool), spacing)


def test_diameter_rejects_non_numeric_mask():
    with pytest.raises(TypeError, match="component_mask"):
        longest_axial_diameter_mm(np.full((1, 2, 2), "a"), (1, 1, 1))
