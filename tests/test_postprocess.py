"""postprocess and lesion_stats against references written here with scipy.ndimage and numpy."""

from __future__ import annotations

import numpy as np
import pytest
from resunet_trt import kernels
from scipy import ndimage

CONNECTIVITIES = (6, 18, 26)
RANK = {6: 1, 18: 2, 26: 3}


def label_raster(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    """scipy.ndimage.label renumbered 1..n in raster order of each component's first voxel."""
    lab, n = ndimage.label(mask, structure=ndimage.generate_binary_structure(3, RANK[connectivity]))
    if n == 0:
        return lab.astype(np.int32), 0
    ids, first = np.unique(lab.ravel(), return_index=True)
    ids, first = ids[1:], first[1:]
    lut = np.zeros(n + 1, np.int64)
    lut[ids[np.argsort(first)]] = np.arange(1, n + 1)
    return lut[lab].astype(np.int32), n


def reference_postprocess(labels: np.ndarray, min_lesion_voxels: int, connectivity: int) -> np.ndarray:
    comp, n = label_raster(labels >= 1, connectivity)
    if n == 0:
        return np.zeros_like(labels)
    sizes = np.bincount(comp.ravel(), minlength=n + 1)
    sizes[0] = -1
    keep = int(np.argmax(sizes))  # first maximum = lowest raster id on ties
    out = np.where(comp == keep, labels, 0).astype(np.uint8)
    tumor, tn = label_raster(out == 2, connectivity)
    tsizes = np.bincount(tumor.ravel(), minlength=tn + 1)
    small = tsizes < min_lesion_voxels
    small[0] = False
    out[small[tumor]] = 1
    return out


def blob_labels(shape, seed: int) -> np.ndarray:
    """Smooth random 0/1/2 volume: several liver blobs with tumor inside some of them."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random(shape), 1.2)
    lo, hi = np.quantile(field, [0.7, 0.93])
    return ((field > lo).astype(np.uint8) + (field > hi)).astype(np.uint8)


def noise_labels(shape, seed: int) -> np.ndarray:
    """Independent random 0/1/2 per voxel: tumor touching background, tiny components everywhere."""
    rng = np.random.default_rng(seed)
    return rng.choice(np.array([0, 1, 2], np.uint8), size=shape, p=[0.5, 0.3, 0.2])


@pytest.mark.parametrize("connectivity", CONNECTIVITIES)
@pytest.mark.parametrize("min_lesion_voxels", [0, 1, 5, 10, 200])
@pytest.mark.parametrize("seed", [0, 1])
def test_postprocess_blobs_match_reference(connectivity, min_lesion_voxels, seed):
    labels = blob_labels((20, 28, 36), seed)
    out = kernels.postprocess(labels, min_lesion_voxels=min_lesion_voxels, connectivity=connectivity)
    assert out.dtype == np.uint8 and out.shape == labels.shape
    np.testing.assert_array_equal(out, reference_postprocess(labels, min_lesion_voxels, connectivity))


@pytest.mark.parametrize("connectivity", CONNECTIVITIES)
@pytest.mark.parametrize("min_lesion_voxels", [0, 3, 10])
def test_postprocess_noise_matches_reference(connectivity, min_lesion_voxels):
    labels = noise_labels((7, 9, 75), seed=connectivity)
    out = kernels.postprocess(labels, min_lesion_voxels=min_lesion_voxels, connectivity=connectivity)
    np.testing.assert_array_equal(out, reference_postprocess(labels, min_lesion_voxels, connectivity))


def test_postprocess_and_stats_large_volume_match_reference():
    # Above 2^22 voxels the CPU kernels use several threads and merge slab boundaries.
    labels = np.zeros((64, 256, 256), np.uint8)
    small = blob_labels((16, 64, 64), seed=6)
    labels[:] = np.tile(small, (4, 4, 4))
    labels[:, 128, :] = 0  # cut the tiling into two differently sized halves
    labels[:, 40:50, 40:50] = 2
    out = kernels.postprocess(labels, min_lesion_voxels=30)
    np.testing.assert_array_equal(out, reference_postprocess(labels, 30, 26))
    stats = kernels.lesion_stats(out)
    comp, n = label_raster(out == 2, 26)
    assert stats["count"] == n
    np.testing.assert_array_equal(stats["component_labels"], comp)
    np.testing.assert_array_equal(stats["voxels"], np.bincount(comp.ravel())[1:])


@pytest.mark.parametrize("order", ["F", "strided"])
def test_postprocess_memory_orders(order):
    labels = blob_labels((12, 16, 20), seed=4)
    if order == "F":
        arg = np.asfortranarray(labels)
    else:
        big = np.zeros((24, 16, 40), np.uint8)
        big[::2, :, ::2] = labels
        arg = big[::2, :, ::2]
    np.testing.assert_array_equal(kernels.postprocess(arg), reference_postprocess(labels, 10, 26))


@pytest.mark.parametrize("connectivity", [6, 26])
@pytest.mark.parametrize("case", ["lits117", "lits_small", "totalseg"])
def test_postprocess_real_ct_matches_reference(request, case, connectivity):
    _, labels = request.getfixturevalue(case)
    out = kernels.postprocess(labels, min_lesion_voxels=10, connectivity=connectivity)
    np.testing.assert_array_equal(out, reference_postprocess(labels, 10, connectivity))


def test_postprocess_empty_stays_empty():
    out = kernels.postprocess(np.zeros((3, 4, 5), np.uint8))
    assert out.shape == (3, 4, 5) and not out.any()


def test_postprocess_keeps_largest_and_drops_tumor_outside_it():
    labels = np.zeros((6, 10, 10), np.uint8)
    labels[0:2, 0:2, 0:2] = 1  # small liver piece (8 voxels) with a tumor in it
    labels[0, 0, 0] = 2
    labels[3:6, 4:10, 4:10] = 1  # large liver (108 voxels) with a 12-voxel tumor
    labels[4, 5:8, 5:9] = 2
    out = kernels.postprocess(labels, min_lesion_voxels=10)
    expected = np.zeros_like(labels)
    expected[3:6, 4:10, 4:10] = 1
    expected[4, 5:8, 5:9] = 2
    np.testing.assert_array_equal(out, expected)


def test_postprocess_tie_keeps_first_component_in_raster_order():
    labels = np.zeros((2, 6, 9), np.uint8)
    labels[1, 0:2, 0:2] = 1  # first voxel at (1, 0, 0): later in raster order
    labels[0, 4:6, 7:9] = 1  # first voxel at (0, 4, 7): first in raster order, same size (4)
    out = kernels.postprocess(labels)
    expected = np.zeros_like(labels)
    expected[0, 4:6, 7:9] = 1
    np.testing.assert_array_equal(out, expected)


def test_postprocess_small_tumor_becomes_liver_and_large_stays():
    labels = np.ones((5, 8, 8), np.uint8)
    labels[0, 0, 0:3] = 2  # 3 voxels
    labels[2:4, 3:6, 3:6] = 2  # 18 voxels
    out = kernels.postprocess(labels, min_lesion_voxels=10)
    expected = np.ones_like(labels)
    expected[2:4, 3:6, 3:6] = 2
    np.testing.assert_array_equal(out, expected)
    # floor exactly at the size keeps the lesion (fewer than the floor is dropped)
    assert (kernels.postprocess(labels, min_lesion_voxels=3) == labels).all()
    assert kernels.postprocess(labels, min_lesion_voxels=4)[0, 0, 0] == 1


@pytest.mark.parametrize("connectivity,expected", [(6, 1), (18, 1), (26, 2)])
def test_postprocess_tumor_joined_only_through_a_corner(connectivity, expected):
    # Two 6-voxel tumors touching at one corner: one 12-voxel lesion for 26, two small ones otherwise.
    labels = np.ones((4, 6, 6), np.uint8)
    labels[0:2, 0:1, 0:3] = 2
    labels[2:4, 1:2, 3:6] = 2
    out = kernels.postprocess(labels, min_lesion_voxels=10, connectivity=connectivity)
    assert out.max() == expected


def test_postprocess_all_tumor():
    labels = np.full((3, 4, 5), 2, np.uint8)
    assert (kernels.postprocess(labels, min_lesion_voxels=60) == 2).all()
    assert (kernels.postprocess(labels, min_lesion_voxels=61) == 1).all()


def test_postprocess_input_is_not_modified():
    labels = noise_labels((4, 5, 6), seed=9)
    before = labels.copy()
    kernels.postprocess(labels)
    np.testing.assert_array_equal(labels, before)


@pytest.mark.parametrize("op", ["postprocess", "lesion_stats"])
def test_values_above_two_raise(op):
    labels = np.zeros((3, 4, 5), np.uint8)
    labels[2, 3, 4] = 3
    with pytest.raises(ValueError, match="labels must hold only 0.*found value 3"):
        getattr(kernels, op)(labels)


@pytest.mark.parametrize("op", ["postprocess", "lesion_stats"])
@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.bool_])
def test_wrong_dtype_raises(op, dtype):
    with pytest.raises(TypeError, match="labels must be uint8"):
        getattr(kernels, op)(np.zeros((3, 4, 5), dtype))


@pytest.mark.parametrize("op", ["postprocess", "lesion_stats"])
@pytest.mark.parametrize("shape", [(4, 5), (2, 3, 4, 5)])
def test_wrong_ndim_raises(op, shape):
    with pytest.raises(ValueError, match="labels must be a 3-D"):
        getattr(kernels, op)(np.zeros(shape, np.uint8))


@pytest.mark.parametrize("op", ["postprocess", "lesion_stats"])
def test_bad_connectivity_raises(op):
    with pytest.raises(ValueError, match="connectivity must be 6, 18 or 26, got 8"):
        getattr(kernels, op)(np.zeros((3, 4, 5), np.uint8), connectivity=8)


def test_negative_min_lesion_voxels_raises():
    with pytest.raises(ValueError, match="min_lesion_voxels must be >= 0, got -1"):
        kernels.postprocess(np.zeros((3, 4, 5), np.uint8), min_lesion_voxels=-1)


def test_non_integer_min_lesion_voxels_raises():
    with pytest.raises(TypeError, match="min_lesion_voxels must be an int"):
        kernels.postprocess(np.zeros((3, 4, 5), np.uint8), min_lesion_voxels=2.5)


def reference_lesion_stats(labels: np.ndarray, connectivity: int) -> dict:
    comp, n = label_raster(labels == 2, connectivity)
    voxels, bbox, centroid = [], [], []
    for i in range(1, n + 1):
        idx = np.nonzero(comp == i)
        voxels.append(idx[0].size)
        bbox.append([int(a.min()) for a in idx] + [int(a.max()) + 1 for a in idx])
        centroid.append([a.mean() for a in idx])
    return {
        "count": n,
        "voxels": np.array(voxels, np.int64).reshape(n),
        "bbox": np.array(bbox, np.int64).reshape(n, 6),
        "centroid": np.array(centroid, np.float64).reshape(n, 3),
        "component_labels": comp,
    }


def assert_stats_equal(stats, ref) -> None:
    assert stats["count"] == ref["count"]
    assert stats["voxels"].dtype == np.int64 and stats["bbox"].dtype == np.int64
    assert stats["centroid"].dtype == np.float64 and stats["component_labels"].dtype == np.int32
    np.testing.assert_array_equal(stats["voxels"], ref["voxels"])
    np.testing.assert_array_equal(stats["bbox"], ref["bbox"])
    np.testing.assert_allclose(stats["centroid"], ref["centroid"], rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(stats["component_labels"], ref["component_labels"])


@pytest.mark.parametrize("connectivity", CONNECTIVITIES)
@pytest.mark.parametrize("make", [blob_labels, noise_labels])
def test_lesion_stats_match_numpy(connectivity, make):
    labels = make((10, 14, 70), 3)
    assert_stats_equal(
        kernels.lesion_stats(labels, connectivity=connectivity), reference_lesion_stats(labels, connectivity)
    )


@pytest.mark.parametrize("case", ["lits117", "lits_small"])
def test_lesion_stats_real_ct(request, case):
    _, labels = request.getfixturevalue(case)
    assert_stats_equal(kernels.lesion_stats(labels), reference_lesion_stats(labels, 26))


def test_lesion_stats_no_tumor():
    stats = kernels.lesion_stats(np.ones((3, 4, 5), np.uint8))
    assert stats["count"] == 0
    assert (
        stats["voxels"].shape == (0,) and stats["bbox"].shape == (0, 6) and stats["centroid"].shape == (0, 3)
    )
    assert not stats["component_labels"].any()


def test_lesion_stats_hand_computed():
    labels = np.zeros((4, 5, 6), np.uint8)
    labels[1:3, 2, 1:4] = 2  # 6 voxels: d 1..2, h 2, w 1..3
    labels[3, 4, 5] = 2  # one voxel in the last corner
    stats = kernels.lesion_stats(labels)
    assert stats["count"] == 2
    np.testing.assert_array_equal(stats["voxels"], [6, 1])
    np.testing.assert_array_equal(stats["bbox"], [[1, 2, 1, 3, 3, 4], [3, 4, 5, 4, 5, 6]])
    np.testing.assert_array_equal(stats["centroid"], [[1.5, 2.0, 2.0], [3.0, 4.0, 5.0]])


@pytest.mark.gpu
@pytest.mark.parametrize("connectivity", CONNECTIVITIES)
@pytest.mark.parametrize("min_lesion_voxels", [0, 10])
def test_cuda_postprocess_equals_cpu(connectivity, min_lesion_voxels):
    import cupy as cp

    for labels in (blob_labels((20, 28, 36), 0), noise_labels((7, 9, 75), 1), np.zeros((2, 3, 4), np.uint8)):
        cpu = kernels.postprocess(labels, min_lesion_voxels=min_lesion_voxels, connectivity=connectivity)
        gpu = kernels.postprocess(
            cp.asarray(labels), min_lesion_voxels=min_lesion_voxels, connectivity=connectivity
        )
        assert isinstance(gpu, cp.ndarray) and gpu.dtype == cp.uint8
        np.testing.assert_array_equal(cp.asnumpy(gpu), cpu)


@pytest.mark.gpu
@pytest.mark.parametrize("case", ["lits117", "lits_small", "totalseg"])
def test_cuda_postprocess_and_stats_equal_cpu_real_ct(request, case):
    import cupy as cp

    _, labels = request.getfixturevalue(case)
    np.testing.assert_array_equal(
        cp.asnumpy(kernels.postprocess(cp.asarray(labels))), kernels.postprocess(labels)
    )
    cpu = kernels.lesion_stats(labels)
    gpu = kernels.lesion_stats(cp.asarray(labels))
    assert gpu["count"] == cpu["count"]
    for key in ("voxels", "bbox", "centroid", "component_labels"):
        np.testing.assert_array_equal(cp.asnumpy(gpu[key]), cpu[key])


@pytest.mark.gpu
@pytest.mark.parametrize("connectivity", CONNECTIVITIES)
def test_cuda_lesion_stats_equal_cpu(connectivity):
    import cupy as cp

    labels = noise_labels((9, 11, 70), 5)
    cpu = kernels.lesion_stats(labels, connectivity=connectivity)
    gpu = kernels.lesion_stats(cp.asarray(labels), connectivity=connectivity)
    assert gpu["count"] == cpu["count"]
    for key in ("voxels", "bbox", "centroid", "component_labels"):
        np.testing.assert_array_equal(cp.asnumpy(gpu[key]), cpu[key])


@pytest.mark.gpu
@pytest.mark.parametrize("op", ["postprocess", "lesion_stats"])
def test_cuda_values_above_two_raise(op):
    import cupy as cp

    labels = np.zeros((3, 4, 5), np.uint8)
    labels[1, 2, 3] = 7
    with pytest.raises(ValueError, match="found value 7"):
        getattr(kernels, op)(cp.asarray(labels))
