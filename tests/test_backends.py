"""Backends behind one interface: file type picks the backend, clear errors, same logits as the reference."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
from resunet_trt import backends as B
from resunet_trt.backends.base import parse_device


def _torch_reference(checkpoint, x):
    import torch
    from resunet_trt.model import load_checkpoint

    model, _ = load_checkpoint(checkpoint)
    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module")
def slices(eval_inputs):
    return eval_inputs[50:58].copy()  # eight liver slices


# -- choosing the backend ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, backend",
    [
        ("m.plan", "tensorrt"),
        ("m.engine", "tensorrt"),
        ("m.onnx", "onnxruntime"),
        ("m.int8.onnx", "onnxruntime"),
        ("m.pt", "torch"),
        ("M.PTH", "torch"),
    ],
)
def test_backend_for_path(name, backend):
    assert B.backend_for_path(name) == backend


@pytest.mark.parametrize("name", ["m.h5", "model", "m.onnx.gz"])
def test_backend_for_path_rejects_unknown(name):
    with pytest.raises(ValueError, match=r"\.plan/\.engine .* \.onnx .* \.pt/\.pth"):
        B.backend_for_path(name)


def test_available_backends_are_installed_and_ordered():
    import importlib.util

    names = B.available_backends()
    assert names == [n for n in ("tensorrt", "openvino", "onnxruntime", "torch") if n in names]
    for n in ("openvino", "onnxruntime", "torch"):
        assert (n in names) == (importlib.util.find_spec(n) is not None)
    try:
        import tensorrt

        real = hasattr(tensorrt, "Builder")
    except ImportError:
        real = False
    if not real:
        assert "tensorrt" not in names


@pytest.mark.parametrize("device, expected", [("cpu", "cpu"), ("cuda", "cuda:0"), ("cuda:3", "cuda:3")])
def test_parse_device(device, expected):
    assert parse_device(device) == expected


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:-1", "CPU"])
def test_parse_device_rejects(device):
    with pytest.raises(ValueError, match="device must be"):
        parse_device(device)


def test_open_backend_picks_by_file_type(onnx_fp32, trained_checkpoint):
    onnx_cpu = "openvino" if "openvino" in B.available_backends() else "onnxruntime"
    with B.open_backend(onnx_fp32, device="cpu") as b:
        assert (b.name, b.device, b.metadata.precision) == (onnx_cpu, "cpu", "fp32")
        assert b.input_dtype == np.float32
    with B.open_backend(onnx_fp32, backend="onnxruntime", device="cpu") as b:
        assert b.name == "onnxruntime"
    with B.open_backend(trained_checkpoint, device="cpu") as b:
        assert (b.name, b.device) == ("torch", "cpu")


def test_open_backend_mismatched_backend(onnx_fp32):
    with pytest.raises(ValueError, match="is a onnxruntime model file; it cannot run on backend='torch'"):
        B.open_backend(onnx_fp32, backend="torch")


def test_open_backend_unknown_backend(onnx_fp32):
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        B.open_backend(onnx_fp32, backend="openvino-gpu")


def test_openvino_only_runs_onnx_on_the_cpu(onnx_fp32, trained_checkpoint):
    with pytest.raises(ValueError, match="is a torch model file; it cannot run on backend='openvino'"):
        B.open_backend(trained_checkpoint, backend="openvino")
    with pytest.raises(ValueError, match="the openvino backend runs on the CPU"):
        B.open_backend(onnx_fp32, backend="openvino", device="cuda:0")


def test_open_backend_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="model file not found"):
        B.open_backend(tmp_path / "missing.onnx")


def test_open_backend_bad_type():
    with pytest.raises(TypeError, match="model must be a path or None"):
        B.open_backend(3)  # type: ignore[arg-type]


def test_open_plan_without_tensorrt_says_how_to_install(tmp_path):
    if "tensorrt" in B.available_backends():
        pytest.skip("TensorRT is installed here")
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"x")
    with pytest.raises(ImportError, match="pip install tensorrt"):
        B.open_backend(plan)


def test_onnxruntime_cuda_without_provider(onnx_fp32):
    from resunet_trt.backends.onnxruntime import cuda_provider_available

    if cuda_provider_available():
        pytest.skip("onnxruntime-gpu is installed")
    with pytest.raises(RuntimeError, match="pip install onnxruntime-gpu"):
        B.open_backend(onnx_fp32, device="cuda")


def test_onnx_without_metadata_is_refused(tmp_path, onnx_fp32):
    import onnx
    from resunet_trt.metadata import ONNX_METADATA_KEY

    model = onnx.load(str(onnx_fp32))
    keep = [(p.key, p.value) for p in model.metadata_props if p.key != ONNX_METADATA_KEY]
    del model.metadata_props[:]
    for k, v in keep:
        model.metadata_props.add(key=k, value=v)
    path = tmp_path / "foreign.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ValueError, match="no resunet-trt metadata"):
        B.open_backend(path, device="cpu")


# -- default model ------------------------------------------------------------------------------------------------


def test_default_model_path_unknown_kind():
    with pytest.raises(ValueError, match="kind must be one of"):
        B.default_model_path("fp64")


def test_default_model_path_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(B, "DEFAULT_MODEL_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="bundled default model \\(int8\\) is missing"):
        B.default_model_path("int8")


def test_open_default_on_cpu_follows_the_cpu_order(
    tmp_path, monkeypatch, caplog, onnx_fp32, onnx_int8, trained_checkpoint
):
    for src, kind in ((onnx_fp32, "onnx"), (onnx_int8, "int8"), (trained_checkpoint, "pt")):
        shutil.copy(src, tmp_path / B.DEFAULT_MODEL_FILES[kind])
    monkeypatch.setattr(B, "DEFAULT_MODEL_DIR", tmp_path)
    monkeypatch.setenv("RESUNET_TRT_OPENVINO_CACHE", str(tmp_path / "cache"))
    if "openvino" in B.available_backends():
        from resunet_trt.backends.openvino import bf16_supported

        first, precision = "openvino", "bf16" if bf16_supported() else "fp32"
    else:
        first, precision = "onnxruntime", "fp32"
    with (
        caplog.at_level(logging.INFO, logger="resunet_trt.backends"),
        B.open_backend(None, device="cpu") as b,
    ):
        assert (b.name, b.precision, b.metadata.precision) == (first, precision, "fp32")
    assert f"resunet_default.onnx on backend {first}" in caplog.text
    # On ONNX Runtime the fp32 file comes before the INT8 one (INT8 is not faster there), then INT8.
    with B.open_backend(None, backend="onnxruntime", device="cpu") as b:
        assert (b.name, b.metadata.precision) == ("onnxruntime", "fp32")
    (tmp_path / B.DEFAULT_MODEL_FILES["onnx"]).unlink()
    with B.open_backend(None, backend="onnxruntime", device="cpu") as b:
        assert (b.name, b.metadata.precision) == ("onnxruntime", "int8")
    with B.open_backend(None, backend="torch", device="cpu") as b:
        assert b.name == "torch"


def test_cpu_order_puts_openvino_first_and_ort_fp32_before_ort_int8():
    order = list(B.CPU_ORDER)
    assert order[:2] == [("openvino", "onnx"), ("openvino", "int8")]
    assert order.index(("onnxruntime", "onnx")) < order.index(("onnxruntime", "int8"))
    assert order[-1] == ("torch", "pt")


def test_show_config_prints_the_cpu_order():
    import io

    from resunet_trt.config import show_config

    buf = io.StringIO()
    info = show_config(file=buf)
    names = [f"{n} {B.DEFAULT_MODEL_FILES[k]}" for n, k in B.CPU_ORDER]
    assert list(info["cpu_backend_order"]) == names
    text = buf.getvalue()
    assert [text.index(n) for n in names] == sorted(text.index(n) for n in names)


@pytest.mark.parametrize(
    "precision, expected",
    [("int8", ("int8",)), ("fp32", ("fp32",)), ("bf16", ("bf16", "fp32"))],
)
def test_open_default_with_precision(tmp_path, monkeypatch, onnx_fp32, onnx_int8, precision, expected):
    pytest.importorskip("openvino")
    for src, kind in ((onnx_fp32, "onnx"), (onnx_int8, "int8")):
        shutil.copy(src, tmp_path / B.DEFAULT_MODEL_FILES[kind])
    monkeypatch.setattr(B, "DEFAULT_MODEL_DIR", tmp_path)
    monkeypatch.setenv("RESUNET_TRT_OPENVINO_CACHE", str(tmp_path / "cache"))
    with B.open_backend(None, device="cpu", precision=precision) as b:
        assert b.name == "openvino" and b.precision in expected


def test_precision_a_backend_cannot_give_is_refused(onnx_fp32, onnx_int8, trained_checkpoint):
    with pytest.raises(ValueError, match="runs in fp32 on onnxruntime .bf16 runs on the openvino backend"):
        B.open_backend(onnx_fp32, backend="onnxruntime", device="cpu", precision="bf16")
    with pytest.raises(ValueError, match="precision='int8' asked for, but .* runs in fp32 on torch"):
        B.open_backend(trained_checkpoint, device="cpu", precision="int8")
    with pytest.raises(ValueError, match="precision must be one of"):
        B.open_backend(onnx_fp32, device="cpu", precision="fp8")
    with pytest.raises(ValueError, match="threads must be an int >= 1"):
        B.open_backend(onnx_fp32, device="cpu", threads=0)


def test_open_default_falls_back_to_checkpoint(tmp_path, monkeypatch, trained_checkpoint):
    shutil.copy(trained_checkpoint, tmp_path / B.DEFAULT_MODEL_FILES["pt"])
    monkeypatch.setattr(B, "DEFAULT_MODEL_DIR", tmp_path)
    with B.open_backend(None, device="cpu") as b:
        assert b.name == "torch"


def test_open_default_nothing_bundled(tmp_path, monkeypatch):
    monkeypatch.setattr(B, "DEFAULT_MODEL_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="no usable default model"):
        B.open_backend(None, device="cpu")


def test_open_default_tensorrt_is_never_bundled():
    with pytest.raises(ValueError, match="no bundled TensorRT engine"):
        B.open_backend(None, backend="tensorrt")


# -- inference ------------------------------------------------------------------------------------------------------


CPU_KINDS = ["onnxruntime", "openvino", "pt"]


def _open_kind(kind, onnx_fp32, trained_checkpoint, **kw):
    if kind == "pt":
        return B.open_backend(trained_checkpoint, device="cpu", **kw)
    if kind == "openvino":
        pytest.importorskip("openvino")
        kw.setdefault("precision", "fp32")
    return B.open_backend(onnx_fp32, backend=kind, device="cpu", **kw)


@pytest.mark.parametrize("kind", CPU_KINDS)
def test_cpu_backends_match_pytorch(kind, onnx_fp32, trained_checkpoint, slices):
    ref = _torch_reference(trained_checkpoint, slices)
    with _open_kind(kind, onnx_fp32, trained_checkpoint, threads=1) as b:
        out = b.infer(slices)
    assert b.name == ("torch" if kind == "pt" else kind)
    assert isinstance(out, np.ndarray) and out.shape == (8, 3, 128, 128) and out.dtype == np.float32
    assert np.abs(out - ref).max() <= 1e-4


@pytest.mark.parametrize("kind", CPU_KINDS)
def test_float16_input_is_accepted(kind, onnx_fp32, trained_checkpoint, slices):
    x16 = slices.astype(np.float16)
    ref = _torch_reference(trained_checkpoint, x16.astype(np.float32))
    with _open_kind(kind, onnx_fp32, trained_checkpoint) as b:
        out = b.infer(x16)
    assert np.abs(out - ref).max() <= 1e-4


@pytest.mark.parametrize(
    "shape, message",
    [
        ((8, 5, 128, 128), r"\(N, 3, 128, 128\)"),
        ((3, 128, 128), r"\(N, 3, 128, 128\)"),
        ((2, 3, 64, 64), r"\(N, 3, 128, 128\)"),
        ((0, 3, 128, 128), "N >= 1"),
    ],
)
@pytest.mark.parametrize("kind", CPU_KINDS)
def test_infer_rejects_bad_shape(kind, onnx_fp32, trained_checkpoint, shape, message):
    with _open_kind(kind, onnx_fp32, trained_checkpoint) as b, pytest.raises(ValueError, match=message):
        b.infer(np.zeros(shape, np.float32))


@pytest.mark.parametrize("kind", CPU_KINDS)
def test_infer_rejects_integer_input(kind, onnx_fp32, trained_checkpoint):
    with _open_kind(kind, onnx_fp32, trained_checkpoint) as b:
        with pytest.raises(TypeError, match="float16 or float32"):
            b.infer(np.zeros((1, 3, 128, 128), np.int16))
        with pytest.raises(TypeError, match="numpy array or a CUDA array"):
            b.infer([[0.0]])


@pytest.mark.parametrize("kind", CPU_KINDS)
def test_closed_backend_refuses_work(kind, onnx_fp32, trained_checkpoint, slices):
    with _open_kind(kind, onnx_fp32, trained_checkpoint) as b:
        pass
    with pytest.raises(RuntimeError, match="closed"):
        b.infer(slices)
    b.close()  # twice is fine


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_int8_backend_labels_close_to_fp32(runtime, onnx_fp32, onnx_int8, eval_inputs):
    if runtime == "openvino":
        pytest.importorskip("openvino")
    x = eval_inputs[30:100]
    with (
        B.open_backend(onnx_fp32, backend="onnxruntime", device="cpu") as b32,
        B.open_backend(onnx_int8, backend=runtime, device="cpu") as b8,
    ):
        agree = (b32.infer(x).argmax(1) == b8.infer(x).argmax(1)).mean()
    assert agree >= 0.98


# -- GPU ------------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["onnx", "pt"])
def test_gpu_backends_take_cuda_arrays(kind, onnx_fp32, trained_checkpoint, slices):
    import cupy as cp

    if kind == "onnx":
        from resunet_trt.backends.onnxruntime import cuda_provider_available

        if not cuda_provider_available():
            pytest.skip("onnxruntime-gpu is not installed")
    elif not B._gpu_capable("torch"):
        pytest.skip("this torch has no CUDA")
    path = onnx_fp32 if kind == "onnx" else trained_checkpoint
    ref = _torch_reference(trained_checkpoint, slices)
    with B.open_backend(path, device="cuda") as b:
        out = b.infer(cp.asarray(slices, dtype=b.input_dtype))
        assert isinstance(out, cp.ndarray) and out.shape == ref.shape
        agree = (cp.asnumpy(out).argmax(1) == ref.argmax(1)).mean()
        host = b.infer(slices)
    assert isinstance(host, np.ndarray)
    assert agree >= 0.99
