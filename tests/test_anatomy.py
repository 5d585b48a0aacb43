"""The anatomy rule: an organ joined to the liver above its dome is removed; liver beside it is kept."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from resunet_trt.anatomy import drop_organs_above_liver

SPACING = (2.5, 1.0, 1.0)


def _ball(shape, centre_mm, radius_mm, spacing=SPACING):
    zz, yy, xx = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, spacing)), indexing="ij")
    c = centre_mm
    return (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= radius_mm**2


def _bridge(shape, a_mm, b_mm, half_width_mm, spacing=SPACING):
    """A cylinder of the given half width between two points."""
    zz, yy, xx = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, spacing)), indexing="ij")
    p = np.stack([zz, yy, xx], -1)
    a, b = np.asarray(a_mm, float), np.asarray(b_mm, float)
    t = np.clip(((p - a) @ (b - a)) / ((b - a) @ (b - a)), 0, 1)
    d = np.linalg.norm(p - (a + t[..., None] * (b - a)), axis=-1)
    return d <= half_width_mm


SHAPE = (64, 96, 128)
LIVER_C, LIVER_R = (45.0, 48.0, 45.0), 32.0
HEART_C, HEART_R = (112.0, 45.0, 80.0), 24.0


def test_a_heart_joined_above_the_dome_by_a_thin_bridge_is_removed():
    liver = _ball(SHAPE, LIVER_C, LIVER_R)
    heart = _ball(SHAPE, HEART_C, HEART_R)
    bridge = _bridge(SHAPE, LIVER_C, HEART_C, 3.0)
    labels = (liver | heart | bridge).astype(np.uint8)
    labels[_ball(SHAPE, (40.0, 48.0, 40.0), 6.0)] = 2  # a lesion in the liver
    labels[_ball(SHAPE, HEART_C, 5.0)] = 2  # a "lesion" in the heart
    assert ndimage.label(labels > 0)[1] == 1  # one component: "keep the largest" would keep the heart

    out, removed_ml = drop_organs_above_liver(labels, SPACING)

    voxel_ml = np.prod(SPACING) / 1000
    assert np.count_nonzero(out[heart & ~liver]) == 0
    np.testing.assert_array_equal(out[liver], labels[liver])  # the liver and its lesion untouched
    assert removed_ml == pytest.approx(np.count_nonzero((labels > 0) & (out == 0)) * voxel_ml)
    assert removed_ml >= np.count_nonzero(heart) * voxel_ml * 0.95
    assert labels[_ball(SHAPE, HEART_C, 5.0)].max() == 2 and out[_ball(SHAPE, HEART_C, 5.0)].max() == 0


def test_a_thick_lobe_beside_the_liver_on_a_thin_neck_is_kept():
    liver = _ball(SHAPE, LIVER_C, LIVER_R)
    lobe_c = (45.0, 45.0, 100.0)  # beside the liver, at its height: a left lobe, not an organ above it
    lobe = _ball(SHAPE, lobe_c, 15.0)
    neck = _bridge(SHAPE, LIVER_C, lobe_c, 3.0)
    labels = (liver | lobe | neck).astype(np.uint8)
    out, removed_ml = drop_organs_above_liver(labels, SPACING)
    assert removed_ml == 0.0
    assert out is labels


@pytest.mark.parametrize("case", ["empty", "one_blob", "small_cap"])
def test_nothing_changes_without_a_second_large_core(case):
    labels = np.zeros(SHAPE, np.uint8)
    if case != "empty":
        labels[_ball(SHAPE, LIVER_C, LIVER_R)] = 1
    if case == "small_cap":  # a small blob above the dome (under min_core_ml) is the postprocess's business
        labels[_ball(SHAPE, HEART_C, 7.0) | _bridge(SHAPE, LIVER_C, HEART_C, 2.0)] = 1
    out, removed_ml = drop_organs_above_liver(labels, SPACING)
    assert removed_ml == 0.0 and out is labels


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="3-D"):
        drop_organs_above_liver(np.zeros((4, 4), np.uint8), (1.0, 1.0, 1.0))
