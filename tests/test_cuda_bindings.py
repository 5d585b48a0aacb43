"""The CUDA entry points check what they are given: a wrong call is a Python exception, never a crash.

The compiled CUDA bindings take array objects (``__cuda_array_interface__``) and check typestr, shape, strides,
writability and the stream field before they touch the GPU; those checks run on any CUDA build, GPU or not, with
stand-in objects that only carry an interface dict. The Python ops check layout before importing CuPy, and a CPU-only
build says so. The ``gpu`` tests check device residency, the caller's device and producer streams on a real GPU.
"""

from __future__ import annotations

import numpy as np
import pytest
from resunet_trt import _core, kernels

needs_cuda_build = pytest.mark.skipif(not _core.built_with_cuda, reason="resunet_trt was built without CUDA")

_FAKE_PTR = 0x7F00_0000_0000  # never dereferenced: every test below fails before a kernel could run


class FakeCudaArray:
    """An object with nothing but a ``__cuda_array_interface__`` (v3) dict."""

    def __init__(self, shape, typestr, *, strides=None, ptr=_FAKE_PTR, readonly=False, stream=None, **extra):
        self.__cuda_array_interface__ = {
            "shape": tuple(shape),
            "typestr": typestr,
            "data": (ptr, readonly),
            "strides": strides,
            "version": 3,
            "stream": stream,
            **extra,
        }


def _vol(shape=(4, 8, 8), typestr="<i2", **kw):
    return FakeCudaArray(shape, typestr, **kw)


def _out(shape=(4, 3, 8, 8), typestr="<f2", **kw):
    return FakeCudaArray(shape, typestr, **kw)


def _preprocess(volume, out, **kw):
    args = {"lo": -200.0, "hi": 250.0, "context": 3, "start": 0, "stop": 4, "stream": 0, **kw}
    _core.preprocess_cuda(volume, out, **args)


# -- the binding's own checks (any CUDA build) ----------------------------------------------------------------


@needs_cuda_build
@pytest.mark.parametrize(
    "volume, out, error, message",
    [
        (np.zeros((4, 8, 8), np.int16), _out(), TypeError, r"volume must be a CUDA array .*got ndarray"),
        (_vol(), np.zeros((4, 3, 8, 8), np.float16), TypeError, r"out must be a CUDA array"),
        (_vol(typestr="<f8"), _out(), TypeError, r"volume must be int16 or float32 .*'<f8' \(float64\)"),
        (_vol(typestr=">i2"), _out(), TypeError, r"volume must be int16 or float32 \(native byte order\)"),
        (_vol(), _out(typestr="<f4", shape=(4, 3, 8)), ValueError, r"out must be 4-D \(N, K, h, w\), got shape"),
        (_vol(shape=(4, 8)), _out(), ValueError, r"volume must be 3-D \(D, H, W\), got shape \(4, 8\)"),
        (_vol(strides=(128, 32, 2)), _out(), ValueError, r"volume must be C-contiguous: axis 1 has a stride of 32"),
        (_vol(strides=(2, 8, 64)), _out(), ValueError, r"volume must be C-contiguous: axis 2"),
        (_vol(), _out(readonly=True), ValueError, r"out is read-only"),
        (_vol(), _out(shape=(3, 3, 8, 8)), ValueError, r"out must have shape \(4, 3, 8, 8\) .*got \(3, 3, 8, 8\)"),
        (_vol(), _out(shape=(4, 1, 8, 8)), ValueError, r"out must have shape \(4, 3, 8, 8\)"),
        (_vol(stream=0), _out(), ValueError, r"volume.*'stream'\] must be None or a positive stream handle"),
        (_vol(ptr=0), _out(), ValueError, r"volume has a null data pointer but 256 elements"),
        (FakeCudaArray((4, 8, 8), "<i2", data=None), _out(), ValueError, r"volume.*'data'\] must be a"),
    ],
)
def test_preprocess_cuda_binding_rejects(volume, out, error, message):
    with pytest.raises(error, match=message):
        _preprocess(volume, out)


@needs_cuda_build
def test_preprocess_cuda_binding_checks_arguments_before_the_device():
    with pytest.raises(ValueError, match="start/stop must satisfy"):
        _preprocess(_vol(), _out(), start=3, stop=2)
    with pytest.raises(ValueError, match="context must be an odd number"):
        _preprocess(_vol(), _out(shape=(4, 2, 8, 8)), context=2)


@needs_cuda_build
def test_an_interface_that_is_not_a_dict_is_a_type_error():
    bad = FakeCudaArray((4, 8, 8), "<i2")
    bad.__cuda_array_interface__ = [("shape", (4, 8, 8))]
    with pytest.raises(TypeError, match=r"volume.__cuda_array_interface__ must be a dict, got list"):
        _preprocess(bad, _out())
    missing = FakeCudaArray((4, 8, 8), "<i2")
    del missing.__cuda_array_interface__["typestr"]
    with pytest.raises(ValueError, match="volume.__cuda_array_interface__ lacks 'typestr'"):
        _preprocess(missing, _out())


@needs_cuda_build
def test_valid_layout_on_foreign_memory_is_an_error_not_a_crash():
    """Layout right, pointer not GPU memory: without a GPU the runtime cannot answer (RuntimeError with the CUDA
    error string); with one, the pointer is not device memory (ValueError). Nothing is launched either way."""
    with pytest.raises((RuntimeError, ValueError), match=r"volume(: cannot query its pointer| is not GPU memory)"):
        _preprocess(_vol(), _out())


@needs_cuda_build
def test_strides_of_unit_extents_do_not_matter():
    """numpy's rule: an extent of 1 may carry any stride, so such an array is still C-contiguous."""
    vol = _vol(shape=(1, 8, 8), strides=(999, 16, 2))
    with pytest.raises((RuntimeError, ValueError), match=r"volume(: cannot query| is not GPU memory)"):
        _preprocess(vol, _out(shape=(1, 3, 8, 8)), stop=1)


@needs_cuda_build
@pytest.mark.parametrize(
    "logits, labels, message",
    [
        (FakeCudaArray((2, 3, 4, 4), "<i4"), FakeCudaArray((2, 8, 8), "|u1"), r"logits must be float16 or float32"),
        (FakeCudaArray((2, 3, 4, 4), "<f4"), FakeCudaArray((2, 8, 8), "<i4"), r"labels must be uint8"),
        (FakeCudaArray((2, 3, 4, 4), "<f4"), FakeCudaArray((3, 8, 8), "|u1"), r"labels must have shape \(2, 8, 8\)"),
        (FakeCudaArray((2, 3, 4, 4), "<f4"), FakeCudaArray((2, 8, 8), "|u1", readonly=True), "labels is read-only"),
        (FakeCudaArray((2, 300, 4, 4), "<f4"), FakeCudaArray((2, 8, 8), "|u1"), r"1\.\.256 classes"),
    ],
)
def test_logits_to_labels_cuda_binding_rejects(logits, labels, message):
    with pytest.raises((TypeError, ValueError), match=message):
        _core.logits_to_labels_cuda(logits, labels, stream=0)


def _vol3(typestr="|u1", shape=(4, 5, 6), **kw):
    return FakeCudaArray(shape, typestr, **kw)


@needs_cuda_build
@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: _core.connected_components_cuda(_vol3("<i2"), _vol3("<i4"), FakeCudaArray((120,), "<i4"), 26, 0),
         r"mask must be uint8 or bool"),
        (lambda: _core.connected_components_cuda(_vol3(), _vol3("<i4", (4, 5, 7)), FakeCudaArray((120,), "<i4"), 26,
                                                 0), r"labels must have shape \(4, 5, 6\) \(the shape of mask\)"),
        (lambda: _core.connected_components_cuda(_vol3(), _vol3("<i4"), FakeCudaArray((119,), "<i4"), 26, 0),
         r"workspace must hold at least 120 int32, got 119"),
        (lambda: _core.connected_components_cuda(_vol3(), _vol3("<i4"), FakeCudaArray((120,), "<i4"), 8, 0),
         r"connectivity must be 6, 18 or 26"),
        (lambda: _core.postprocess_cuda(_vol3(), _vol3(), FakeCudaArray((120,), "<i4"), 10, 26, 0),
         r"workspace must hold at least 240 int32, got 120"),
        (lambda: _core.postprocess_cuda(_vol3(), _vol3(readonly=True), FakeCudaArray((240,), "<i4"), 10, 26, 0),
         r"out is read-only"),
        (lambda: _core.postprocess_cuda(_vol3(), _vol3(), FakeCudaArray((240,), "<i4"), -1, 26, 0),
         r"min_lesion_voxels"),
        (lambda: _core.tumor_components_cuda(_vol3("|b1"), _vol3("<i4"), FakeCudaArray((120,), "<i4"), 26, 0),
         r"labels must be uint8"),
        (lambda: _core.component_stats_cuda(_vol3("<i4"), 2, FakeCudaArray((2,), "<i8"), FakeCudaArray((2, 4), "<i8"),
                                            FakeCudaArray((2, 3), "<f8"), 0), r"bbox must have shape \(2, 6\)"),
        (lambda: _core.component_stats_cuda(_vol3("<i4"), 2, FakeCudaArray((2,), "<i8"), FakeCudaArray((2, 6), "<i8"),
                                            FakeCudaArray((2, 3), "<f4"), 0), r"centroid must be float64"),
        (lambda: _core.component_stats_cuda(_vol3("<i4"), -1, FakeCudaArray((0,), "<i8"),
                                            FakeCudaArray((0, 6), "<i8"), FakeCudaArray((0, 3), "<f8"), 0),
         r"count must be >= 0"),
    ],
)
def test_component_cuda_bindings_reject(call, message):
    with pytest.raises((TypeError, ValueError), match=message):
        call()


@needs_cuda_build
def test_cuda_bindings_refuse_raw_integers():
    """The old calling convention (pointers as ints) is a TypeError, not a read of whatever lies at that address."""
    with pytest.raises(TypeError, match="mask must be a CUDA array"):
        _core.connected_components_cuda(_FAKE_PTR, _vol3("<i4"), FakeCudaArray((120,), "<i4"), 26, 0)


# -- the Python ops: layout checked before CuPy, CPU-only builds say so ----------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda: kernels.preprocess(_vol()),
        lambda: kernels.logits_to_labels(FakeCudaArray((2, 3, 4, 4), "<f4"), out_size=(8, 8)),
        lambda: kernels.connected_components(_vol3()),
        lambda: kernels.postprocess(_vol3()),
        lambda: kernels.lesion_stats(_vol3()),
    ],
)
def test_cpu_only_build_says_so(monkeypatch, call):
    monkeypatch.setattr(_core, "built_with_cuda", False)
    with pytest.raises(RuntimeError, match="got a CUDA array but resunet_trt was built without CUDA"):
        call()


@needs_cuda_build
@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: kernels.preprocess(_vol(shape=(4, 8))), ValueError, r"volume must be 3-D \(D, H, W\)"),
        (lambda: kernels.preprocess(_vol(typestr="<f8")), TypeError, r"volume must be int16 or float32, got float64"),
        (lambda: kernels.logits_to_labels(FakeCudaArray((2, 3, 4), "<f4"), out_size=(8, 8)), ValueError,
         r"logits must be 4-D"),
        (lambda: kernels.connected_components(_vol3("<i4")), TypeError, r"mask must be bool or uint8, got int32"),
        (lambda: kernels.postprocess(_vol3(shape=(4, 5))), ValueError, r"labels must be a 3-D \(D, H, W\) array"),
        (lambda: kernels.lesion_stats(_vol3("|b1")), TypeError, r"labels must be uint8"),
    ],
)
def test_python_ops_check_cuda_layout_first(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_malformed_interface_is_a_type_error():
    bad = FakeCudaArray((4, 8, 8), "not a dtype")
    with pytest.raises(TypeError, match="volume: malformed __cuda_array_interface__"):
        kernels.preprocess(bad)


# -- on a GPU --------------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_host_memory_behind_an_interface_is_refused():
    host = np.zeros((4, 8, 8), np.int16)
    fake = _vol(ptr=host.ctypes.data)
    import cupy as cp

    out = cp.empty((4, 3, 8, 8), cp.float16)
    with pytest.raises(ValueError, match="volume is not GPU memory"):
        _preprocess(fake, out)


@pytest.mark.gpu
def test_array_on_another_device_is_refused_by_the_binding_and_entered_by_the_op():
    import cupy as cp

    if cp.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two CUDA devices")
    rng = np.random.default_rng(0)
    vol = rng.integers(-1000, 1000, (4, 16, 16)).astype(np.int16)
    with cp.cuda.Device(1):
        on1 = cp.asarray(vol)
    with cp.cuda.Device(0):
        out = cp.empty((4, 3, 8, 8), cp.float16)
        with pytest.raises(ValueError, match="volume lives on CUDA device 1 but the current device is 0"):
            _preprocess(on1, out, stream=cp.cuda.get_current_stream().ptr)
        got = kernels.preprocess(on1, out_size=(8, 8))  # the op enters device 1 itself
        labels, count = kernels.connected_components(on1 > 0)
    assert got.device.id == 1 and labels.device.id == 1
    np.testing.assert_array_equal(cp.asnumpy(got), kernels.preprocess(vol, out_size=(8, 8)))
    ref_labels, ref_count = kernels.connected_components(vol > 0)
    assert count == ref_count
    np.testing.assert_array_equal(cp.asnumpy(labels), ref_labels)


@pytest.mark.gpu
def test_torch_tensor_written_on_a_side_stream_is_read_after_it_is_complete():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA")
    import cupy as cp

    rng = np.random.default_rng(1)
    ref = rng.integers(-1000, 1000, (64, 256, 256)).astype(np.int16)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        t = torch.zeros(ref.shape, dtype=torch.int16, device="cuda")
        torch.cuda._sleep(50_000_000)  # keep the side stream busy so an unordered read would see zeros
        t.copy_(torch.from_numpy(ref).pin_memory(), non_blocking=True)
        # Inside the block the tensor's interface names `side`; the op's stream (CuPy's) waits for it.
        got = kernels.preprocess(t, out_size=(128, 128))
        labels, count = kernels.connected_components(t > 0)
    expected = kernels.preprocess(ref, out_size=(128, 128))
    np.testing.assert_array_equal(cp.asnumpy(got), expected)
    ref_labels, ref_count = kernels.connected_components(ref > 0)
    assert count == ref_count
    np.testing.assert_array_equal(cp.asnumpy(labels), ref_labels)


@pytest.mark.gpu
@pytest.mark.parametrize("order", ["C", "F"])
def test_any_memory_order_gives_the_cpu_result(order):
    import cupy as cp

    rng = np.random.default_rng(2)
    vol = rng.integers(-1000, 1000, (6, 20, 24)).astype(np.int16)
    gpu = cp.asarray(vol, order=order)
    np.testing.assert_array_equal(cp.asnumpy(kernels.preprocess(gpu, out_size=(16, 16))),
                                  kernels.preprocess(vol, out_size=(16, 16)))
    labels = (vol > 200).astype(np.uint8) + (vol > 700)
    np.testing.assert_array_equal(cp.asnumpy(kernels.postprocess(cp.asarray(labels, order=order))),
                                  kernels.postprocess(labels))
