"""Lesion geometry (longest axial diameter) and lesion-level detection scores."""

from __future__ import annotations

import math

import numpy as np
import pytest

from resunet_trt.lesions import (
    aggregate_lesion_detection,
    lesion_detection,
    longest_axial_diameter_mm,
    match_lesions,
    size_bucket,
)


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


def test_diameter_is_not_always_in_the_slice_with_the_widest_box():
    # Slice 0: a plus sign, box 13 x 13 (diagonal 16.97) but tip to tip only 12. Slice 1: a diagonal line from
    # (0, 0) to (10, 10), box 11 x 11 (diagonal 14.14) and the same 14.14 end to end. The narrower box wins.
    mask = np.zeros((2, 13, 13), bool)
    mask[0, 6, :] = True
    mask[0, :, 6] = True
    mask[1, np.arange(11), np.arange(11)] = True
    assert longest_axial_diameter_mm(mask, (1.0, 1.0, 1.0)) == pytest.approx(math.hypot(10, 10), rel=1e-12)
    assert longest_axial_diameter_mm(mask[:1], (1.0, 1.0, 1.0)) == pytest.approx(12.0, rel=1e-12)


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


# ---------------------------------------------------------------- lesion detection on constructed cases

SHAPE = (12, 48, 48)
ISO = (1.0, 1.0, 1.0)


def _cc3d_components(mask, connectivity=26):
    import cc3d

    labels, count = cc3d.connected_components(
        np.asarray(mask, np.uint8), connectivity=connectivity, return_N=True
    )
    return labels.astype(np.int32), int(count)


@pytest.fixture(autouse=True)
def _components(monkeypatch):
    """Use the compiled connected components; until they are importable, cc3d stands in (tests only)."""
    try:
        from resunet_trt.kernels import connected_components  # noqa: F401
    except ImportError:
        monkeypatch.setattr("resunet_trt.lesions._components_of", _cc3d_components)


def _liver_with(*tumor_boxes, shape=SHAPE) -> np.ndarray:
    labels = np.ones(shape, np.uint8)
    for box in tumor_boxes:
        labels[box] = 2
    return labels


def test_exact_match_is_detected():
    gt = _liver_with(np.s_[2:6, 5:12, 5:12])
    r = lesion_detection(gt, gt, ISO)
    assert (r["n_gt"], r["detected"], r["n_pred"], r["tp_pred"], r["fp"]) == (1, 1, 1, 1, 0)
    assert r["precision"] == r["recall"] == r["f1"] == 1.0
    assert r["gt_lesions"][0]["best_iou"] == 1.0


def test_missed_lesion():
    gt = _liver_with(np.s_[2:6, 5:12, 5:12], np.s_[2:6, 30:40, 30:40])
    pred = _liver_with(np.s_[2:6, 5:12, 5:12])
    r = lesion_detection(pred, gt, ISO)
    assert (r["n_gt"], r["detected"], r["missed"], r["fp"]) == (2, 1, 1, 0)
    assert r["recall"] == 0.5 and r["precision"] == 1.0
    assert r["f1"] == pytest.approx(2 / 3)


def test_spurious_lesion():
    gt = _liver_with(np.s_[2:6, 5:12, 5:12])
    pred = _liver_with(np.s_[2:6, 5:12, 5:12], np.s_[8:10, 30:33, 30:33])
    r = lesion_detection(pred, gt, ISO)
    assert (r["n_pred"], r["tp_pred"], r["fp"]) == (2, 1, 1)
    assert r["precision"] == 0.5 and r["recall"] == 1.0


@pytest.mark.parametrize(("shift", "detected"), [(0, True), (3, True), (4, False), (9, False)])
def test_iou_threshold_is_strictly_above_half(shift, detected):
    # 10-voxel-long boxes shifted along x: IoU = (10 - s) / (10 + s); > 0.5 exactly when s < 10/3.
    gt = _liver_with(np.s_[2:6, 10:14, 10:20])
    pred = _liver_with(np.s_[2:6, 10:14, 10 + shift : 20 + shift])
    r = lesion_detection(pred, gt, ISO)
    assert r["gt_lesions"][0]["best_iou"] == pytest.approx((10 - shift) / (10 + shift))
    assert r["detected"] == int(detected)
    assert r["tp_pred"] == int(detected)
    # Any overlap counts under the "overlap" criterion.
    assert lesion_detection(pred, gt, ISO, criterion="overlap")["detected"] == 1


def test_split_lesion():
    gt = _liver_with(np.s_[2:6, 10:20, 10:30])
    pred = _liver_with(np.s_[2:6, 10:20, 10:19], np.s_[2:6, 10:20, 21:30])  # two halves, a 2-voxel gap
    iou = lesion_detection(pred, gt, ISO)
    assert (iou["n_gt"], iou["n_pred"], iou["detected"], iou["tp_pred"], iou["fp"]) == (1, 2, 0, 0, 2)
    over = lesion_detection(pred, gt, ISO, criterion="overlap")
    assert (over["detected"], over["tp_pred"], over["fp"]) == (1, 2, 0)
    assert sorted(over["gt_lesions"][0]["matched_pred"]) == [1, 2]


def test_merged_lesions():
    gt = _liver_with(np.s_[2:6, 10:20, 10:19], np.s_[2:6, 10:20, 21:30])
    pred = _liver_with(np.s_[2:6, 10:20, 10:30])
    iou = lesion_detection(pred, gt, ISO)
    assert (iou["n_gt"], iou["n_pred"], iou["detected"], iou["fp"]) == (2, 1, 0, 1)
    over = lesion_detection(pred, gt, ISO, criterion="overlap")
    assert (over["detected"], over["tp_pred"], over["fp"]) == (2, 1, 0)
    assert sorted(over["pred_lesions"][0]["matched_gt"]) == [1, 2]


def test_connectivity_decides_what_is_one_lesion():
    # Two cubes touching only at a corner: one lesion with 26-connectivity, two with 6.
    gt = _liver_with(np.s_[2:4, 2:4, 2:4], np.s_[4:6, 4:6, 4:6])
    assert lesion_detection(gt, gt, ISO)["n_gt"] == 1
    assert lesion_detection(gt, gt, ISO, connectivity=6)["n_gt"] == 2


def test_no_lesions_anywhere():
    liver = _liver_with()
    r = lesion_detection(liver, liver, ISO)
    assert r["n_gt"] == r["n_pred"] == 0
    assert math.isnan(r["precision"]) and math.isnan(r["recall"]) and math.isnan(r["f1"])
    assert r["burden_error"] == 0.0


def test_no_predictions_scores_zero_f1():
    gt = _liver_with(np.s_[2:6, 5:12, 5:12])
    r = lesion_detection(_liver_with(), gt, ISO)
    assert r["recall"] == 0.0 and math.isnan(r["precision"]) and r["f1"] == 0.0


def test_size_buckets_by_reference_diameter():
    spacing = (2.0, 1.0, 1.0)
    small = np.s_[2:4, 2:7, 2:7]  # 5x5 px: diagonal between centres sqrt(32) = 5.7 mm
    medium = np.s_[2:4, 10:20, 10:20]  # 9*sqrt(2) = 12.7 mm
    large = np.s_[2:4, 24:44, 24:44]  # 19*sqrt(2) = 26.9 mm
    gt = _liver_with(small, medium, large)
    # Found: the large one and the small one; the medium one missed. A spurious 3 px dot far away; and a
    # 15x15 px prediction of the large one (IoU 225/400, own diameter 14*sqrt(2) = 19.8 mm) counts in the >20 bucket.
    pred = _liver_with(small, np.s_[2:4, 26:41, 26:41], np.s_[8:10, 2:5, 40:43])
    r = lesion_detection(pred, gt, spacing)
    b = r["buckets"]
    assert {k: v["n_gt"] for k, v in b.items()} == {"<10mm": 1, "10-20mm": 1, ">20mm": 1}
    assert {k: v["detected"] for k, v in b.items()} == {"<10mm": 1, "10-20mm": 0, ">20mm": 1}
    assert {k: v["tp_pred"] for k, v in b.items()} == {"<10mm": 1, "10-20mm": 0, ">20mm": 1}
    assert {k: v["fp"] for k, v in b.items()} == {"<10mm": 1, "10-20mm": 0, ">20mm": 0}
    assert b["10-20mm"]["recall"] == 0.0 and math.isnan(b["10-20mm"]["precision"])
    assert b["<10mm"]["precision"] == 0.5
    diam = sorted(les["diameter_mm"] for les in r["gt_lesions"])
    assert diam == pytest.approx([math.sqrt(32), 9 * math.sqrt(2), 19 * math.sqrt(2)])


@pytest.mark.parametrize(
    ("d", "bucket"), [(0.0, "<10mm"), (9.99, "<10mm"), (10.0, "10-20mm"), (20.0, "10-20mm"), (20.01, ">20mm")]
)
def test_bucket_boundaries(d, bucket):
    assert size_bucket(d) == bucket


def test_tumor_burden_error():
    gt = np.zeros(SHAPE, np.uint8)
    gt[:, :10, :10] = 1  # 1200 liver voxels
    gt[:2, :5, :6] = 2  # 60 tumor voxels -> burden 0.05
    pred = gt.copy()
    pred[:, :10, 10:15] = 1  # liver 1800 voxels
    pred[2:4, :5, :6] = 2  # tumor 120 voxels -> burden 1/15
    r = lesion_detection(pred, gt, ISO)
    assert r["gt_burden"] == pytest.approx(0.05)
    assert r["pred_burden"] == pytest.approx(120 / 1800)
    assert r["burden_error"] == pytest.approx(120 / 1800 - 0.05)


def test_burden_without_reference_liver_is_nan():
    empty = np.zeros(SHAPE, np.uint8)
    r = lesion_detection(_liver_with(), empty, ISO)
    assert math.isnan(r["gt_burden"]) and math.isnan(r["burden_error"])


def test_lesion_volumes_in_ml():
    gt = _liver_with(np.s_[2:6, 5:10, 5:10])
    r = lesion_detection(gt, gt, (2.0, 0.5, 0.5))
    assert r["gt_lesions"][0]["volume_ml"] == pytest.approx(100 * 0.5 / 1000)
    assert r["gt_lesions"][0]["voxels"] == 100


def test_aggregate_pools_lesion_counts():
    gt = _liver_with(np.s_[2:6, 5:12, 5:12], np.s_[2:6, 30:40, 30:40])
    one = lesion_detection(_liver_with(np.s_[2:6, 5:12, 5:12]), gt, ISO)  # 1 of 2 found
    two = lesion_detection(gt, gt, ISO)  # 2 of 2
    three = lesion_detection(_liver_with(np.s_[8:10, 30:33, 30:33]), _liver_with(), ISO)  # 1 false positive
    agg = aggregate_lesion_detection({"a": one, "b": two, "c": three})
    assert (agg["n_gt"], agg["detected"], agg["n_pred"], agg["tp_pred"]) == (4, 3, 4, 3)
    assert agg["recall"] == 0.75 and agg["precision"] == 0.75
    assert agg["n_cases"] == 3
    assert sum(v["n_gt"] for v in agg["buckets"].values()) == 4
    assert agg["burden_error"]["n"] == 3


def test_aggregate_rejects_no_cases():
    with pytest.raises(ValueError, match="cases"):
        aggregate_lesion_detection([])


def test_real_case_against_itself(lits117):
    _, labels = lits117
    r = lesion_detection(labels, labels, (1.0, 1.0, 1.0))
    _, count = _cc3d_components(labels == 2)
    assert r["n_gt"] == r["detected"] == r["n_pred"] == count > 0
    assert r["burden_error"] == 0.0


def test_real_case_eroded_prediction_matches_reference(lits117):
    # Prediction = reference tumors eroded by one voxel; check detection against IoUs computed here with cc3d.
    from scipy import ndimage

    _, labels = lits117
    pred = labels.copy()
    tumor = labels == 2
    pred[tumor & ~ndimage.binary_erosion(tumor)] = 1
    r = lesion_detection(pred, labels, ISO)
    gt_cc, n_gt = _cc3d_components(tumor)
    pred_cc, _ = _cc3d_components(pred == 2)
    expected = 0
    for g in range(1, n_gt + 1):
        ids, counts = np.unique(pred_cc[gt_cc == g], return_counts=True)
        best = 0.0
        for p, inter in zip(ids, counts):
            if p:
                best = max(best, inter / np.sum((gt_cc == g) | (pred_cc == p)))
        expected += best > 0.5
    assert r["n_gt"] == n_gt
    assert r["detected"] == expected


# ---------------------------------------------------------------- match_lesions directly


def test_match_lesions_pairs_and_ious():
    gt = np.zeros((1, 4, 10), np.int32)
    pred = np.zeros_like(gt)
    gt[0, :, 0:5] = 1  # 20 voxels
    pred[0, :, 3:8] = 1  # 20 voxels, 8 shared
    m = match_lesions(gt, pred)
    assert m["pairs"] == [(1, 1, 8, pytest.approx(8 / 32))]
    assert m["gt_matches"][1] == []
    assert match_lesions(gt, pred, criterion="overlap")["gt_matches"][1] == [1]
    assert match_lesions(gt, pred, iou_threshold=0.2)["gt_matches"][1] == [1]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"criterion": "dice"}, ValueError, "criterion"),
        ({"iou_threshold": 1.0}, ValueError, "iou_threshold"),
        ({"iou_threshold": -0.1}, ValueError, "iou_threshold"),
    ],
)
def test_match_lesions_rejects_bad_options(kwargs, error, match):
    z = np.zeros((1, 2, 2), np.int32)
    with pytest.raises(error, match=match):
        match_lesions(z, z, **kwargs)


def test_match_lesions_rejects_bad_arrays():
    z = np.zeros((1, 2, 2), np.int32)
    with pytest.raises(ValueError, match="same shape"):
        match_lesions(z, np.zeros((1, 2, 3), np.int32))
    with pytest.raises(TypeError, match="gt_components"):
        match_lesions(z.astype(np.float32), z)
    with pytest.raises(ValueError, match="pred_components"):
        match_lesions(z, z - 1)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"connectivity": 8}, ValueError, "connectivity"),
        ({"criterion": "x"}, ValueError, "criterion"),
        ({"spacing": (1, 1)}, ValueError, "spacing"),
    ],
)
def test_lesion_detection_rejects_bad_options(kwargs, error, match):
    z = np.zeros((2, 2, 2), np.uint8)
    spacing = kwargs.pop("spacing", ISO)
    with pytest.raises(error, match=match):
        lesion_detection(z, z, spacing, **kwargs)


def test_lesion_detection_rejects_float_labels():
    z = np.zeros((2, 2, 2), np.uint8)
    with pytest.raises(TypeError, match="pred"):
        lesion_detection(z.astype(np.float32), z, ISO)
