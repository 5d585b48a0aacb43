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


# -- lesions outside the liver ------------------------------------------------------------------------------------


def _border_fraction_by_loops(labels, spacing, mask):
    """Reference: walk every voxel of one lesion and its six face neighbours."""
    dz, dy, dx = spacing
    area = {0: dy * dx, 1: dz * dx, 2: dz * dy}
    liver = total = 0.0
    for z, y, x in zip(*np.nonzero(mask)):
        for axis in range(3):
            for step in (-1, 1):
                q = [z, y, x]
                q[axis] += step
                if not 0 <= q[axis] < labels.shape[axis]:
                    continue
                v = labels[tuple(q)]
                if v != 2:
                    total += area[axis]
                    liver += area[axis] * (v == 1)
    return liver / total


def test_border_fraction_matches_a_voxel_walk_on_anisotropic_voxels():
    from resunet_trt.anatomy import liver_border_fractions

    spacing = (5.0, 0.8, 0.8)
    labels = np.zeros((12, 30, 30), np.uint8)
    labels[:, :, :15] = 1  # liver on the left half
    labels[4:8, 5:9, 12:16] = 2  # three columns in the liver, one outside
    labels[2:5, 20:23, 2:5] = 2  # deep inside the liver
    labels[9:12, 20:24, 20:26] = 2  # outside, touching the volume's edge
    box, sub, frac = liver_border_fractions(labels, spacing, connectivity=26)
    comps = np.zeros(labels.shape, np.int32)
    comps[box] = sub
    assert frac.shape == (3,)
    for i in range(1, 4):
        assert frac[i - 1] == pytest.approx(_border_fraction_by_loops(labels, spacing, comps == i))
    # hand count for the first lesion (4x4x4 at x = 12..15, liver x < 15): x faces (0.8*5 mm² each) 16 liver + 16
    # background; y faces 24 liver + 8 background of 32 (4 mm² each); z faces 24 of 32 (0.64 mm² each)
    first = comps[5, 6, 12]
    expected = (16 * 4.0 + 24 * 4.0 + 24 * 0.64) / (32 * 4.0 + 32 * 4.0 + 32 * 0.64)
    assert frac[first - 1] == pytest.approx(expected)
    assert frac[comps[3, 21, 3] - 1] == 1.0
    assert frac[comps[10, 21, 21] - 1] == 0.0


def test_a_lesion_against_the_liver_edge_is_dropped_one_inside_is_kept():
    from resunet_trt.anatomy import drop_lesions_outside_liver

    labels = np.zeros(SHAPE, np.uint8)
    liver = _ball(SHAPE, LIVER_C, LIVER_R)
    labels[liver] = 1
    inside = _ball(SHAPE, (45.0, 48.0, 40.0), 8.0)
    labels[inside] = 2
    # a gallbladder-like blob with only a sliver in the liver
    outside = _ball(SHAPE, (45.0, 48.0, 45.0 + LIVER_R + 8.0), 10.0)
    labels[outside] = 2
    out, removed = drop_lesions_outside_liver(labels, SPACING)
    assert removed == 1
    assert np.all(out[inside] == 2)
    assert np.all(out[outside] == 0)  # background, not liver
    np.testing.assert_array_equal(out[~outside], labels[~outside])
    same, none = drop_lesions_outside_liver(out, SPACING)
    assert none == 0 and same is out
    empty = np.zeros((4, 5, 6), np.uint8)
    assert drop_lesions_outside_liver(empty, SPACING) == (empty, 0)
    with pytest.raises(ValueError, match="min_liver_border"):
        drop_lesions_outside_liver(labels, SPACING, min_liver_border=1.5)
    with pytest.raises(ValueError, match="max_lesion_ml"):
        drop_lesions_outside_liver(labels, SPACING, max_lesion_ml=float("nan"))


def test_a_large_tumor_bulging_out_of_the_liver_is_kept():
    """A big tumor at the liver's edge can border mostly background: only small "lesions" are judged by border."""
    from resunet_trt.anatomy import drop_lesions_outside_liver, liver_border_fractions

    labels = np.zeros(SHAPE, np.uint8)
    labels[_ball(SHAPE, LIVER_C, LIVER_R)] = 1
    big = _ball(SHAPE, (45.0, 48.0, 45.0 + LIVER_R + 2.0), 22.0)  # about 45 mL, mostly outside the liver's sphere
    labels[big] = 2
    _, _, frac = liver_border_fractions(labels, SPACING)
    voxel_ml = np.prod(SPACING) / 1000
    assert frac[0] < 0.5 and np.count_nonzero(big) * voxel_ml > 10.0
    out, removed = drop_lesions_outside_liver(labels, SPACING)
    assert removed == 0 and out is labels
    out, removed = drop_lesions_outside_liver(labels, SPACING, max_lesion_ml=100.0)
    assert removed == 1 and not np.any(out == 2)


@pytest.mark.parametrize("case", ["lits117_roi128", "lits_small64"])
def test_every_expert_lesion_of_the_real_cases_is_kept(case):
    """The rule's threshold (half the surface) against expert labels: no real lesion lies outside the liver."""
    from pathlib import Path

    import nibabel as nib

    from resunet_trt.anatomy import drop_lesions_outside_liver, liver_border_fractions

    root = Path(__file__).resolve().parents[1]
    path = (root / "tests" / "data" / "lits117_roi128" / "label.nii.gz" if case == "lits117_roi128"
            else root / "python" / "resunet_trt" / "samples" / "lits_small64_label.nii.gz")
    img = nib.load(path)
    labels = np.ascontiguousarray(np.asarray(img.dataobj).astype(np.uint8).transpose(2, 1, 0))  # (x,y,z) -> (D,H,W)
    spacing = (1.4, 1.4, 1.4) if case == "lits117_roi128" else (5.0, 5.3, 5.3)
    _, _, frac = liver_border_fractions(labels, spacing)
    assert len(frac) >= 5 and frac.min() > 0.6
    out, removed = drop_lesions_outside_liver(labels, spacing)
    assert removed == 0 and out is labels


def test_the_segmenter_applies_both_rules_only_with_anatomy_on(trained_checkpoint):
    from resunet_trt import Segmenter
    from resunet_trt.io import CTVolume, canonical_affine

    labels = np.zeros(SHAPE, np.uint8)
    labels[_ball(SHAPE, LIVER_C, LIVER_R)] = 1
    outside = _ball(SHAPE, (45.0, 48.0, 45.0 + LIVER_R + 8.0), 10.0)
    labels[outside] = 2
    volume = CTVolume(hu=np.zeros(SHAPE, np.int16), spacing=SPACING, affine=canonical_affine(SPACING))
    with Segmenter(model=trained_checkpoint, device="cpu", backend="torch") as seg:
        refined = seg._refine(labels, volume)
    assert refined is not None and not np.any(refined == 2)
    assert np.count_nonzero(refined) == np.count_nonzero(labels[~outside])
    with Segmenter(model=trained_checkpoint, device="cpu", backend="torch", anatomy=False) as seg:
        assert seg._refine(labels, volume) is None
