"""Property tests: the compiled kernels against independent references on random shapes, dtypes and memory orders.

Hypothesis draws the shapes, dtypes, layouts and a seed; numpy draws the values from the seed (fast, and a failing
case shrinks to a small shape). References: numpy clip/scale + ``torch.nn.functional.interpolate`` for
``preprocess``, torch interpolate + argmax for ``logits_to_labels``, cc3d and ``scipy.ndimage.label`` for
``connected_components``. Only the default mapping arguments are exercised here (``step``/``origin`` None,
``slice_step`` 1). Each test runs on the CPU, and on the GPU too (marker ``gpu``) when there is one.
"""

from __future__ import annotations

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
torch = pytest.importorskip("torch")
cc3d = pytest.importorskip("cc3d")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from resunet_trt import kernels  # noqa: E402
from scipy import ndimage  # noqa: E402

F = torch.nn.functional

# Few examples per test: the whole file stays well under 30 s on a 2-core CPU.
PROPERTY = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
LAYOUTS = ("C", "F", "strided", "transposed")


def _layout(a: np.ndarray, order: str) -> np.ndarray:
    """The same values in another memory order: Fortran, a strided view into a larger array, or a transposed
    copy seen through a transpose (C-contiguous in a different axis order)."""
    if order == "F":
        out = np.asfortranarray(a)
    elif order == "strided":
        big = np.zeros(tuple(2 * s for s in a.shape), a.dtype)
        big[tuple(slice(None, None, 2) for _ in a.shape)] = a
        out = big[tuple(slice(None, None, 2) for _ in a.shape)]
    elif order == "transposed":
        axes = tuple(reversed(range(a.ndim)))
        out = np.ascontiguousarray(a.transpose(axes)).transpose(axes)
    else:
        out = np.ascontiguousarray(a)
    np.testing.assert_array_equal(out, a)
    return out


def _to_device(a: np.ndarray, device: str):
    if device == "cpu":
        return a
    import cupy

    return cupy.asarray(a)


def _to_host(a) -> np.ndarray:
    return a.get() if hasattr(a, "get") else np.asarray(a)


# ---- preprocess -----------------------------------------------------------------------------------------------


def preprocess_reference(volume: np.ndarray, window, out_size, context: int) -> np.ndarray:
    """float64 (D, K, h, w): clip to the window and scale to [0, 1] (numpy), resample each plane with torch's
    bilinear interpolate (half-pixel centres), stack K neighbouring slices with the edge slices repeated."""
    lo, hi = window
    norm = (np.clip(volume.astype(np.float64), lo, hi) - lo) / (hi - lo)
    planes = F.interpolate(torch.from_numpy(norm)[:, None], size=tuple(out_size), mode="bilinear",
                           align_corners=False)[:, 0].numpy()
    depth = volume.shape[0]
    idx = np.clip(np.arange(depth)[:, None] + np.arange(context)[None, :] - context // 2, 0, depth - 1)
    return planes[idx]


@pytest.mark.parametrize("device", DEVICES)
@PROPERTY
@given(
    shape=st.tuples(st.integers(1, 6), st.integers(1, 40), st.integers(1, 40)),
    out_size=st.tuples(st.integers(1, 48), st.integers(1, 48)),
    context=st.sampled_from([1, 3, 5, 7]),
    in_dtype=st.sampled_from(["int16", "float32"]),
    out_dtype=st.sampled_from(["float32", "float16"]),
    order=st.sampled_from(LAYOUTS),
    window=st.tuples(st.integers(-1200, 400), st.integers(1, 1500)).map(lambda t: (float(t[0]), float(t[0] + t[1]))),
    seed=st.integers(0, 2**32 - 1),
)
def test_preprocess_matches_clip_scale_and_torch_interpolate(
    device, shape, out_size, context, in_dtype, out_dtype, order, window, seed
):
    rng = np.random.default_rng(seed)
    hu = rng.integers(-1500, 2000, size=shape)
    volume = (hu + rng.random(shape)).astype(np.float32) if in_dtype == "float32" else hu.astype(np.int16)
    out = kernels.preprocess(_to_device(_layout(volume, order), device), window=window, out_size=out_size,
                             context=context, dtype=out_dtype)
    out = _to_host(out)
    ref = preprocess_reference(volume, window, out_size, context)
    assert out.dtype == np.dtype(out_dtype) and out.shape == ref.shape == (shape[0], context, *out_size)
    # float32: a few ulp of the [0, 1] range; float16: half an fp16 ulp near 1 plus that
    atol = 1e-5 if out_dtype == "float32" else 5e-4 + 1e-5
    np.testing.assert_allclose(out.astype(np.float64), ref, rtol=0, atol=atol)
    assert out.min() >= 0.0 and out.max() <= 1.0


# ---- logits_to_labels -----------------------------------------------------------------------------------------


def labels_reference(logits: np.ndarray, out_size) -> tuple[np.ndarray, np.ndarray]:
    """(labels uint8 (N, H, W), margin (N, H, W)): torch bilinear interpolate in float64, numpy argmax (ties to
    the lowest class), and the gap between the best and second-best class (inf with one class)."""
    up = F.interpolate(torch.from_numpy(logits.astype(np.float64)), size=tuple(out_size), mode="bilinear",
                       align_corners=False).numpy()
    labels = np.argmax(up, axis=1).astype(np.uint8)
    if up.shape[1] == 1:
        return labels, np.full(labels.shape, np.inf)
    top2 = np.sort(up, axis=1)[:, -2:]
    return labels, top2[:, 1] - top2[:, 0]


@pytest.mark.parametrize("device", DEVICES)
@PROPERTY
@given(
    n=st.integers(1, 3),
    classes=st.integers(1, 6),
    size=st.tuples(st.integers(1, 24), st.integers(1, 24)),
    out_size=st.one_of(st.none(), st.tuples(st.integers(1, 64), st.integers(1, 64))),
    dtype=st.sampled_from(["float32", "float16"]),
    order=st.sampled_from(LAYOUTS),
    integer_logits=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_logits_to_labels_matches_torch_interpolate_and_argmax(
    device, n, classes, size, out_size, dtype, order, integer_logits, seed
):
    out_size = size if out_size is None else out_size  # None: the same size, no blending at all
    rng = np.random.default_rng(seed)
    shape = (n, classes, *size)
    # integer logits make exact ties common (ties go to the lowest class); real-valued ones exercise the blend
    values = rng.integers(-3, 4, size=shape) if integer_logits else rng.normal(0.0, 4.0, size=shape)
    logits = values.astype(dtype)
    labels = _to_host(kernels.logits_to_labels(_to_device(_layout(logits, order), device), out_size=out_size))
    ref, margin = labels_reference(logits, out_size)
    assert labels.dtype == np.uint8 and labels.shape == ref.shape == (n, *out_size)
    # the kernel blends in float32: where two classes are within float32 rounding of each other either may win
    decided = margin > 1e-5 * (1.0 + np.abs(logits.astype(np.float64)).max())
    np.testing.assert_array_equal(labels[decided], ref[decided])
    ties = margin == 0
    if integer_logits and size == tuple(out_size):  # same size: no blending, exact ties go to the lowest class
        np.testing.assert_array_equal(labels[ties], ref[ties])
    assert labels.max(initial=0) < classes


# ---- connected_components -------------------------------------------------------------------------------------

RANK = {6: 1, 18: 2, 26: 3}


def raster_relabel(labels: np.ndarray) -> np.ndarray:
    """Renumber components 1..n in C-order raster order of their first voxel (0 stays background)."""
    flat = labels.ravel()
    values, first = np.unique(flat, return_index=True)
    order = values[np.argsort(first)]
    order = order[order != 0]
    lut = np.zeros(int(flat.max(initial=0)) + 1, np.int64)
    lut[order] = np.arange(1, len(order) + 1)
    return lut[labels]


@pytest.mark.parametrize("device", DEVICES)
@PROPERTY
@given(
    shape=st.tuples(st.integers(1, 12), st.integers(1, 20), st.integers(1, 90)),
    density=st.floats(0.0, 1.0),
    connectivity=st.sampled_from([6, 18, 26]),
    dtype=st.sampled_from(["bool", "uint8"]),
    order=st.sampled_from(LAYOUTS),
    seed=st.integers(0, 2**32 - 1),
)
def test_connected_components_match_cc3d_and_scipy(device, shape, density, connectivity, dtype, order, seed):
    rng = np.random.default_rng(seed)
    fg = rng.random(shape) < density
    # uint8 masks: any nonzero value is foreground
    mask = fg if dtype == "bool" else (fg * rng.integers(1, 256, size=shape)).astype(np.uint8)
    labels, count = kernels.connected_components(_to_device(_layout(mask, order), device),
                                                 connectivity=connectivity)
    labels = _to_host(labels)
    assert labels.dtype == np.int32 and labels.shape == shape
    # components are numbered in raster order of their first voxel: renumbering that way changes nothing
    np.testing.assert_array_equal(labels, raster_relabel(labels))
    ref_scipy, n_scipy = ndimage.label(fg, structure=ndimage.generate_binary_structure(3, RANK[connectivity]))
    assert count == n_scipy == int(labels.max(initial=0))
    np.testing.assert_array_equal(labels, raster_relabel(ref_scipy))
    ref_cc3d = cc3d.connected_components(np.ascontiguousarray(fg), connectivity=connectivity)
    np.testing.assert_array_equal(labels, raster_relabel(ref_cc3d))
