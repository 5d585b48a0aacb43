"""OpenVINO backend: precision from the file and the option, thread count, the compiled-model cache."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
from resunet_trt import backends as B

ov = pytest.importorskip("openvino")
from resunet_trt.backends import openvino as OV  # noqa: E402
from resunet_trt.engine import sha256_file  # noqa: E402


@pytest.fixture(scope="module")
def slices(eval_inputs):
    return eval_inputs[50:58].copy()  # eight liver slices


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "ovcache"
    monkeypatch.setenv(OV.CACHE_ENV, str(folder))
    return folder


def _ort_logits(path, x):
    with B.open_backend(path, backend="onnxruntime", device="cpu") as b:
        return b.infer(x)


# -- precision ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "file_precision, option, bf16_ok, expected",
    [
        ("fp32", None, True, "fp32"),
        ("fp32", "auto", True, "fp32"),
        ("fp16", None, True, "fp32"),
        ("int8", None, True, "int8"),
        ("int8", "int8", False, "int8"),
        ("fp32", "fp32", True, "fp32"),
        ("fp32", "bf16", True, "bf16"),
        ("fp16", "bf16", True, "bf16"),
    ],
)
def test_resolve_precision(file_precision, option, bf16_ok, expected):
    assert OV.resolve_precision(file_precision, option, bf16_ok=bf16_ok, name="m.onnx") == expected


def test_bf16_without_cpu_support_falls_back_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="resunet_trt.backends.openvino"):
        got = OV.resolve_precision("fp32", "bf16", bf16_ok=False, name="m.onnx")
    assert got == "fp32"
    assert "no bf16 support" in caplog.text and "m.onnx" in caplog.text


@pytest.mark.parametrize(
    "file_precision, option, message",
    [
        ("fp32", "int8", "precision='int8' needs an INT8 .Q/DQ. ONNX, but m.onnx is fp32"),
        ("int8", "fp32", "precision='fp32' needs a floating-point ONNX, but m.onnx is INT8"),
        ("int8", "bf16", "precision='bf16' needs a floating-point ONNX"),
        ("fp32", "fp16", "precision must be one of"),
    ],
)
def test_resolve_precision_refuses(file_precision, option, message):
    with pytest.raises(ValueError, match=message):
        OV.resolve_precision(file_precision, option, bf16_ok=True, name="m.onnx")


def test_bf16_capability_matches_openvino():
    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert OV.bf16_supported() == ("BF16" in caps)


def test_fp32_matches_onnxruntime(onnx_fp32, slices, cache):
    with B.open_backend(onnx_fp32, backend="openvino", device="cpu", precision="fp32") as b:
        out = b.infer(slices)
    assert (b.name, b.precision) == ("openvino", "fp32")
    assert out.shape == (8, 3, 128, 128) and out.dtype == np.float32
    assert np.abs(out - _ort_logits(onnx_fp32, slices)).max() <= 1e-4


def test_bf16_runs_where_the_cpu_has_it(onnx_fp32, eval_inputs, cache):
    x = eval_inputs[30:100]
    with B.open_backend(onnx_fp32, backend="openvino", device="cpu", precision="bf16") as b:
        out = b.infer(x)
    assert b.precision == ("bf16" if OV.bf16_supported() else "fp32")
    ref = _ort_logits(onnx_fp32, x)
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.98
    if b.precision == "bf16":  # bf16 products really happened: not bit-identical to fp32
        assert np.abs(out - ref).max() > 1e-5


def test_int8_file_runs_int8_and_agrees_with_onnxruntime_int8(onnx_int8, eval_inputs, cache):
    x = eval_inputs[30:100]
    with B.open_backend(onnx_int8, backend="openvino", device="cpu") as b:
        out = b.infer(x)
    assert b.precision == "int8"
    assert (out.argmax(1) == _ort_logits(onnx_int8, x).argmax(1)).mean() >= 0.98


def test_threads_are_honoured(onnx_fp32, cache):
    with OV.OpenVinoBackend(onnx_fp32, threads=1) as b:
        assert int(b._compiled.get_property("INFERENCE_NUM_THREADS")) == 1
    with pytest.raises(ValueError, match="threads must be an int >= 1 or None, got 0"):
        OV.OpenVinoBackend(onnx_fp32, threads=0)


def test_cuda_device_is_refused(onnx_fp32):
    with pytest.raises(ValueError, match="the openvino backend runs on the CPU, got device='cuda'"):
        OV.OpenVinoBackend(onnx_fp32, device="cuda")


def test_onnx_without_metadata_is_refused(tmp_path, onnx_fp32):
    import onnx

    model = onnx.load(str(onnx_fp32))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    with pytest.raises(ValueError, match="resunet-trt metadata|resunet_trt"):
        OV.OpenVinoBackend(bare, cache_dir=False)


# -- the compiled-model cache -------------------------------------------------------------------------------------


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv(OV.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert OV.default_cache_dir() == tmp_path / "xdg" / "resunet-trt" / "openvino"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert OV.default_cache_dir() == tmp_path / "home" / ".cache" / "resunet-trt" / "openvino"
    monkeypatch.setenv(OV.CACHE_ENV, str(tmp_path / "mine"))
    assert OV.default_cache_dir() == tmp_path / "mine"


def test_second_open_imports_from_the_cache(onnx_int8, slices, cache):
    with OV.OpenVinoBackend(onnx_int8, threads=1) as first:
        out1 = first.infer(slices)
    assert not first.from_cache
    blob = first.cache_path
    assert blob is not None and blob.parent == cache and blob.is_file()
    sidecar = json.loads(blob.with_suffix(".json").read_text())
    assert sidecar["model_sha256"] == sha256_file(onnx_int8)
    assert sidecar["openvino"] == ov.__version__ and sidecar["precision"] == "int8"
    # The key holds the model's sha256, the runtime version, the CPU and the precision.
    assert blob.name.startswith(sha256_file(onnx_int8)[:24])
    assert ov.__version__.split("-")[0] in blob.name and OV.cpu_fingerprint() in blob.name
    with OV.OpenVinoBackend(onnx_int8, threads=1) as second:
        out2 = second.infer(slices)
    assert second.from_cache and second.cache_path == blob
    np.testing.assert_array_equal(out1, out2)


def test_cache_is_keyed_by_content_threads_and_precision(tmp_path, onnx_fp32, cache):
    with OV.OpenVinoBackend(onnx_fp32, threads=1, precision="fp32") as b:
        key = b.cache_path
    copy = tmp_path / "renamed.onnx"
    shutil.copy(onnx_fp32, copy)
    with OV.OpenVinoBackend(copy, threads=1, precision="fp32") as b:  # same bytes, another name: a hit
        assert b.from_cache and b.cache_path == key
    with OV.OpenVinoBackend(onnx_fp32, threads=2, precision="fp32") as b:
        assert not b.from_cache and b.cache_path != key
    if OV.bf16_supported():
        with OV.OpenVinoBackend(onnx_fp32, threads=1, precision="bf16") as b:
            assert not b.from_cache and b.cache_path != key


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage_with_matching_sidecar", "no_sidecar"])
def test_damaged_cache_is_rebuilt(onnx_int8, slices, cache, caplog, damage):
    with OV.OpenVinoBackend(onnx_int8, threads=1) as b:
        ref = b.infer(slices)
    blob = b.cache_path
    data = blob.read_bytes()
    sidecar = blob.with_suffix(".json")
    if damage == "truncate":
        blob.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        blob.write_bytes(data[:1000] + bytes(b ^ 0xFF for b in data[1000:1100]) + data[1100:])
    elif damage == "garbage_with_matching_sidecar":  # OpenVINO itself must refuse it
        junk = b"not a compiled model" * 100
        blob.write_bytes(junk)
        info = json.loads(sidecar.read_text())
        info["blob_sha256"] = OV.sha256_bytes(junk)
        sidecar.write_text(json.dumps(info))
    else:
        sidecar.unlink()
    with caplog.at_level(logging.WARNING, logger="resunet_trt.backends.openvino"):
        with OV.OpenVinoBackend(onnx_int8, threads=1) as rebuilt:
            np.testing.assert_array_equal(rebuilt.infer(slices), ref)
    assert not rebuilt.from_cache
    assert "is unusable" in caplog.text and "compiling it again" in caplog.text
    assert OV.sha256_bytes(blob.read_bytes()) == json.loads(sidecar.read_text())["blob_sha256"]
    with OV.OpenVinoBackend(onnx_int8, threads=1) as again:
        assert again.from_cache


def test_no_cache_and_unwritable_cache(tmp_path, onnx_int8, slices, caplog):
    with OV.OpenVinoBackend(onnx_int8, cache_dir=False) as b:
        b.infer(slices)
    assert b.cache_path is None and not b.from_cache
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with caplog.at_level(logging.WARNING, logger="resunet_trt.backends.openvino"):
        with OV.OpenVinoBackend(onnx_int8, cache_dir=blocker / "cache") as b:
            assert b.infer(slices).shape == (8, 3, 128, 128)
    assert "cannot write the compiled-model cache" in caplog.text


def test_cache_dir_type_is_checked(onnx_int8):
    with pytest.raises(TypeError, match="cache_dir must be a path, None or False, got 3"):
        OV.OpenVinoBackend(onnx_int8, cache_dir=3)
