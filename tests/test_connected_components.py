"""connected_components against cc3d and scipy.ndimage.label (exact after raster-order relabelling)."""

from __future__ import annotations

import itertools
from typing import ClassVar

import cc3d
import numpy as np
import pytest
from resunet_trt import kernels
from resunet_trt._device import core
from scipy import ndimage

CONNECTIVITIES = (6, 18, 26)
RANK = {6: 1, 18: 2, 26: 3}  # scipy structure rank for each connectivity


def raster_relabel(labels: np.ndarray) -> np.ndarray:
    """Renumber labels 1..n in C-order raster order of each component's first voxel (0 stays 0)."""
    flat = labels.ravel()
    ids, first = np.unique(flat, return_index=True)
    keep = ids != 0
    ids, first = ids[keep], first[keep]
    lut = np.zeros(int(flat.max()) + 1 if flat.size else 1, dtype=np.int64)
    lut[ids[np.argsort(first)]] = np.arange(1, ids.size + 1)
    return lut[labels].astype(np.int32)


def cc3d_reference(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    ref = cc3d.connected_components(np.ascontiguousarray(mask != 0), connectivity=connectivity)
    return raster_relabel(ref), int(ref.max())


def assert_matches_cc3d(mask: np.ndarray, connectivity: int) -> None:
    labels, count = kernels.connected_components(mask, connectivity=connectivity)
    ref, ref_count = cc3d_reference(mask, connectivity)
    assert labels.dtype == np.int32
    assert labels.shape == mask.shape
    assert count == ref_count
    np.testing.assert_array_equal(labels, ref)


def make_layout(mask: np.ndarray, order: str) -> np.ndarray:
    """The same values as ``mask`` in C order, Fortran order, or as a non-contiguous strided view."""
    if order == "C":
        return np.ascontiguousarray(mask)
    if order == "F":
        return np.asfortranarray(mask)
    big = np.zeros((mask.shape[0] * 2, mask.shape[1], mask.shape[2] * 2), dtype=mask.dtype)
    big[::2, :, ::2] = mask
    view = big[::2, :, ::2]
    assert not view.flags.c_contiguous
    return view


def random_mask(shape, density: float, dtype, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    fg = rng.random(shape) < density
    if dtype == np.bool_:
        return fg
    # uint8: any nonzero value is foreground
    return (fg * rng.integers(1, 256, size=shape)).astype(np.uint8)


@pytest.mark.parametrize("connectivity", CONNECTIVITIES)
@pytest.mark.parametrize("dtype", [np.bool_, np.uint8])
@pytest.mark.parametrize("order", ["C", "F", "strided"])
@pytest.mark.parametrize("density", [0.05, 0.3, 0.6])
def test_random_masks_match_cc3d(connectivity, dtype, order, density):
    mask = random_mask((9, 13, 70), density, dtype, seed=int(density * 100) + connectivity)
    assert_matches_cc3d(make_layout(mask, order), connectivity)


@pytest.mark.parametrize("connectivity", CONNECTIVITIES)
@pytest.mark.parametrize("density", [0.2, 0.5, 0.9, 0.97])
def test_random_masks_match_scipy(connectivity, density):
    mask = random_mask((11, 17, 131), density, np.bool_, seed=7)
    labels, count = kernels.connected_components(mask, connectivity=connectivity)
    ref, n = ndimage.label(mask, structure=ndimage.generate_binary_structure(3, RANK[connectivity]))
    assert count == n
    np.testing.assert_array_equal(labels, raster_relabel(ref))


@pytest.mark.parametrize("connectivity", CONNECTIVITIES)
def test_volume_large_enough_for_threads_matches_cc3d(connectivity):
    # Above 2^22 voxels the CPU kernel splits the slices into slabs and merges the slab boundaries.
    rng = np.random.default_rng(connectivity)
    mask = rng.random((64, 256, 257), dtype=np.float32) < 0.4
    assert mask.size >= 1 << 22
    assert_matches_cc3d(mask, connectivity)


@pytest.mark.parametrize("connectivity", CONNECTIVITIES)
@pytest.mark.parametrize("width", [1, 63, 64, 65, 127, 128, 129, 200])
def test_long_runs_across_64_voxel_chunks(connectivity, width):
    # Sparse background in long rows: runs cross the 64-voxel chunks the rows are read in.
    mask = random_mask((4, 5, width), 0.93, np.bool_, seed=width)
    assert_matches_cc3d(mask, connectivity)


@pytest.mark.parametrize("connectivity", CONNECTIVITIES)
@pytest.mark.parametrize("case", ["lits117", "lits_small", "totalseg"])
@pytest.mark.parametrize("structure", ["liver", "tumor"])
def test_real_ct_masks_match_cc3d(request, case, structure, connectivity):
    _, labels = request.getfixturevalue(case)
    mask = labels >= 1 if structure == "liver" else labels == 2
    assert_matches_cc3d(mask, connectivity)


@pytest.mark.parametrize("connectivity", CONNECTIVITIES)
def test_empty(connectivity):
    labels, count = kernels.connected_components(np.zeros((4, 5, 6), bool), connectivity=connectivity)
    assert count == 0
    assert labels.dtype == np.int32 and not labels.any()


@pytest.mark.parametrize("connectivity", CONNECTIVITIES)
@pytest.mark.parametrize("position", [(0, 0, 0), (3, 4, 5), (0, 4, 0), (2, 2, 3), (3, 0, 5)])
def test_one_voxel(connectivity, position):
    mask = np.zeros((4, 5, 6), np.uint8)
    mask[position] = 1
    labels, count = kernels.connected_components(mask, connectivity=connectivity)
    assert count == 1
    expected = np.zeros(mask.shape, np.int32)
    expected[position] = 1
    np.testing.assert_array_equal(labels, expected)


@pytest.mark.parametrize("connectivity", CONNECTIVITIES)
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 4, 5), (6, 1, 70)])
def test_all_ones(connectivity, shape):
    labels, count = kernels.connected_components(np.ones(shape, bool), connectivity=connectivity)
    assert count == 1
    assert (labels == 1).all()


@pytest.mark.parametrize("connectivity", CONNECTIVITIES)
def test_shell_touching_every_border_is_one_component(connectivity):
    mask = np.ones((5, 6, 7), bool)
    mask[1:-1, 1:-1, 1:-1] = False
    labels, count = kernels.connected_components(mask, connectivity=connectivity)
    assert count == 1
    np.testing.assert_array_equal(labels, mask.astype(np.int32))


@pytest.mark.parametrize("connectivity", CONNECTIVITIES)
def test_eight_corners_are_eight_components_in_raster_order(connectivity):
    mask = np.zeros((4, 5, 6), bool)
    corners = list(itertools.product((0, 3), (0, 4), (0, 5)))  # already in raster order
    for c in corners:
        mask[c] = True
    labels, count = kernels.connected_components(mask, connectivity=connectivity)
    assert count == 8
    for i, c in enumerate(corners, start=1):
        assert labels[c] == i


@pytest.mark.parametrize("connectivity", CONNECTIVITIES)
@pytest.mark.parametrize("shape", [(1, 9, 12), (1, 1, 40), (1, 40, 1), (40, 1, 1), (1, 1, 1)])
def test_one_slice_and_line_volumes(connectivity, shape):
    mask = random_mask(shape, 0.5, np.bool_, seed=sum(shape))
    assert_matches_cc3d(mask, connectivity)


@pytest.mark.parametrize("connectivity", CONNECTIVITIES)
@pytest.mark.parametrize("shape", [(2, 3, 1), (3, 1, 2), (2, 2, 2), (5, 3, 7), (7, 2, 3)])
def test_odd_tiny_sizes(connectivity, shape):
    for seed in range(4):
        assert_matches_cc3d(random_mask(shape, 0.5, np.uint8, seed=seed), connectivity)


@pytest.mark.parametrize("offset", [o for o in itertools.product((-1, 0, 1), repeat=3) if any(o)])
@pytest.mark.parametrize("connectivity", CONNECTIVITIES)
def test_two_voxels_at_each_neighbour_offset(offset, connectivity):
    # Hand rule: voxels differing in k coordinates are 6-neighbours for k = 1, 18- for k <= 2, 26- for k <= 3.
    mask = np.zeros((3, 3, 3), bool)
    mask[1, 1, 1] = True
    other = tuple(1 + o for o in offset)
    mask[other] = True
    k = sum(o != 0 for o in offset)
    joined = k <= RANK[connectivity]
    labels, count = kernels.connected_components(mask, connectivity=connectivity)
    assert count == (1 if joined else 2)
    first, second = sorted([(1, 1, 1), other])
    assert labels[first] == 1
    assert labels[second] == (1 if joined else 2)


def test_diagonal_staircase_separates_connectivities():
    # A staircase through edges only: one component for 18/26, one per voxel for 6.
    edge = np.zeros((4, 4, 4), bool)
    for i in range(4):
        edge[i, i, 1] = True
    # A staircase through corners only: one component for 26, one per voxel for 6 and 18.
    corner = np.zeros((4, 4, 4), bool)
    for i in range(4):
        corner[i, i, i] = True
    counts = {c: kernels.connected_components(edge, connectivity=c)[1] for c in CONNECTIVITIES}
    assert counts == {6: 4, 18: 1, 26: 1}
    counts = {c: kernels.connected_components(corner, connectivity=c)[1] for c in CONNECTIVITIES}
    assert counts == {6: 4, 18: 4, 26: 1}


def test_u_shape_merges_two_provisional_components():
    # Two arms that only meet in the last slice: the union-find must merge labels found separately.
    mask = np.zeros((3, 4, 5), bool)
    mask[:, 0, 0] = True
    mask[:, 0, 4] = True
    mask[2, 0, :] = True
    labels, count = kernels.connected_components(mask, connectivity=6)
    assert count == 1
    np.testing.assert_array_equal(labels, mask.astype(np.int32))


def test_input_is_not_modified():
    mask = random_mask((5, 6, 7), 0.4, np.uint8, seed=3)
    before = mask.copy()
    kernels.connected_components(mask)
    np.testing.assert_array_equal(mask, before)


def test_default_connectivity_is_26():
    mask = np.zeros((2, 2, 2), bool)
    mask[0, 0, 0] = mask[1, 1, 1] = True
    assert kernels.connected_components(mask)[1] == 1


def test_wrong_ndim_raises():
    with pytest.raises(ValueError, match="mask must be a 3-D"):
        kernels.connected_components(np.zeros((4, 4), bool))


@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.int64])
def test_wrong_dtype_raises(dtype):
    with pytest.raises(TypeError, match="mask must be bool or uint8"):
        kernels.connected_components(np.zeros((2, 3, 4), dtype))


@pytest.mark.parametrize("connectivity", [0, 4, 8, 27])
def test_bad_connectivity_raises(connectivity):
    with pytest.raises(ValueError, match=f"connectivity must be 6, 18 or 26, got {connectivity}"):
        kernels.connected_components(np.zeros((2, 3, 4), bool), connectivity=connectivity)


@pytest.mark.parametrize("connectivity", ["26", 26.0, True])
def test_connectivity_of_wrong_type_raises(connectivity):
    with pytest.raises(TypeError, match="connectivity must be an int"):
        kernels.connected_components(np.zeros((2, 3, 4), bool), connectivity=connectivity)


class _FakeCudaArray:
    """Exposes __cuda_array_interface__ without any GPU behind it."""

    __cuda_array_interface__: ClassVar[dict] = {
        "shape": (2, 2, 2),
        "typestr": "|u1",
        "data": (0, False),
        "version": 3,
    }


@pytest.mark.skipif(core().built_with_cuda, reason="this build has CUDA")
@pytest.mark.parametrize("op", ["connected_components", "postprocess", "lesion_stats"])
def test_cuda_input_on_cpu_only_build_raises(op):
    with pytest.raises(RuntimeError, match=f"{op}: got a CUDA array but resunet_trt was built without CUDA"):
        getattr(kernels, op)(_FakeCudaArray())


@pytest.mark.gpu
@pytest.mark.parametrize("connectivity", CONNECTIVITIES)
@pytest.mark.parametrize("density", [0.05, 0.3, 0.6, 0.95])
@pytest.mark.parametrize("shape", [(9, 13, 70), (1, 1, 33), (17, 5, 129)])
def test_cuda_equals_cpu_random(connectivity, density, shape):
    import cupy as cp

    mask = random_mask(shape, density, np.uint8, seed=11)
    cpu, cpu_count = kernels.connected_components(mask, connectivity=connectivity)
    gpu, gpu_count = kernels.connected_components(cp.asarray(mask), connectivity=connectivity)
    assert isinstance(gpu, cp.ndarray) and gpu.dtype == cp.int32
    assert gpu_count == cpu_count
    np.testing.assert_array_equal(cp.asnumpy(gpu), cpu)


@pytest.mark.gpu
@pytest.mark.parametrize("connectivity", CONNECTIVITIES)
@pytest.mark.parametrize("case", ["lits117", "lits_small", "totalseg"])
def test_cuda_equals_cpu_real_ct(request, case, connectivity):
    import cupy as cp

    _, labels = request.getfixturevalue(case)
    for mask in (labels >= 1, labels == 2, np.asfortranarray(labels >= 1)):
        cpu, cpu_count = kernels.connected_components(mask, connectivity=connectivity)
        gpu, gpu_count = kernels.connected_components(cp.asarray(mask), connectivity=connectivity)
        assert gpu_count == cpu_count
        np.testing.assert_array_equal(cp.asnumpy(gpu), cpu)


@pytest.mark.gpu
def test_cuda_runs_on_the_current_stream():
    import cupy as cp

    mask = random_mask((16, 32, 64), 0.4, np.bool_, seed=5)
    cpu, _ = kernels.connected_components(mask)
    with cp.cuda.Stream(non_blocking=True):
        gpu, _ = kernels.connected_components(cp.asarray(mask))
        np.testing.assert_array_equal(cp.asnumpy(gpu), cpu)
