"""LiTS metrics: hand-computed cases, an independent brute-force / KD-tree reference, empty masks, aggregation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from resunet_trt.metrics import (
    SCORE_KEYS,
    aggregate,
    evaluate_case,
    score_masks,
    surface_distances,
    surface_mask,
)

# ---------------------------------------------------------------- independent references


def _ref_surface(mask: np.ndarray) -> np.ndarray:
    """Surface by 6-connected erosion with the outside of the volume as background (scipy, not our code)."""
    structure = ndimage.generate_binary_structure(3, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _ref_directed(a: np.ndarray, b: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances by exact nearest-neighbour search on the surface voxel centres in mm."""
    pa = np.argwhere(_ref_surface(a)) * np.asarray(spacing)
    pb = np.argwhere(_ref_surface(b)) * np.asarray(spacing)
    d_ab = cKDTree(pb).query(pa)[0]
    d_ba = cKDTree(pa).query(pb)[0]
    return d_ab, d_ba


def _ref_scores(pred: np.ndarray, gt: np.ndarray, spacing) -> dict[str, float]:
    d_pg, d_gp = _ref_directed(pred, gt, spacing)
    both = np.concatenate([d_pg, d_gp])
    tp = np.sum(pred & gt)
    return {
        "dice": 2 * tp / (pred.sum() + gt.sum()),
        "iou": tp / np.sum(pred | gt),
        "precision": tp / pred.sum(),
        "recall": tp / gt.sum(),
        "rvd": (pred.sum() - gt.sum()) / gt.sum(),
        "assd": both.mean(),
        "msd": both.max(),
        "hd95": max(np.percentile(d_pg, 95), np.percentile(d_gp, 95)),
    }


def _blob(shape, seed, threshold=0.55, sigma=2.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random(shape), sigma)
    return field > np.quantile(field, threshold)


def _cube(shape, start, size) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[tuple(slice(s, s + n) for s, n in zip(start, size))] = True
    return m


# ---------------------------------------------------------------- surfaces


def test_surface_of_solid_cube_is_its_shell():
    m = _cube((10, 10, 10), (2, 2, 2), (5, 5, 5))
    surf = surface_mask(m)
    assert surf.sum() == 5**3 - 3**3
    assert not surf[4, 4, 4]


def test_surface_includes_voxels_on_the_volume_border():
    m = np.ones((4, 5, 6), bool)
    assert surface_mask(m).sum() == 4 * 5 * 6 - 2 * 3 * 4


def test_surface_of_thin_plate_is_all_of_it():
    m = _cube((5, 8, 8), (2, 1, 1), (1, 6, 6))
    assert np.array_equal(surface_mask(m), m)


@pytest.mark.parametrize("seed", range(3))
def test_surface_matches_scipy_erosion(seed):
    m = _blob((12, 15, 17), seed)
    assert np.array_equal(surface_mask(m), _ref_surface(m))


# ---------------------------------------------------------------- hand-computed cases


@pytest.mark.parametrize("k", [1, 2, 3])
def test_cubes_offset_along_z_have_hausdorff_k_dz(k):
    # Two 12^3 cubes, the second shifted by k slices: the bottom face of one is k slices below every surface voxel
    # of the other (which all lie at z >= its bottom + k), and nothing is farther, so Hausdorff = k * dz exactly.
    shape = (24, 20, 20)
    gt = _cube(shape, (4, 4, 4), (12, 12, 12))
    pred = _cube(shape, (4 + k, 4, 4), (12, 12, 12))
    s = score_masks(pred, gt, (2.5, 1.0, 1.0))
    assert s["msd"] == pytest.approx(2.5 * k)
    assert s["dice"] == pytest.approx((12 - k) / 12)
    assert s["iou"] == pytest.approx((12 - k) / (12 + k))
    assert s["voe"] == pytest.approx(1 - (12 - k) / (12 + k))
    assert s["rvd"] == 0.0
    assert s["precision"] == pytest.approx((12 - k) / 12)
    assert s["recall"] == pytest.approx((12 - k) / 12)


@pytest.mark.parametrize("spacing", [(2.5, 0.7, 0.7), (1.0, 1.0, 1.0), (5.0, 0.5, 1.5)])
@pytest.mark.parametrize("k", [1, 3])
def test_parallel_plates_are_k_dz_apart_everywhere(spacing, k):
    # One-voxel-thick plates: every surface voxel's nearest neighbour is straight across.
    shape = (10, 9, 11)
    a = _cube(shape, (2, 0, 0), (1, 9, 11))
    b = _cube(shape, (2 + k, 0, 0), (1, 9, 11))
    s = score_masks(a, b, spacing)
    expected = k * spacing[0]
    assert s["assd"] == pytest.approx(expected)
    assert s["msd"] == pytest.approx(expected)
    assert s["hd95"] == pytest.approx(expected)
    assert s["dice"] == 0.0


def test_single_voxels_distance_is_the_anisotropic_euclidean():
    spacing = (2.5, 0.8, 0.6)
    a = np.zeros((8, 8, 8), bool)
    b = np.zeros((8, 8, 8), bool)
    a[1, 2, 3] = True
    b[4, 6, 1] = True
    expected = math.sqrt((3 * 2.5) ** 2 + (4 * 0.8) ** 2 + (2 * 0.6) ** 2)
    s = score_masks(a, b, spacing)
    for key in ("assd", "msd", "hd95"):
        assert s[key] == pytest.approx(expected)


def test_cubes_with_known_overlap():
    shape = (20, 20, 20)
    gt = _cube(shape, (2, 2, 2), (10, 10, 10))  # 1000 voxels
    pred = _cube(shape, (4, 5, 2), (10, 10, 10))  # overlap 8 * 7 * 10 = 560
    s = score_masks(pred, gt, (1.0, 1.0, 1.0))
    assert (s["tp"], s["fp"], s["fn"]) == (560, 440, 440)
    assert s["dice"] == pytest.approx(0.56)
    assert s["iou"] == pytest.approx(560 / 1440)


def test_nested_cubes_rvd_and_distance():
    # pred is gt grown by 2 voxels on every side; with isotropic 1.5 mm every gt surface voxel is 3 mm from
    # the pred surface, and pred's corners are 2*sqrt(3) voxels from gt's corners.
    shape = (20, 20, 20)
    gt = _cube(shape, (6, 6, 6), (6, 6, 6))
    pred = _cube(shape, (4, 4, 4), (10, 10, 10))
    s = score_masks(pred, gt, (1.5, 1.5, 1.5))
    assert s["rvd"] == pytest.approx((1000 - 216) / 216)
    assert s["recall"] == 1.0
    assert s["precision"] == pytest.approx(0.216)
    assert s["msd"] == pytest.approx(1.5 * 2 * math.sqrt(3))
    _, d_gp = surface_distances(pred, gt, (1.5, 1.5, 1.5))
    assert np.allclose(d_gp, 3.0)


def test_spheres_dice_against_voxel_counts():
    zz, yy, xx = np.mgrid[:30, :30, :30]
    r2 = (zz - 15) ** 2 + (yy - 15) ** 2 + (xx - 15) ** 2
    gt = r2 <= 8**2
    pred = r2 <= 10**2
    s = score_masks(pred, gt, (1.0, 1.0, 1.0))
    assert s["dice"] == pytest.approx(2 * gt.sum() / (gt.sum() + pred.sum()))
    assert s["recall"] == 1.0
    # Concentric spheres of radius 8 and 10 voxels: surfaces are about 2 voxels apart.
    assert 1.0 <= s["assd"] <= 2.5
    ref = _ref_scores(pred, gt, (1.0, 1.0, 1.0))
    for key in ("assd", "msd", "hd95"):
        assert s[key] == pytest.approx(ref[key])


def test_identical_masks_are_perfect():
    m = _blob((10, 12, 14), 7)
    s = score_masks(m, m, (2.0, 0.5, 0.5))
    assert s["dice"] == s["iou"] == s["precision"] == s["recall"] == 1.0
    assert s["voe"] == s["rvd"] == 0.0
    assert s["assd"] == s["msd"] == s["hd95"] == 0.0


# ---------------------------------------------------------------- against the independent reference


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.5, 0.7, 0.7), (0.5, 3.0, 1.25)])
@pytest.mark.parametrize("seed", range(3))
def test_random_blobs_match_reference(seed, spacing):
    gt = _blob((14, 18, 20), seed)
    pred = _blob((14, 18, 20), seed + 100, threshold=0.6)
    s = score_masks(pred, gt, spacing)
    ref = _ref_scores(pred, gt, spacing)
    for key, value in ref.items():
        assert s[key] == pytest.approx(value, rel=1e-9), key


def test_directed_distances_match_reference_in_full_volume():
    # Masks that touch the volume border exercise the bounding-box crop.
    gt = np.zeros((12, 16, 16), bool)
    pred = np.zeros((12, 16, 16), bool)
    gt[0:5, 0:9, 3:16] = True
    pred[2:7, 1:12, 0:13] = True
    spacing = (3.0, 0.9, 0.6)
    d_pg, d_gp = surface_distances(pred, gt, spacing)
    r_pg, r_gp = _ref_directed(pred, gt, spacing)
    assert np.allclose(np.sort(d_pg), np.sort(r_pg))
    assert np.allclose(np.sort(d_gp), np.sort(r_gp))


def test_real_liver_shifted_matches_reference(lits117):
    _, labels = lits117
    gt = labels >= 1
    pred = np.roll(gt, 2, axis=0) & ndimage.binary_erosion(gt, iterations=1)
    spacing = (2.5, 0.8, 0.8)
    s = score_masks(pred, gt, spacing)
    ref = _ref_scores(pred, gt, spacing)
    for key, value in ref.items():
        assert s[key] == pytest.approx(value, rel=1e-9), key


# ---------------------------------------------------------------- empty masks


def test_both_empty_is_perfect():
    e = np.zeros((4, 5, 6), bool)
    s = score_masks(e, e, (1, 1, 1))
    assert s["dice"] == s["iou"] == s["precision"] == s["recall"] == 1.0
    assert s["voe"] == s["rvd"] == 0.0
    assert s["assd"] == s["msd"] == s["hd95"] == 0.0


def test_empty_prediction():
    gt = _cube((6, 6, 6), (1, 1, 1), (2, 2, 2))
    s = score_masks(np.zeros_like(gt), gt, (1, 1, 1))
    assert s["dice"] == s["iou"] == 0.0
    assert s["voe"] == 1.0
    assert s["recall"] == 0.0
    assert math.isnan(s["precision"])
    assert s["rvd"] == -1.0
    assert all(math.isinf(s[k]) for k in ("assd", "msd", "hd95"))


def test_empty_reference():
    pred = _cube((6, 6, 6), (1, 1, 1), (2, 2, 2))
    s = score_masks(pred, np.zeros_like(pred), (1, 1, 1))
    assert s["dice"] == 0.0
    assert s["precision"] == 0.0
    assert math.isnan(s["recall"])
    assert s["rvd"] == math.inf
    assert all(math.isinf(s[k]) for k in ("assd", "msd", "hd95"))


def test_surface_distances_refuse_empty_masks():
    m = _cube((6, 6, 6), (1, 1, 1), (2, 2, 2))
    with pytest.raises(ValueError, match="non-empty"):
        surface_distances(m, np.zeros_like(m), (1, 1, 1))


def test_surface_false_skips_distances():
    m = _cube((6, 6, 6), (1, 1, 1), (2, 2, 2))
    s = score_masks(m, np.roll(m, 1, axis=0), (1, 1, 1), surface=False)
    assert all(math.isnan(s[k]) for k in ("assd", "msd", "hd95"))
    assert s["dice"] == pytest.approx(0.5)


# ---------------------------------------------------------------- evaluate_case: LiTS classes


def test_liver_class_includes_tumor():
    gt = np.zeros((6, 6, 6), np.uint8)
    gt[1:5, 1:5, 1:5] = 1
    gt[2:4, 2:4, 2:4] = 2
    pred = (gt > 0).astype(np.uint8) * 2  # all liver called tumor
    r = evaluate_case(pred, gt, (1, 1, 1))
    assert r["liver"]["dice"] == 1.0
    assert r["tumor"]["dice"] == pytest.approx(2 * 8 / (64 + 8))
    assert r["shape"] == [6, 6, 6]


def test_case_without_tumor_scores_tumor_as_perfect():
    gt = np.zeros((6, 6, 6), np.uint8)
    gt[1:5, 1:5, 1:5] = 1
    r = evaluate_case(gt, gt, (1, 1, 1))
    assert r["tumor"]["dice"] == 1.0 and r["tumor"]["msd"] == 0.0


def test_volumes_in_ml():
    gt = np.zeros((10, 10, 10), np.uint8)
    gt[:4, :5, :5] = 1
    r = evaluate_case(gt, gt, (2.0, 0.5, 0.5))
    assert r["liver"]["gt_ml"] == pytest.approx(100 * 0.5 / 1000)


def test_real_case_against_itself_is_perfect(lits_small):
    _, labels = lits_small
    r = evaluate_case(labels, labels, (5.0, 5.3, 5.3))
    for cls in ("liver", "tumor"):
        assert r[cls]["dice"] == 1.0
        assert r[cls]["hd95"] == 0.0


@pytest.mark.parametrize(
    ("pred", "gt", "error", "match"),
    [
        (np.zeros((2, 2, 2), np.uint8), np.zeros((2, 2, 3), np.uint8), ValueError, "same shape"),
        (np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8), ValueError, "pred"),
        (np.zeros((2, 2, 2), np.float32), np.zeros((2, 2, 2), np.uint8), TypeError, "pred"),
        (np.zeros((2, 2, 2), np.uint8), np.zeros((2, 2, 2), np.float64), TypeError, "gt"),
    ],
)
def test_evaluate_case_rejects_bad_labels(pred, gt, error, match):
    with pytest.raises(error, match=match):
        evaluate_case(pred, gt, (1, 1, 1))


@pytest.mark.parametrize("spacing", [(1, 1), (0, 1, 1), (1, 1, float("inf"))])
def test_evaluate_case_rejects_bad_spacing(spacing):
    z = np.zeros((2, 2, 2), np.uint8)
    with pytest.raises(ValueError, match="spacing"):
        evaluate_case(z, z, spacing)


def test_evaluate_case_rejects_unknown_class():
    z = np.zeros((2, 2, 2), np.uint8)
    with pytest.raises(ValueError, match="classes"):
        evaluate_case(z, z, (1, 1, 1), classes=("kidney",))


# ---------------------------------------------------------------- aggregation


def _labels_with(liver_box, tumor_box=None, shape=(10, 10, 10)) -> np.ndarray:
    out = np.zeros(shape, np.uint8)
    out[liver_box] = 1
    if tumor_box is not None:
        out[tumor_box] = 2
    return out


def test_dice_per_case_and_global_differ_as_defined():
    big_gt = _labels_with(np.s_[0:10, 0:10, 0:10])  # 1000 voxels
    big_pred = _labels_with(np.s_[0:10, 0:10, 0:9])  # 900, all inside
    small_gt = _labels_with(np.s_[0:2, 0:2, 0:2])  # 8
    small_pred = _labels_with(np.s_[0:2, 0:2, 0:1])  # 4
    c1 = evaluate_case(big_pred, big_gt, (1, 1, 1), surface=False)
    c2 = evaluate_case(small_pred, small_gt, (1, 1, 1), surface=False)
    agg = aggregate({"a": c1, "b": c2})
    d1, d2 = 2 * 900 / 1900, 2 * 4 / 12
    assert agg["liver"]["dice_per_case"] == pytest.approx((d1 + d2) / 2)
    assert agg["liver"]["dice_global"] == pytest.approx(2 * 904 / (1900 + 12))
    assert agg["n_cases"] == 2
    assert agg["liver"]["scores"]["dice"]["mean"] == pytest.approx((d1 + d2) / 2)
    assert agg["liver"]["scores"]["dice"]["median"] == pytest.approx((d1 + d2) / 2)


def test_aggregate_counts_infinite_and_undefined_scores():
    gt_tumor = _labels_with(np.s_[0:8, 0:8, 0:8], np.s_[2:4, 2:4, 2:4])
    no_tumor = _labels_with(np.s_[0:8, 0:8, 0:8])
    cases = [
        evaluate_case(gt_tumor, gt_tumor, (1, 1, 1)),  # tumor perfect
        evaluate_case(no_tumor, gt_tumor, (1, 1, 1)),  # tumor missed: precision NaN, distances inf
    ]
    agg = aggregate(cases)["tumor"]
    assert agg["dice_per_case"] == pytest.approx(0.5)
    assert agg["scores"]["msd"] == {**agg["scores"]["msd"], "n": 1, "n_inf": 1, "n_nan": 0}
    assert agg["scores"]["msd"]["mean"] == 0.0
    assert agg["scores"]["precision"]["n_nan"] == 1
    assert agg["scores"]["recall"]["mean"] == pytest.approx(0.5)
    assert set(agg["scores"]) == set(SCORE_KEYS)


def test_aggregate_all_undefined_gives_nan_summary():
    gt_tumor = _labels_with(np.s_[0:8, 0:8, 0:8], np.s_[2:4, 2:4, 2:4])
    no_tumor = _labels_with(np.s_[0:8, 0:8, 0:8])
    agg = aggregate([evaluate_case(no_tumor, gt_tumor, (1, 1, 1))])["tumor"]
    assert agg["scores"]["hd95"]["n"] == 0
    assert math.isnan(agg["scores"]["hd95"]["mean"])
    assert agg["dice_global"] == 0.0


def test_aggregate_of_empty_classes_everywhere_is_perfect():
    no_tumor = _labels_with(np.s_[0:8, 0:8, 0:8])
    agg = aggregate([evaluate_case(no_tumor, no_tumor, (1, 1, 1))])
    assert agg["tumor"]["dice_global"] == 1.0


def test_aggregate_rejects_no_cases():
    with pytest.raises(ValueError, match="cases"):
        aggregate([])
