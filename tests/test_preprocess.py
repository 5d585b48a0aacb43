"""preprocess against an independent reference: numpy clip/scale + torch bilinear interpolate + index gather."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
from resunet_trt import _core
from resunet_trt.kernels import preprocess

torch = pytest.importorskip("torch")
F = torch.nn.functional

WINDOW = (-200.0, 250.0)


def reference(volume, *, window=WINDOW, out_size=(256, 256), context=3, start=0, stop=None):
    """float64 (stop - start, K, h, w): clip, scale, torch interpolate (align_corners=False), stack."""
    lo, hi = window
    depth = volume.shape[0]
    stop = depth if stop is None else stop
    norm = (np.clip(volume.astype(np.float64), lo, hi) - lo) / (hi - lo)
    planes = F.interpolate(
        torch.from_numpy(norm)[:, None], size=tuple(out_size), mode="bilinear", align_corners=False
    )
    planes = planes[:, 0].numpy()
    idx = np.clip(np.arange(start, stop)[:, None] + np.arange(context)[None, :] - context // 2, 0, depth - 1)
    return planes[idx]


def random_hu(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    hu = rng.integers(-1100, 1500, size=shape)
    if dtype == np.float32:
        return (hu + rng.random(shape)).astype(np.float32)
    return hu.astype(np.int16)


def assert_close(out, ref, dtype):
    assert out.dtype == np.dtype(dtype)
    assert out.shape == ref.shape
    atol = 1e-5 if dtype == "float32" else 1e-3
    np.testing.assert_allclose(out.astype(np.float64), ref, rtol=0, atol=atol)


@pytest.mark.parametrize("out_dtype", ["float32", "float16"])
@pytest.mark.parametrize("in_dtype", [np.int16, np.float32])
@pytest.mark.parametrize(
    ("shape", "out_size"),
    [
        ((5, 40, 56), (20, 28)),  # downsample by 2
        ((4, 13, 9), (32, 24)),  # upsample, odd factors
        ((3, 30, 30), (30, 30)),  # same size
        ((4, 17, 64), (9, 100)),  # non-square, down in H and up in W
        ((3, 64, 48), (10, 7)),  # downsample by more than 2 (rows skipped)
    ],
)
def test_matches_torch_on_random_hu(shape, out_size, in_dtype, out_dtype):
    vol = random_hu(shape, in_dtype)
    out = preprocess(vol, out_size=out_size, dtype=out_dtype)
    assert_close(out, reference(vol, out_size=out_size), out_dtype)


@pytest.mark.parametrize("context", [1, 3, 5, 7])
def test_context_stacks_clamped_neighbours(context):
    vol = random_hu((4, 12, 10), np.int16, seed=context)
    out = preprocess(vol, out_size=(6, 5), context=context, dtype="float32")
    assert out.shape == (4, context, 6, 5)
    assert_close(out, reference(vol, out_size=(6, 5), context=context), "float32")


@pytest.mark.parametrize(("start", "stop"), [(0, None), (2, 5), (0, 1), (5, 6), (3, None)])
@pytest.mark.parametrize("context", [1, 3, 5])
def test_start_stop_selects_output_slices(start, stop, context):
    vol = random_hu((6, 11, 13), np.int16, seed=3)
    out = preprocess(vol, out_size=(8, 9), context=context, start=start, stop=stop, dtype="float32")
    assert_close(out, reference(vol, out_size=(8, 9), context=context, start=start, stop=stop), "float32")


def test_window_is_applied_before_the_resize():
    # 2x2 -> 1x1 averages the four windowed values: [0, 1, 0.5, 1] -> 0.625 (resizing HU first would give
    # mean HU 68.75 -> 0.597).
    vol = np.array([[[-1000, 250], [25, 1000]]], dtype=np.int16)
    out = preprocess(vol, out_size=(1, 1), context=1, dtype="float32")
    assert out.shape == (1, 1, 1, 1)
    assert out[0, 0, 0, 0] == pytest.approx(0.625, abs=1e-7)


@pytest.mark.parametrize("window", [(-200.0, 250.0), (0.0, 80.0), (-1000.0, 3000.0), (-0.5, 0.25)])
def test_other_windows(window):
    vol = random_hu((3, 20, 24), np.float32, seed=5)
    out = preprocess(vol, window=window, out_size=(15, 31), dtype="float32")
    assert_close(out, reference(vol, window=window, out_size=(15, 31)), "float32")


@pytest.mark.parametrize("context", [1, 5])
def test_one_slice_volume_repeats_it_in_every_channel(context):
    vol = random_hu((1, 21, 19), np.int16, seed=7)
    out = preprocess(vol, out_size=(10, 40), context=context, dtype="float32")
    assert out.shape == (1, context, 10, 40)
    assert_close(out, reference(vol, out_size=(10, 40), context=context), "float32")
    for j in range(context):
        np.testing.assert_array_equal(out[0, j], out[0, 0])


@pytest.mark.parametrize(
    ("shape", "out_size"), [((2, 1, 1), (3, 4)), ((2, 5, 7), (1, 1)), ((2, 1, 9), (4, 1))]
)
def test_tiny_planes(shape, out_size):
    vol = random_hu(shape, np.int16, seed=11)
    out = preprocess(vol, out_size=out_size, dtype="float32")
    assert_close(out, reference(vol, out_size=out_size), "float32")


def test_float16_output_rounds_to_nearest_even():
    # Window (0, 1) and no resize make the output the input value itself, so the float16 output must be
    # numpy's correctly rounded float16 of it, including subnormals and ties.
    rng = np.random.default_rng(13)
    values = np.concatenate(
        [
            rng.random(4000, dtype=np.float32),
            rng.random(2000, dtype=np.float32) * np.float32(2**-14),  # float16 subnormal range
            np.float32([0.0, 1.0, 2**-24, 2**-25, 3 * 2**-25, 1 - 2**-12, 0.5 + 2**-12, 0.5 + 3 * 2**-12]),
        ]
    ).astype(np.float32)
    vol = values.reshape(1, 1, -1)
    out = preprocess(vol, window=(0.0, 1.0), out_size=(1, vol.shape[2]), context=1, dtype="float16")
    np.testing.assert_array_equal(out.reshape(-1).view(np.uint16), values.astype(np.float16).view(np.uint16))
    out32 = preprocess(vol, window=(0.0, 1.0), out_size=(1, vol.shape[2]), context=1, dtype="float32")
    np.testing.assert_array_equal(out32.reshape(-1), values)


@pytest.mark.parametrize("dtype", ["float16", np.float16, "float32", np.dtype(np.float32)])
def test_dtype_spellings(dtype):
    out = preprocess(random_hu((2, 6, 6), np.int16), out_size=(3, 3), dtype=dtype)
    assert out.dtype == np.dtype(dtype)


@pytest.mark.parametrize(
    "make",
    [
        lambda v: np.asfortranarray(v),
        lambda v: v[:, ::2, 1::3],
        lambda v: v[::-1],
        lambda v: np.ascontiguousarray(v.transpose(0, 2, 1)).transpose(0, 2, 1),
        lambda v: v.astype(v.dtype.newbyteorder(">")),
    ],
    ids=["fortran", "strided", "reversed", "transposed", "big-endian"],
)
@pytest.mark.parametrize("in_dtype", [np.int16, np.float32])
def test_any_memory_layout(make, in_dtype):
    vol = make(random_hu((4, 18, 21), in_dtype, seed=17))
    out = preprocess(vol, out_size=(7, 12), dtype="float32")
    assert_close(out, reference(np.ascontiguousarray(vol), out_size=(7, 12)), "float32")


def test_cpu_torch_tensor_input():
    vol = random_hu((3, 10, 10), np.int16)
    out = preprocess(torch.from_numpy(vol), out_size=(5, 5), dtype="float32")
    assert_close(out, reference(vol, out_size=(5, 5)), "float32")


def test_real_ct_lits117(lits117):
    hu, _ = lits117
    out = preprocess(hu, out_size=(256, 256), start=40, stop=72, dtype="float32")
    assert_close(out, reference(hu, out_size=(256, 256), start=40, stop=72), "float32")


@pytest.mark.parametrize("out_dtype", ["float16", "float32"])
def test_real_ct_lits_small(lits_small, out_dtype):
    hu, _ = lits_small
    out = preprocess(hu, out_size=(96, 80), context=5, dtype=out_dtype)
    assert_close(out, reference(hu, out_size=(96, 80), context=5), out_dtype)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [(0, 0, 0), (2, 5, 7), (4, 11, 15)])
def test_non_finite_float_volume_is_rejected(bad, where):
    vol = random_hu((5, 12, 16), np.float32)
    vol[where] = bad
    with pytest.raises(ValueError, match=rf"volume.*slice {where[0]}"):
        preprocess(vol, out_size=(6, 8))


def test_non_finite_in_a_row_the_resize_skips_is_rejected():
    vol = random_hu((2, 64, 64), np.float32)
    vol[1, 2, 3] = np.nan  # 64 -> 8 rows reads rows 3-4, 11-12, ...: row 2 is never blended
    with pytest.raises(ValueError, match="volume"):
        preprocess(vol, out_size=(8, 8))


def test_non_finite_outside_the_slices_read_is_ignored():
    vol = random_hu((8, 10, 10), np.float32)
    vol[0] = np.nan
    vol[7] = np.inf
    out = preprocess(vol, out_size=(5, 5), context=3, start=2, stop=6, dtype="float32")
    assert np.isfinite(out).all()
    assert_close(out[:, :], reference(np.nan_to_num(vol), out_size=(5, 5), start=2, stop=6), "float32")


VOL = np.zeros((4, 8, 8), np.int16)


@pytest.mark.parametrize(
    ("volume", "kwargs", "error", "match"),
    [
        (np.zeros((8, 8), np.int16), {}, ValueError, "volume must be 3-D"),
        (np.zeros((2, 4, 8, 8), np.int16), {}, ValueError, "volume must be 3-D"),
        (np.zeros((0, 8, 8), np.int16), {}, ValueError, "volume must not be empty"),
        (np.zeros((4, 0, 8), np.float32), {}, ValueError, "volume must not be empty"),
        (np.zeros((4, 8, 8), np.uint8), {}, TypeError, "volume must be int16 or float32"),
        (np.zeros((4, 8, 8), np.float64), {}, TypeError, "volume must be int16 or float32"),
        (np.zeros((4, 8, 8), np.int32), {}, TypeError, "volume must be int16 or float32"),
        (np.zeros((4, 8, 8), bool), {}, TypeError, "volume must be int16 or float32"),
        (VOL, {"window": (250.0, -200.0)}, ValueError, "window must satisfy lo < hi"),
        (VOL, {"window": (100.0, 100.0)}, ValueError, "window must satisfy lo < hi"),
        (VOL, {"window": (100.0, 100.0 + 1e-9)}, ValueError, "window must satisfy lo < hi"),
        (VOL, {"window": (float("nan"), 100.0)}, ValueError, "window must be finite"),
        (VOL, {"window": (-200.0, float("inf"))}, ValueError, "window must be finite"),
        (VOL, {"window": (-1e39, 0.0)}, ValueError, "window must be finite"),
        (VOL, {"window": (-200.0,)}, TypeError, "window"),
        (VOL, {"window": "wide"}, TypeError, "window"),
        (VOL, {"window": ("a", 1.0)}, TypeError, "window"),
        (VOL, {"context": 2}, ValueError, "context must be an odd number"),
        (VOL, {"context": 0}, ValueError, "context must be an odd number"),
        (VOL, {"context": -3}, ValueError, "context must be an odd number"),
        (VOL, {"context": 3.0}, TypeError, "context must be an int"),
        (VOL, {"out_size": (0, 8)}, ValueError, "out_size must be positive"),
        (VOL, {"out_size": (8, -1)}, ValueError, "out_size must be positive"),
        (VOL, {"out_size": (8,)}, TypeError, "out_size"),
        (VOL, {"out_size": 8}, TypeError, "out_size"),
        (VOL, {"out_size": (8.0, 8)}, TypeError, "out_size"),
        (VOL, {"dtype": "int8"}, ValueError, "dtype must be 'float16' or 'float32'"),
        (VOL, {"dtype": "float64"}, ValueError, "dtype must be 'float16' or 'float32'"),
        (VOL, {"dtype": "half-ish"}, ValueError, "dtype must be 'float16' or 'float32'"),
        (VOL, {"start": -1}, ValueError, "start must satisfy"),
        (VOL, {"start": 4}, ValueError, "start must satisfy"),
        (VOL, {"start": 1.0}, TypeError, "start must be an int"),
        (VOL, {"stop": 0}, ValueError, "stop must satisfy"),
        (VOL, {"stop": 5}, ValueError, "stop must satisfy"),
        (VOL, {"start": 2, "stop": 2}, ValueError, "stop must satisfy"),
        (VOL, {"stop": "end"}, TypeError, "stop must be an int"),
    ],
)
def test_bad_input_names_the_argument(volume, kwargs, error, match):
    with pytest.raises(error, match=match):
        preprocess(volume, **kwargs)


def test_binding_rejects_non_contiguous_volume():
    with pytest.raises(ValueError, match="volume must be C-contiguous"):
        _core.preprocess_cpu(np.zeros((4, 8, 8), np.int16)[:, ::2], -200.0, 250.0, 4, 4, 3, "float16", 0, 4)


class _FakeCudaArray:
    """Looks like a device array to the dispatcher; enough to reach the build check."""

    __cuda_array_interface__: ClassVar[dict] = {
        "shape": (2, 4, 4),
        "typestr": "<i2",
        "data": (0, False),
        "version": 3,
    }


@pytest.mark.skipif(_core.built_with_cuda, reason="this build has CUDA")
def test_cuda_input_on_cpu_only_build_says_so():
    with pytest.raises(RuntimeError, match="built without CUDA"):
        preprocess(_FakeCudaArray())


# ---------------------------------------------------------------- GPU: CUDA == CPU within 1e-3 relative


def _gpu_vs_cpu(vol, **kwargs):
    import cupy as cp

    cpu = preprocess(vol, **kwargs)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        gpu = preprocess(cp.asarray(vol), **kwargs)
    stream.synchronize()
    assert isinstance(gpu, cp.ndarray)
    assert gpu.dtype == cpu.dtype and gpu.shape == cpu.shape
    np.testing.assert_allclose(
        cp.asnumpy(gpu).astype(np.float64), cpu.astype(np.float64), rtol=1e-3, atol=1e-6
    )


@pytest.mark.gpu
@pytest.mark.parametrize("out_dtype", ["float16", "float32"])
@pytest.mark.parametrize("in_dtype", [np.int16, np.float32])
@pytest.mark.parametrize(
    ("shape", "out_size"), [((6, 64, 80), (32, 40)), ((3, 13, 9), (32, 24)), ((1, 1, 1), (3, 5))]
)
def test_gpu_matches_cpu(shape, out_size, in_dtype, out_dtype):
    _gpu_vs_cpu(random_hu(shape, in_dtype, seed=23), out_size=out_size, dtype=out_dtype)


@pytest.mark.gpu
@pytest.mark.parametrize(("context", "start", "stop"), [(1, 0, None), (3, 2, 5), (5, 0, 1), (7, 5, 7)])
def test_gpu_context_and_range_match_cpu(context, start, stop):
    _gpu_vs_cpu(random_hu((7, 20, 24), np.int16), out_size=(16, 16), context=context, start=start, stop=stop)


@pytest.mark.gpu
def test_gpu_real_ct_matches_cpu(lits117):
    hu, _ = lits117
    _gpu_vs_cpu(hu, out_size=(256, 256), dtype="float16")


@pytest.mark.gpu
def test_gpu_non_finite_float_volume_is_rejected():
    import cupy as cp

    vol = random_hu((3, 8, 8), np.float32)
    vol[1, 2, 2] = np.nan
    with pytest.raises(ValueError, match="volume"):
        preprocess(cp.asarray(vol), out_size=(4, 4))
