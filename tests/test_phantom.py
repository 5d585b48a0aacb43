"""The synthetic abdominal CT phantom: determinism, label rules, anatomy in the canonical orientation, HU ranges."""

from __future__ import annotations

import numpy as np
import pytest
from resunet_trt.phantom import make_phantom
from scipy import ndimage

# 128 x 128 at 3.2 mm: the same 41 cm field of view as 512 x 512 at 0.8 mm, at 1/64 of the cost.
SHAPE = (64, 128, 128)
SPACING = (3.0, 3.2, 3.2)


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(SHAPE, SPACING, seed=0, n_tumors=6)


@pytest.fixture(scope="module")
def clean():
    """The same phantom without noise."""
    return make_phantom(SHAPE, SPACING, seed=0, n_tumors=6, noise_hu=0.0)


def _tumor_components(labels: np.ndarray):
    comp, n = ndimage.label(labels == 2, structure=np.ones((3, 3, 3), dtype=bool))
    return comp, n


@pytest.mark.parametrize("shape", [(1, 32, 32), (5, 17, 23), (40, 64, 48), (17, 1, 9)])
def test_dtypes_and_shapes(shape):
    ct, labels = make_phantom(shape, (2.0, 1.5, 1.5), seed=3)
    assert ct.shape == shape and labels.shape == shape
    assert ct.dtype == np.int16 and labels.dtype == np.uint8
    assert ct.flags.c_contiguous and labels.flags.c_contiguous


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_same_seed_same_phantom(seed):
    a = make_phantom((24, 64, 64), (5.0, 6.4, 6.4), seed=seed)
    b = make_phantom((24, 64, 64), (5.0, 6.4, 6.4), seed=seed)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_different_seeds_differ():
    a = make_phantom((24, 64, 64), (5.0, 6.4, 6.4), seed=0)
    b = make_phantom((24, 64, 64), (5.0, 6.4, 6.4), seed=1)
    assert not np.array_equal(a[0], b[0])
    assert not np.array_equal(a[1], b[1])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_labels_are_0_1_2_and_all_present(seed):
    _, labels = make_phantom((48, 96, 96), (3.0, 4.3, 4.3), seed=seed)
    assert set(np.unique(labels).tolist()) == {0, 1, 2}


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_tumors_lie_inside_the_liver(seed):
    _, labels = make_phantom((48, 96, 96), (3.0, 4.3, 4.3), seed=seed)
    liver = labels > 0
    # Filling the holes of the liver must not add tumor: every tumor is enclosed by liver or touches its surface.
    comp, n = _tumor_components(labels)
    assert n >= 1
    shell = ndimage.binary_dilation(labels == 2, structure=np.ones((3, 3, 3), dtype=bool)) & (labels != 2)
    for k in range(1, n + 1):
        ring = ndimage.binary_dilation(comp == k, structure=np.ones((3, 3, 3), dtype=bool)) & shell
        # The voxels around a tumor are mostly liver (not fat, muscle, bone or air).
        assert liver[ring].mean() > 0.6, f"tumor {k} is not surrounded by liver"


def test_liver_in_the_right_upper_abdomen(phantom):
    _, labels = phantom
    d, h, w = np.nonzero(labels > 0)
    depth, height, width = SHAPE
    # Canonical orientation: small W is the patient's right, large D is superior.
    assert w.mean() < 0.4 * width
    assert d.mean() > 0.5 * depth
    # Every liver voxel lies in the body, away from the image border.
    assert w.min() > 0 and h.min() > 0 and h.max() < height - 1


def test_air_outside_the_body(phantom):
    ct, _ = phantom
    corners = ct[:, :4, :4]
    assert abs(float(np.median(corners)) + 1000.0) < 25.0


def test_liver_hu_plausible(phantom, clean):
    for ct, labels in (phantom, clean):
        liver = ndimage.binary_erosion(labels == 1, iterations=2)
        assert 60.0 <= float(np.median(ct[liver])) <= 120.0


def test_subcutaneous_fat_hu(clean):
    ct, _ = clean
    depth, height, width = SHAPE
    # Walk from the image's left edge to the centre along the middle row: air, then the fat layer.
    row = ct[depth // 2, height // 2, : width // 2].astype(np.float64)
    edge = int(np.argmax(row > -500.0))
    assert edge > 0
    fat = row[edge + 2 : edge + 4]
    assert np.all((fat > -140.0) & (fat < -60.0)), fat


def test_spine_is_bone(clean):
    ct, _ = clean
    _depth, height, width = SHAPE
    # Posterior half, central quarter of W: the densest voxels there are vertebra at bone HU.
    box = ct[:, height // 2 :, 3 * width // 8 : 5 * width // 8]
    bone = box[box > 250]
    assert bone.size > 100
    assert 350.0 <= float(np.median(bone)) <= 900.0


def test_partial_volume_blur_makes_intermediate_values(clean):
    ct, _ = clean
    between = (ct > -900) & (ct < -200)  # between air and fat: only at the blurred body edge (or lung edge)
    assert between.sum() > 0.001 * ct.size


def test_noise_level(phantom, clean):
    diff = phantom[0].astype(np.float64) - clean[0].astype(np.float64)
    body = clean[0] > -900
    assert 10.0 < diff[body].std() < 14.0
    assert abs(diff[body].mean()) < 0.5


def test_tumors_hypo_and_hyperdense(clean):
    ct, labels = clean
    liver_hu = float(np.median(ct[labels == 1]))
    comp, n = _tumor_components(labels)
    assert n >= 3
    core = ndimage.binary_erosion(labels == 2)
    means = [float(np.mean(ct[(comp == k) & core])) for k in range(1, n + 1) if ((comp == k) & core).any()]
    assert min(means) < liver_hu - 20.0
    assert max(means) > liver_hu + 20.0


def test_tumor_sizes_vary():
    spacing = (1.5, 1.6, 1.6)
    _, labels = make_phantom((128, 256, 256), spacing, seed=0, n_tumors=6, noise_hu=0.0)
    comp, n = _tumor_components(labels)
    assert n >= 4
    voxels = np.bincount(comp.ravel())[1:]
    diameters_mm = np.cbrt(6.0 * voxels * np.prod(spacing) / np.pi)
    assert diameters_mm.max() >= 25.0
    assert diameters_mm.min() <= 10.0


def test_no_tumors_when_asked():
    _, labels = make_phantom((24, 64, 64), (5.0, 6.4, 6.4), seed=0, n_tumors=0)
    assert (labels == 2).sum() == 0
    assert (labels == 1).sum() > 0


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"shape": (64, 64)}, "shape"),
        ({"shape": ()}, "shape"),
        ({"shape": (0, 64, 64)}, "shape"),
        ({"shape": (4, -1, 64)}, "shape"),
        ({"shape": (4, 6.5, 64)}, "shape"),
        ({"shape": 64}, "shape"),
        ({"spacing": (1.0, -0.8, 0.8)}, "spacing"),
        ({"spacing": (1.0, 0.0, 0.8)}, "spacing"),
        ({"spacing": (1.0, 0.8)}, "spacing"),
        ({"spacing": (1.0, float("nan"), 0.8)}, "spacing"),
        ({"n_tumors": -1}, "n_tumors"),
        ({"n_tumors": 2.5}, "n_tumors"),
        ({"noise_hu": -1.0}, "noise_hu"),
        ({"noise_hu": float("inf")}, "noise_hu"),
        ({"seed": -3}, "seed"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, name):
    args = {"shape": (4, 16, 16), "spacing": (1.0, 1.0, 1.0)} | kwargs
    with pytest.raises(ValueError, match=name):
        make_phantom(**args)


def test_non_numeric_spacing_raises_type_error():
    with pytest.raises(TypeError, match="spacing"):
        make_phantom((4, 16, 16), "abc")


@pytest.mark.parametrize("seed", [1.5, "0", None, True])
def test_bad_seed_type_raises_type_error(seed):
    with pytest.raises(TypeError, match="seed"):
        make_phantom((4, 16, 16), (1.0, 1.0, 1.0), seed=seed)


def test_enhanced_vessels_inside_the_liver_are_labelled_liver(clean):
    ct, labels = clean
    liver = labels == 1
    liver_hu = float(np.median(ct[liver]))
    bright = liver & (ct > liver_hu + 25)
    # Hepatic and portal vessels: bright tubes that are part of the liver label, away from any tumor.
    assert bright.sum() > 0.002 * liver.sum()
    near_tumor = ndimage.binary_dilation(labels == 2, iterations=2)
    assert (bright & ~near_tumor).sum() > 0.5 * bright.sum()
