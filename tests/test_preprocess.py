"""preprocess against an independent reference: numpy clip/scale + torch bilinear interpolate + index gather."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
from resunet_trt import _core
from resunet_trt.kernels import PlaneMapping, logits_to_labels, plane_mapping, preprocess

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


# ---------------------------------------------------------------- general mapping: step, origin, slice_step


def axis_matrix(n_out, n_in, step, origin):
    """float64 (n_out, n_in) linear-interpolation matrix of one axis under the general mapping.

    Output pixel y samples input coordinate (y + 0.5) * step + origin - 0.5, computed in float32 as the
    kernels do (so both sides agree on which pixels fall outside); zero rows outside [-0.5, n_in - 0.5],
    else clamp to [0, n_in - 1] and split the weight between the two neighbours.
    """
    f32 = np.float32
    src = (np.arange(n_out, dtype=f32) + f32(0.5)) * f32(step) + f32(origin) - f32(0.5)
    m = np.zeros((n_out, n_in))
    for y, c in enumerate(src.astype(np.float64)):
        if c < -0.5 or c > n_in - 0.5:
            continue
        c = min(max(c, 0.0), n_in - 1.0)
        i0 = int(np.floor(c))
        i1 = min(i0 + 1, n_in - 1)
        m[y, i0] += 1.0 - (c - i0)
        m[y, i1] += c - i0
    return m


def reference_general(
    volume, *, window=WINDOW, out_size, context, step, origin, slice_step, start=0, stop=None
):
    """float64 (stop - start, K, h, w) of the general mapping: separable matrices and a linear slice blend."""
    lo, hi = window
    depth, height, width = volume.shape
    stop = depth if stop is None else stop
    norm = (np.clip(volume.astype(np.float64), lo, hi) - lo) / (hi - lo)
    my = axis_matrix(out_size[0], height, step[0], origin[0])
    mx = axis_matrix(out_size[1], width, step[1], origin[1])
    planes = my @ norm @ mx.T  # (D, h, w)
    out = np.empty((stop - start, context) + tuple(out_size))
    for i in range(stop - start):
        for j in range(context):
            z = min(max(start + i + (j - context // 2) * slice_step, 0.0), depth - 1.0)
            z0 = int(np.floor(z))
            f = z - z0
            out[i, j] = planes[z0] if f == 0 else (1 - f) * planes[z0] + f * planes[z0 + 1]
    return out


def assert_close_general(out, ref, dtype):
    assert out.dtype == np.dtype(dtype)
    assert out.shape == ref.shape
    if dtype == "float32":
        np.testing.assert_allclose(out.astype(np.float64), ref, rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_allclose(out.astype(np.float64), ref, rtol=0, atol=1e-3)


MAPPINGS = {
    # name: (volume shape, out_size, step (y, x), origin (y, x))
    "downsample": ((7, 40, 52), (16, 20), (2.5, 2.6), (0.0, 0.0)),
    "upsample": ((6, 11, 9), (30, 26), (0.37, 0.35), (0.2, -0.1)),
    "pad": ((5, 20, 16), (32, 32), (0.9, 1.1), (-5.3, -9.7)),  # output larger than the image
    "crop": ((5, 48, 40), (12, 10), (1.5, 1.25), (10.0, 8.4)),  # a window inside the image
    "mixed": ((6, 30, 70), (24, 24), (0.8, 3.1), (4.0, -2.2)),  # crop in y, pad in x
}
SLICES = {
    # name: (context, slice_step, start, stop)
    "k1": (1, 1.0, 0, None),
    "k3-step0.4": (3, 0.4, 0, None),
    "k5-step1.7": (5, 1.7, 1, 4),
    "k3-step3": (3, 3.0, 0, None),
    "k5-step1": (5, 1.0, 2, None),
}


@pytest.mark.parametrize("out_dtype", ["float32", "float16"])
@pytest.mark.parametrize("in_dtype", [np.int16, np.float32])
@pytest.mark.parametrize("slices", list(SLICES))
@pytest.mark.parametrize("mapping", list(MAPPINGS))
def test_general_mapping_matches_numpy_reference(mapping, slices, in_dtype, out_dtype):
    shape, out_size, step, origin = MAPPINGS[mapping]
    context, slice_step, start, stop = SLICES[slices]
    vol = random_hu(shape, in_dtype, seed=len(mapping) + context)
    kwargs = dict(out_size=out_size, context=context, step=step, origin=origin, slice_step=slice_step)
    out = preprocess(vol, dtype=out_dtype, start=start, stop=stop, **kwargs)
    assert_close_general(out, reference_general(vol, start=start, stop=stop, **kwargs), out_dtype)


def test_padding_is_exactly_zero_and_the_inside_is_not():
    vol = np.full((2, 10, 10), 1000, np.int16)  # bright everywhere: only padding can be 0
    out = preprocess(vol, out_size=(20, 20), step=(1.0, 1.0), origin=(-5.0, -5.0), context=1, dtype="float32")
    inside = np.zeros((20, 20), bool)
    inside[5:15, 5:15] = True  # output centre y + 0.5 - 5.5 in [-0.5, 9.5]
    assert (out[:, 0][:, ~inside] == 0.0).all()
    assert (out[:, 0][:, inside] == 1.0).all()


def test_default_mapping_passed_explicitly_is_bit_identical():
    vol = random_hu((5, 37, 53), np.int16, seed=31)
    for out_size in [(20, 28), (64, 80)]:
        default = preprocess(vol, out_size=out_size, dtype="float32")
        step = (37 / out_size[0], 53 / out_size[1])
        explicit = preprocess(
            vol, out_size=out_size, step=step, origin=(0.0, 0.0), slice_step=1.0, dtype="float32"
        )
        np.testing.assert_array_equal(explicit.view(np.uint32), default.view(np.uint32))
        assert_close(default, reference(vol, out_size=out_size), "float32")


@pytest.mark.parametrize("slice_step", [2.0, 3.0])
def test_integral_slice_step_channels_are_whole_slices(slice_step):
    vol = random_hu((9, 14, 12), np.int16, seed=37)
    kwargs = dict(out_size=(10, 9), step=(1.3, 1.2), origin=(0.5, -0.5), dtype="float32")
    out = preprocess(vol, context=5, slice_step=slice_step, **kwargs)
    single = preprocess(vol, context=1, **kwargs)[:, 0]
    for i in range(9):
        for j in range(5):
            z = min(max(int(i + (j - 2) * slice_step), 0), 8)
            np.testing.assert_array_equal(out[i, j], single[z])


def test_fractional_slice_step_blends_whole_slices():
    vol = random_hu((6, 12, 12), np.float32, seed=41)
    out = preprocess(vol, out_size=(6, 6), context=3, slice_step=0.25, dtype="float32")
    single = preprocess(vol, out_size=(6, 6), context=1, dtype="float32")[:, 0].astype(np.float64)
    # Output slice 3, channel 0 samples z = 2.75: a quarter of slice 2 and three quarters of slice 3.
    np.testing.assert_allclose(out[3, 0], 0.25 * single[2] + 0.75 * single[3], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(out[3, 1], single[3].astype(np.float32))


def test_non_finite_outside_a_crop_is_still_rejected():
    vol = random_hu((3, 30, 30), np.float32)
    vol[1, 29, 29] = np.nan  # the crop below reads rows and columns 10..20 only
    with pytest.raises(ValueError, match="volume.*slice 1"):
        preprocess(vol, out_size=(10, 10), step=(1.0, 1.0), origin=(10.0, 10.0))


def test_non_finite_between_coarse_context_slices_is_rejected():
    vol = random_hu((9, 8, 8), np.float32)
    vol[5] = np.inf  # slice_step 3 around slice 4 reads slices 1, 4 and 7: 5 lies in the slab between them
    with pytest.raises(ValueError, match="volume.*slice 5"):
        preprocess(vol, out_size=(4, 4), context=3, slice_step=3.0, start=4, stop=5)
    vol[5] = 0.0
    vol[8] = np.nan  # beyond the last slice read
    assert np.isfinite(preprocess(vol, out_size=(4, 4), context=3, slice_step=3.0, start=4, stop=5)).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"step": (0.0, 1.0)}, ValueError, "step must be positive"),
        ({"step": (1.0, -2.0)}, ValueError, "step must be positive"),
        ({"step": (1e-50, 1.0)}, ValueError, "step must be positive"),
        ({"step": (float("nan"), 1.0)}, ValueError, "step must be finite"),
        ({"step": (1.0, float("inf"))}, ValueError, "step must be finite"),
        ({"step": (1.0,)}, TypeError, "step must be a pair"),
        ({"step": 2.0}, TypeError, "step must be a pair"),
        ({"step": ("a", 1.0)}, TypeError, "step must be a pair"),
        ({"origin": (0.0, float("nan"))}, ValueError, "origin must be finite"),
        ({"origin": (1e40, 0.0)}, ValueError, "origin must be finite"),
        ({"origin": (0.0, 0.0, 0.0)}, TypeError, "origin must be a pair"),
        ({"slice_step": 0.0}, ValueError, "slice_step must be > 0"),
        ({"slice_step": -1.0}, ValueError, "slice_step must be > 0"),
        ({"slice_step": float("nan")}, ValueError, "slice_step must be finite"),
        ({"slice_step": "1"}, TypeError, "slice_step must be a number"),
        ({"slice_step": True}, TypeError, "slice_step must be a number"),
    ],
)
def test_bad_mapping_names_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        preprocess(VOL, out_size=(4, 4), **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"origin_y": 1.0}, "origin needs a step"),
        ({"step_x": -1.0}, "step must be finite and positive"),
        ({"step_y": float("nan")}, "step must be finite and positive"),
        ({"slice_step": 0.0}, "slice_step must be finite and > 0"),
    ],
)
def test_binding_checks_the_mapping(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _core.preprocess_cpu(np.zeros((4, 8, 8), np.int16), -200.0, 250.0, 4, 4, 3, "float16", 0, 4, **kwargs)


# ---------------------------------------------------------------- plane_mapping


@pytest.mark.parametrize(
    ("shape", "spacing", "pixel_mm", "min_size", "divisor", "out_size", "step", "origin"),
    [
        # 512 * 0.8 / 1.6 = 256 pixels exactly: the plain 2x resize.
        ((512, 512), (0.8, 0.8), 1.6, 256, 16, (256, 256), (2.0, 2.0), (0.0, 0.0)),
        # y: 512 * 0.7 / 1.6 = 224 (a multiple of 32); x: 400 * 0.9 / 1.6 = 225 -> 256.
        ((512, 400), (0.7, 0.9), 1.6, 64, 32, (224, 256), (1.6 / 0.7, 1.6 / 0.9), (0.0, 200 - 128 / 0.5625)),
        # A small plane pads up to min_size: y 100 -> 62.5 -> 64 < 128; origin = 50 - 64 * 1.6.
        ((100, 80), (1.0, 1.0), 1.6, 128, 16, (128, 128), (1.6, 1.6), (50 - 64 * 1.6, 40 - 64 * 1.6)),
        # 512 * 0.6 / 1.2 is 256.00000000000006 in float64: still 256 pixels, not 272.
        ((512, 512), (0.6, 0.6), 1.2, 16, 16, (256, 256), (2.0, 2.0), (0.0, 0.0)),
        # 3 mm slices to 1.6 mm pixels: 101 * 3 / 1.6 = 189.4 -> 190 -> 192.
        ((101, 122), (3.0, 3.0), 1.6, 16, 16, (192, 240), (1.6 / 3, 1.6 / 3), (50.5 - 51.2, 61 - 64.0)),
        # min_size is rounded up to the divisor too.
        ((10, 10), (1.0, 1.0), 1.0, 100, 16, (112, 112), (1.0, 1.0), (5 - 56.0, 5 - 56.0)),
        # pixel_mm None: the plain resize to min_size.
        ((300, 200), (0.7, 0.7), None, 256, 16, (256, 256), (300 / 256, 200 / 256), (0.0, 0.0)),
    ],
)
def test_plane_mapping_hand_computed(shape, spacing, pixel_mm, min_size, divisor, out_size, step, origin):
    m = plane_mapping(shape, spacing, pixel_mm, min_size=min_size, divisor=divisor)
    assert isinstance(m, PlaneMapping)
    assert m.out_size == out_size
    assert m.step == pytest.approx(step, rel=1e-12)
    assert m.origin == pytest.approx(origin, rel=1e-12, abs=1e-9)
    if pixel_mm is not None:  # the centres coincide: output coordinate h / 2 maps to input H / 2
        for n, size, st, org in zip(shape, m.out_size, m.step, m.origin):
            assert size / 2 * st + org == pytest.approx(n / 2, abs=1e-9)


def test_plane_mapping_is_frozen():
    m = plane_mapping((64, 64), (1.0, 1.0), 2.0, min_size=16, divisor=16)
    with pytest.raises(AttributeError):
        m.step = (1.0, 1.0)  # type: ignore[misc]


def test_plane_mapping_of_the_plain_resize_is_the_default_bit_for_bit():
    vol = random_hu((3, 48, 40), np.int16, seed=43)
    m = plane_mapping(vol.shape[1:], (0.9, 0.9), None, min_size=32, divisor=16)
    out = preprocess(vol, out_size=m.out_size, step=m.step, origin=m.origin, dtype="float16")
    np.testing.assert_array_equal(out.view(np.uint16), preprocess(vol, out_size=(32, 32)).view(np.uint16))


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        (((0, 64), (1.0, 1.0), 1.6), {}, ValueError, "shape_hw must be positive"),
        (((64,), (1.0, 1.0), 1.6), {}, TypeError, "shape_hw must be a pair"),
        (((64.0, 64), (1.0, 1.0), 1.6), {}, TypeError, "shape_hw must be an int"),
        (((64, 64), (0.0, 1.0), 1.6), {}, ValueError, "spacing_yx must be > 0"),
        (((64, 64), (1.0, float("nan")), 1.6), {}, ValueError, "spacing_yx must be finite"),
        (((64, 64), 1.0, 1.6), {}, TypeError, "spacing_yx must be a pair"),
        (((64, 64), (1.0, 1.0), 0.0), {}, ValueError, "pixel_mm must be > 0"),
        (((64, 64), (1.0, 1.0), float("inf")), {}, ValueError, "pixel_mm must be finite"),
        (((64, 64), (1.0, 1.0), "1.6"), {}, TypeError, "pixel_mm must be a number"),
        (((64, 64), (1.0, 1.0), 1.6), {"min_size": 0}, ValueError, "min_size must be >= 1"),
        (((64, 64), (1.0, 1.0), 1.6), {"divisor": 0}, ValueError, "divisor must be >= 1"),
        (((64, 64), (1.0, 1.0), 1.6), {"divisor": 16.0}, TypeError, "divisor must be an int"),
    ],
)
def test_plane_mapping_bad_arguments(args, kwargs, error, match):
    kw = {"min_size": 64, "divisor": 16, **kwargs}
    with pytest.raises(error, match=match):
        plane_mapping(*args, **kw)


# ---------------------------------------------------------------- round trip on real CT


def _spacing_yx(data_dir, name):
    import nibabel as nib

    zooms = nib.load(data_dir / name / "ct.nii.gz").header.get_zooms()  # (x, y, z); arrays are (D, H, W)
    return float(zooms[1]), float(zooms[0]), float(zooms[2])


# min_size pads both planes (origin != 0), so the decode must undo an offset as well as a scale.
@pytest.mark.parametrize(("case", "min_size"), [("lits117_roi128", 96), ("totalseg_abdomen3mm", 256)])
def test_round_trip_at_1p6_mm_restores_the_labels(request, data_dir, case, min_size):
    hu, lab = request.getfixturevalue({"lits117_roi128": "lits117", "totalseg_abdomen3mm": "totalseg"}[case])
    dy, dx, dz = _spacing_yx(data_dir, case)
    m = plane_mapping(lab.shape[1:], (dy, dx), 1.6, min_size=min_size, divisor=16)
    mapping = {"out_size": m.out_size, "step": m.step, "origin": m.origin}

    # The CT itself: the network input of a slab equals the reference (context 3 slices 4.8 mm apart).
    slab = {"context": 3, "slice_step": 4.8 / dz, "start": hu.shape[0] // 2, "stop": hu.shape[0] // 2 + 4}
    net = preprocess(hu, dtype="float32", **mapping, **slab)
    assert_close_general(net, reference_general(hu, **mapping, **slab), "float32")

    # One-hot "logits" of the labels, resampled onto the network plane the same way, decoded back.
    classes = int(lab.max()) + 1
    onehot = [(lab == c).astype(np.float32) for c in range(classes)]
    planes = [preprocess(o, window=(0.0, 1.0), context=1, dtype="float32", **mapping)[:, 0] for o in onehot]
    logits = np.ascontiguousarray(np.stack(planes, axis=1))  # (D, C, h, w)
    back = logits_to_labels(logits, out_size=lab.shape[1:], step=m.step, origin=m.origin)
    assert (back == lab).mean() >= 0.99
    liver = lab > 0
    dice = 2 * (liver & (back > 0)).sum() / (liver.sum() + (back > 0).sum())
    assert dice >= 0.97
    # The inverse mapping is what puts them back: decoding as a plain resize misplaces them.
    plain = logits_to_labels(logits, out_size=lab.shape[1:])
    assert (plain == lab).mean() < (back == lab).mean() - 0.01


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


@pytest.mark.gpu
@pytest.mark.parametrize("out_dtype", ["float16", "float32"])
@pytest.mark.parametrize("in_dtype", [np.int16, np.float32])
@pytest.mark.parametrize("slices", list(SLICES))
@pytest.mark.parametrize("mapping", list(MAPPINGS))
def test_gpu_general_mapping_matches_cpu(mapping, slices, in_dtype, out_dtype):
    shape, out_size, step, origin = MAPPINGS[mapping]
    context, slice_step, start, stop = SLICES[slices]
    vol = random_hu((shape[0] + 14,) + shape[1:], in_dtype, seed=47)  # more slices than one chunk
    _gpu_vs_cpu(
        vol, out_size=out_size, step=step, origin=origin, context=context, slice_step=slice_step, start=start,
        stop=stop, dtype=out_dtype,
    )


@pytest.mark.gpu
@pytest.mark.parametrize("slice_step", [0.4, 1.7, 3.0])
def test_gpu_real_ct_general_mapping_matches_cpu(lits117, slice_step):
    hu, _ = lits117
    m = plane_mapping(hu.shape[1:], (1.0, 1.0), 1.6, min_size=96, divisor=16)
    _gpu_vs_cpu(hu, out_size=m.out_size, step=m.step, origin=m.origin, context=5, slice_step=slice_step)


@pytest.mark.gpu
def test_gpu_non_finite_between_coarse_context_slices_is_rejected():
    import cupy as cp

    vol = random_hu((9, 8, 8), np.float32)
    vol[5] = np.inf
    with pytest.raises(ValueError, match="volume"):
        preprocess(cp.asarray(vol), out_size=(4, 4), context=3, slice_step=3.0, start=4, stop=5)
