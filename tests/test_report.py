"""Lesion report and overlay: numbers against hand-computed cubes at anisotropic spacing, atomic files."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from resunet_trt import kernels
from resunet_trt.report import Lesion, build_lesions, build_report, voxel_to_world, write_report

SPACING = (2.5, 0.7, 0.9)  # (dz, dy, dx) mm, all different
# A rotated, flipped, translated affine: (d, h, w) -> RAS mm.
AFFINE = np.array(
    [
        [0.0, 0.0, -0.9, 120.0],
        [0.0, -0.7, 0.0, 85.5],
        [2.5, 0.0, 0.0, -310.25],
        [0.0, 0.0, 0.0, 1.0],
    ]
)

# Two tumor cubes (inclusive index bounds) inside a liver block, and their HU.
CUBE_A = ((2, 3, 4), (4, 7, 6))  # 3 x 5 x 3 voxels, first in raster order
CUBE_B = ((8, 10, 12), (9, 11, 16))  # 2 x 2 x 5 voxels


def _volume(hu, spacing=SPACING, affine=AFFINE):
    from resunet_trt.io import CTVolume

    return CTVolume.from_array(hu, spacing=spacing, affine=affine)


def _box(bounds):
    (d0, h0, w0), (d1, h1, w1) = bounds
    return slice(d0, d1 + 1), slice(h0, h1 + 1), slice(w0, w1 + 1)


@pytest.fixture()
def cubes():
    """(labels, hu): liver block with two tumor cubes; cube B's HU vary by voxel."""
    shape = (12, 16, 20)
    labels = np.zeros(shape, np.uint8)
    labels[1:11, 2:14, 3:18] = 1
    labels[_box(CUBE_A)] = 2
    labels[_box(CUBE_B)] = 2
    hu = np.full(shape, -50, np.int16)
    hu[labels == 1] = 60
    hu[_box(CUBE_A)] = 25
    rng = np.random.default_rng(3)
    hu[_box(CUBE_B)] = rng.integers(-20, 90, size=(2, 2, 5))
    return labels, hu


def _expected(bounds, hu):
    """Hand-computed numbers of an axis-aligned cube."""
    (d0, h0, w0), (d1, h1, w1) = bounds
    nd, nh, nw = d1 - d0 + 1, h1 - h0 + 1, w1 - w0 + 1
    voxels = nd * nh * nw
    centroid = ((d0 + d1) / 2, (h0 + h1) / 2, (w0 + w1) / 2)
    world = AFFINE[:3, :3] @ np.array(centroid) + AFFINE[:3, 3]
    return {
        "voxels": voxels,
        "volume_ml": voxels * SPACING[0] * SPACING[1] * SPACING[2] / 1000.0,
        # Centre-to-centre diagonal of the in-plane rectangle.
        "diameter": math.hypot((nh - 1) * SPACING[1], (nw - 1) * SPACING[2]),
        "centroid": centroid,
        "world": tuple(world),
        "mean_hu": float(hu[_box(bounds)].astype(np.float64).mean()),
    }


def _lesions(labels, hu):
    stats = kernels.lesion_stats(labels, connectivity=26)
    return build_lesions(stats, volume=_volume(hu))


def test_lesions_equal_hand_computed_cubes(cubes):
    labels, hu = cubes
    lesions = _lesions(labels, hu)
    assert [les.id for les in lesions] == [1, 2]
    for les, bounds in zip(lesions, (CUBE_A, CUBE_B)):
        exp = _expected(bounds, hu)
        assert les.voxels == exp["voxels"]
        assert les.volume_ml == pytest.approx(exp["volume_ml"], rel=1e-12)
        assert les.longest_axial_diameter_mm == pytest.approx(exp["diameter"], rel=1e-9)
        assert les.centroid_voxel == pytest.approx(exp["centroid"], abs=1e-6)
        assert les.centroid_world_mm == pytest.approx(exp["world"], abs=1e-5)
        assert les.bbox == bounds
        assert les.mean_hu == pytest.approx(exp["mean_hu"], abs=1e-9)


def test_lesions_measured_on_a_crop_equal_the_whole_volume(cubes):
    # The pipeline measures components inside the tumor box only; with the crop's origin the report must be the
    # hand-computed one of the whole volume (same ids, boxes, centroids, diameters, mean HU).
    from resunet_trt.anatomy import tumor_box

    labels, hu = cubes
    box = tumor_box(labels)
    origin = tuple(b.start for b in box)
    assert origin != (0, 0, 0)
    stats = kernels.lesion_stats(np.ascontiguousarray(labels[box]), connectivity=26)
    lesions = build_lesions(stats, volume=_volume(hu), origin=origin)
    assert lesions == _lesions(labels, hu)
    for les, bounds in zip(lesions, (CUBE_A, CUBE_B)):
        assert les.bbox == bounds
        assert les.mean_hu == pytest.approx(_expected(bounds, hu)["mean_hu"], abs=1e-9)


@pytest.mark.parametrize("origin", [(0, 0), (-1, 0, 0)])
def test_build_lesions_rejects_a_bad_origin(cubes, origin):
    labels, hu = cubes
    with pytest.raises(ValueError, match="origin"):
        build_lesions(kernels.lesion_stats(labels, connectivity=26), volume=_volume(hu), origin=origin)


def test_no_tumor_gives_no_lesions(cubes):
    labels, hu = cubes
    labels = np.where(labels == 2, 1, labels).astype(np.uint8)
    assert _lesions(labels, hu) == []


def test_lesion_touching_the_border(cubes):
    """A lesion in the corner voxel block (index 0 and the last index) is measured like any other."""
    labels, hu = cubes
    labels[:] = 1
    corner = ((0, 0, 0), (1, 2, 19))  # d 0..1, h 0..2, w 0..19: touches four borders
    labels[_box(corner)] = 2
    lesions = _lesions(labels, hu)
    assert len(lesions) == 1
    exp = _expected(corner, hu)
    assert lesions[0].voxels == exp["voxels"]
    assert lesions[0].bbox == corner
    assert lesions[0].longest_axial_diameter_mm == pytest.approx(exp["diameter"])


def test_single_voxel_lesion_has_zero_diameter(cubes):
    labels, hu = cubes
    labels[labels == 2] = 1
    labels[5, 5, 5] = 2
    (les,) = _lesions(labels, hu)
    assert les.voxels == 1
    assert les.longest_axial_diameter_mm == 0.0
    assert les.centroid_world_mm == pytest.approx(tuple(AFFINE[:3, :3] @ [5, 5, 5] + AFFINE[:3, 3]))


def test_diagonal_touching_cubes_are_one_lesion_at_26_and_two_at_6(cubes):
    labels, hu = cubes
    labels[labels == 2] = 1
    labels[3:5, 3:5, 3:5] = 2
    labels[5:7, 5:7, 5:7] = 2  # touches the first only at a corner
    vol = _volume(hu)
    one = build_lesions(kernels.lesion_stats(labels, connectivity=26), volume=vol)
    two = build_lesions(kernels.lesion_stats(labels, connectivity=6), volume=vol)
    assert [les.voxels for les in one] == [16]
    assert [les.voxels for les in two] == [8, 8]


def test_voxel_to_world_matches_affine():
    assert voxel_to_world(AFFINE, (1, 2, 3)) == pytest.approx((120 - 2.7, 85.5 - 1.4, -310.25 + 2.5))
    with pytest.raises(ValueError, match="affine"):
        voxel_to_world(np.eye(3), (0, 0, 0))


def _result(labels, hu):
    from resunet_trt.segmenter import Result

    lesions = _lesions(labels, hu)
    voxel_ml = np.prod(SPACING) / 1000
    liver = np.count_nonzero(labels) * voxel_ml
    tumor = np.count_nonzero(labels == 2) * voxel_ml
    return Result(
        labels=labels,
        volume=_volume(hu),
        lesions=lesions,
        liver_volume_ml=liver,
        tumor_volume_ml=tumor,
        tumor_burden=tumor / liver,
    )


def test_report_is_json_with_volumes_and_lesions(cubes, tmp_path):
    labels, hu = cubes
    result = _result(labels, hu)
    report = build_report(result, case="cubes")
    path = tmp_path / "cubes_report.json"
    write_report(path, report)
    back = json.loads(path.read_text())
    voxel_ml = np.prod(SPACING) / 1000
    assert back["case"] == "cubes"
    assert back["lesion_count"] == 2
    assert back["liver_volume_ml"] == pytest.approx(10 * 12 * 15 * voxel_ml)
    assert back["tumor_volume_ml"] == pytest.approx((45 + 20) * voxel_ml)
    assert back["tumor_burden"] == pytest.approx(65 / 1800)
    assert back["lesions"][1]["bbox"] == {"min": list(CUBE_B[0]), "max": list(CUBE_B[1])}
    assert back["lesions"][0]["centroid_world_mm"] == pytest.approx(list(_expected(CUBE_A, hu)["world"]))
    assert back["spacing_mm_dhw"] == list(SPACING)


def test_report_says_not_for_clinical_use_and_names_the_model(cubes):
    labels, hu = cubes
    result = _result(labels, hu)
    result.info["model"] = "resunet_default.onnx"
    report = build_report(result, case="cubes")
    assert report["not_for_clinical_use"] is True
    assert report["model_name"] == "resunet_default.onnx"


def test_unserialisable_report_fails_and_writes_nothing(tmp_path):
    path = tmp_path / "bad_report.json"
    with pytest.raises(ValueError, match="bad_report.json"):
        write_report(path, {"x": float("nan")})
    assert os.listdir(tmp_path) == []


def test_failing_write_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "case_report.json"

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_report(path, {"lesions": list(range(1000))})
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


def test_lesion_to_dict_is_json_ready():
    les = Lesion(
        id=1,
        voxels=np.int64(3),
        volume_ml=0.1,
        longest_axial_diameter_mm=2.0,
        centroid_voxel=(1.0, 2.0, 3.0),
        centroid_world_mm=(4.0, 5.0, 6.0),
        bbox=((0, 1, 2), (2, 3, 4)),
        mean_hu=12.5,
    )
    text = json.dumps(les.to_dict(), default=int)
    assert json.loads(text)["bbox"] == {"min": [0, 1, 2], "max": [2, 3, 4]}


# ------------------------------------------------------------------------------------------------
# Overlay
# ------------------------------------------------------------------------------------------------
def test_overlay_keeps_physical_aspect():
    from resunet_trt.overlay import render_overlay

    labels = np.zeros((20, 40, 30), np.uint8)
    hu = np.zeros((20, 40, 30), np.int16)
    # (dz, dy, dx) = (5, 1, 2): axial 40 mm x 60 mm, coronal 100 x 60, sagittal 100 x 40 (rows x cols).
    image = render_overlay(hu, labels, (5.0, 1.0, 2.0), view_size=100)
    widths = [round(60 * 100 / 60), round(60 * 100 / 100), round(40 * 100 / 100)]
    assert image.size == (sum(widths) + 2 * 4, 100 + 14)  # views + gaps; title strip above


def test_overlay_centres_on_largest_lesion_and_colours_it(cubes):
    from resunet_trt.overlay import TUMOR_RGB, crossing_point, render_overlay

    labels, hu = cubes
    lesions = _lesions(labels, hu)
    assert crossing_point(labels, lesions) == (3, 5, 5)  # cube A, 45 voxels > cube B's 20
    image = np.asarray(render_overlay(hu, labels, SPACING, lesions=lesions, view_size=128))
    reddish = (image[..., 0] > 150) & (image[..., 1] < 120)
    assert reddish.any()
    assert TUMOR_RGB[0] > TUMOR_RGB[1]


def test_overlay_centre_without_lesions_is_liver_centroid():
    from resunet_trt.overlay import crossing_point

    labels = np.zeros((10, 12, 14), np.uint8)
    labels[2:5, 6:10, 1:4] = 1
    assert crossing_point(labels, []) == (3, 8, 2)  # centre of d 2..4, h 6..9 (7.5 -> 8), w 1..3
    assert crossing_point(np.zeros_like(labels), []) == (4, 6, 6)  # volume centre (4.5, 5.5, 6.5) rounded


def test_write_overlay_is_a_png(cubes, tmp_path):
    from PIL import Image
    from resunet_trt.overlay import write_overlay

    labels, hu = cubes
    path = tmp_path / "c_overlay.png"
    write_overlay(path, _result(labels, hu), view_size=64)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGB"
    assert os.listdir(tmp_path) == ["c_overlay.png"]


def test_overlay_rejects_mismatched_shapes():
    from resunet_trt.overlay import render_overlay

    with pytest.raises(ValueError, match="shape"):
        render_overlay(np.zeros((2, 3, 4), np.int16), np.zeros((2, 3, 5), np.uint8), (1, 1, 1))
