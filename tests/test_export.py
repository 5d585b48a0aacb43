"""ONNX export and its FP16 / INT8 variants, checked on real CT against PyTorch and against fp32.

Accuracy is measured on every slice of lits117_roi128 with the tiny model trained in tests/model_fixtures.py
(the INT8 model is calibrated on the two other CT cases). "Inside the body" means HU > -500.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from resunet_trt import export as X
from resunet_trt.metadata import ONNX_METADATA_KEY, ModelMetadata


def _run(path, x, batch=32):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return np.concatenate(
        [sess.run(["logits"], {"input": x[i : i + batch]})[0] for i in range(0, len(x), batch)]
    )


def _torch_logits(checkpoint, x):
    import torch
    from resunet_trt.model import load_checkpoint

    model, _ = load_checkpoint(checkpoint)
    with torch.inference_mode():
        return np.concatenate([model(torch.from_numpy(x[i : i + 32])).numpy() for i in range(0, len(x), 32)])


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    denom = a.sum() + b.sum()
    return 1.0 if denom == 0 else float(2.0 * np.logical_and(a, b).sum() / denom)


@pytest.fixture(scope="module")
def fp32_logits(onnx_fp32, eval_inputs):
    return _run(onnx_fp32, eval_inputs)


# -- fp32 ----------------------------------------------------------------------------------------------------


def test_fp32_onnx_matches_pytorch_on_real_ct(trained_checkpoint, fp32_logits, eval_inputs):
    ref = _torch_logits(trained_checkpoint, eval_inputs)
    err = np.abs(fp32_logits - ref).max()
    assert fp32_logits.shape == ref.shape == (128, 3, 128, 128)
    assert err <= 1e-4, f"max |ONNX Runtime - PyTorch| = {err:.2e}"


def test_fp32_graph_interface(onnx_fp32):
    model = onnx.load(str(onnx_fp32))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (inp,), (out,) = model.graph.input, model.graph.output
    assert (inp.name, out.name) == ("input", "logits")
    assert inp.type.tensor_type.elem_type == out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    in_dims = inp.type.tensor_type.shape.dim
    out_dims = out.type.tensor_type.shape.dim
    assert in_dims[0].dim_param == out_dims[0].dim_param == "batch"
    assert [d.dim_value for d in in_dims[1:]] == [3, 128, 128]
    assert [d.dim_value for d in out_dims[1:]] == [3, 128, 128]
    # A static graph: no control flow, no data-dependent shapes.
    assert not {n.op_type for n in model.graph.node} & {"If", "Loop", "Scan", "NonZero"}


@pytest.mark.parametrize("n", [1, 5])
def test_fp32_dynamic_batch(onnx_fp32, fp32_logits, eval_inputs, n):
    out = _run(onnx_fp32, eval_inputs[40 : 40 + n], batch=n)
    np.testing.assert_allclose(out, fp32_logits[40 : 40 + n], atol=1e-5)


def test_export_rejects_old_opset(tmp_path, trained_checkpoint):
    with pytest.raises(ValueError, match="opset must be >= 17, got 16"):
        X.export_onnx(trained_checkpoint, tmp_path / "m.onnx", opset=16)


def test_export_model_rejects_non_module(tmp_path):
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        X.export_model(object(), ModelMetadata(), tmp_path / "m.onnx")  # type: ignore[arg-type]


# -- metadata ------------------------------------------------------------------------------------------------


def test_metadata_round_trip_pt_to_onnx(trained_checkpoint, onnx_fp32, onnx_fp16, onnx_int8):
    from resunet_trt.model import load_checkpoint

    _, meta_pt = load_checkpoint(trained_checkpoint)
    for path, precision in ((onnx_fp32, "fp32"), (onnx_fp16, "fp16"), (onnx_int8, "int8")):
        meta = X.read_onnx_metadata(path)
        assert meta.precision == precision
        meta_pt.check_compatible(meta)
        assert meta.model_config == meta_pt.model_config
        assert (meta.plane_size, meta.context, meta.window) == ((128, 128), 3, (-200.0, 250.0))
        assert "onnx" in meta.versions
    assert X.read_onnx_metadata(onnx_int8).extra["export"]["calibration"]["method"] == "percentile"


def test_exported_files_carry_no_source_paths(onnx_fp32, onnx_fp16, onnx_int8):
    source_dir = str(Path(X.__file__).resolve().parent)
    for path in (onnx_fp32, onnx_fp16, onnx_int8):
        model = onnx.load(str(path))
        assert all(len(node.metadata_props) == 0 for node in model.graph.node), path
        assert source_dir.encode() not in Path(path).read_bytes(), path


def test_read_metadata_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="ONNX model not found"):
        X.read_onnx_metadata(tmp_path / "nope.onnx")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_read_metadata_corrupt_onnx(tmp_path, onnx_fp32, damage):
    data = onnx_fp32.read_bytes()
    bad = {"garbage": b"\x00\xffnot an onnx file" * 50, "truncated": data[: len(data) // 3], "empty": b""}[
        damage
    ]
    path = tmp_path / "bad.onnx"
    path.write_bytes(bad)
    with pytest.raises(ValueError, match="not a readable ONNX model"):
        X.read_onnx_metadata(path)


def test_read_metadata_onnx_without_ours(tmp_path, onnx_fp32):
    model = onnx.load(str(onnx_fp32))
    kept = [(p.key, p.value) for p in model.metadata_props if p.key != ONNX_METADATA_KEY]
    del model.metadata_props[:]
    for k, v in kept:
        model.metadata_props.add(key=k, value=v)
    path = tmp_path / "foreign.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ValueError, match="has no resunet-trt metadata"):
        X.read_onnx_metadata(path)


def test_read_metadata_malformed_json(tmp_path, onnx_fp32):
    model = onnx.load(str(onnx_fp32))
    for p in model.metadata_props:
        if p.key == ONNX_METADATA_KEY:
            p.value = "{broken"
    path = tmp_path / "broken.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ValueError, match="not valid JSON"):
        X.read_onnx_metadata(path)


# -- fp16 and int8 accuracy ------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["onnx_fp16", "onnx_int8"])
def test_reduced_precision_agrees_with_fp32(request, variant, fp32_logits, eval_inputs, lits117):
    hu, labels = lits117
    out = _run(request.getfixturevalue(variant), eval_inputs)
    pred, ref = out.argmax(1), fp32_logits.argmax(1)  # plane is 128 x 128 = the CT grid here
    body = hu > -500
    agreement = float((pred == ref)[body].mean())
    d_liver = abs(_dice(pred >= 1, labels >= 1) - _dice(ref >= 1, labels >= 1))
    d_tumor = abs(_dice(pred == 2, labels == 2) - _dice(ref == 2, labels == 2))
    report = (
        f"{variant}: agreement {agreement:.5f} inside body, |dDice| liver {d_liver:.5f}, tumor {d_tumor:.5f} "
        f"(fp32 Dice liver {_dice(ref >= 1, labels >= 1):.4f}, tumor {_dice(ref == 2, labels == 2):.4f})"
    )
    request.node.user_properties.append(("measured", report))
    print(report)
    # The trained model must be meaningful, or agreement would be trivial.
    assert _dice(ref >= 1, labels >= 1) > 0.8 and _dice(ref == 2, labels == 2) > 0.3, report
    assert agreement >= 0.99, report
    assert d_liver <= 0.01, report
    assert d_tumor <= 0.02, report


def test_fp16_graph_keeps_fp32_io_and_stores_fp16_weights(onnx_fp16):
    model = onnx.load(str(onnx_fp16))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    conv_weights = {n.input[1] for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")}
    types = {i.data_type for i in model.graph.initializer if i.name in conv_weights}
    assert types == {onnx.TensorProto.FLOAT16}


def test_int8_qdq_layout_fits_tensorrt(onnx_int8):
    """Symmetric int8 (zero point 0) everywhere, per-channel conv weights, float biases, float logits conv."""
    from onnx import numpy_helper

    model = onnx.load(str(onnx_int8))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    q_nodes = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    dq_nodes = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert q_nodes and dq_nodes
    for n in q_nodes + dq_nodes:
        zp = inits[n.input[2]]
        assert zp.dtype == np.int8 and not zp.any(), f"{n.name}: zero point must be int8 0 (symmetric)"
    for n in dq_nodes:  # TensorRT takes only int8 into DequantizeLinear (no int32 bias)
        src = n.input[0]
        dtype = inits[src].dtype if src in inits else np.int8
        assert dtype == np.int8, f"{n.name} dequantizes {dtype}"
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    quantized = [
        c for c in convs if c.input[1] in producers and producers[c.input[1]].op_type == "DequantizeLinear"
    ]
    float_nodes = set(X.read_onnx_metadata(onnx_int8).extra["export"]["calibration"]["float_nodes"])
    assert {c.name for c in quantized} == {c.name for c in convs} - float_nodes, (
        "every conv but the logits conv and the float nodes in the metadata has int8 weights"
    )
    for c in quantized:
        dq = producers[c.input[1]]
        w = inits[dq.input[0]]
        scale = inits[dq.input[1]]
        axis = 1 if c.op_type == "ConvTranspose" else 0
        assert scale.shape == (w.shape[axis],), f"{c.name}: weights must be per output channel"
        assert producers[c.input[0]].op_type == "DequantizeLinear", f"{c.name}: input must come through Q/DQ"
        if len(c.input) > 2:
            assert c.input[2] in inits and inits[c.input[2]].dtype == np.float32, (
                f"{c.name}: bias stays float"
            )
    last = producers[model.graph.output[0].name]
    assert last.op_type == "Conv" and last.input[1] in inits, "the logits conv keeps float weights"


# -- argument checking ---------------------------------------------------------------------------------------


def test_fp16_rejects_non_fp32_source(tmp_path, onnx_int8):
    with pytest.raises(ValueError, match="needs the fp32 ONNX as input"):
        X.convert_fp16(onnx_int8, tmp_path / "x.onnx")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "minmax"}, "method must be one of"),
        ({"percentile": 50.0}, "percentile must be in"),
        ({"volumes": None}, "exactly one of volumes= or data_dir="),
    ],
)
def test_quantize_rejects_bad_arguments(tmp_path, onnx_fp32, lits_small, kwargs, message):
    args = {"volumes": [lits_small[0]], **kwargs}
    with pytest.raises(ValueError, match=message):
        X.quantize_int8(onnx_fp32, tmp_path / "q.onnx", **args)


def test_calibration_batches_are_preprocessed_body_slices(lits_small):
    from resunet_trt import kernels

    hu = lits_small[0].copy()
    hu[:3] = -1000  # air slices are skipped
    meta = ModelMetadata(plane_size=(128, 128), context=3)
    batches = X.calibration_batches([hu], meta, batch_size=4, max_slices=10)
    x = np.concatenate(batches)
    assert all(len(b) <= 4 for b in batches) and x.shape == (10, 3, 128, 128) and x.dtype == np.float32
    full = np.asarray(
        kernels.preprocess(hu, window=meta.window, out_size=(128, 128), context=3, dtype="float32")
    )
    matches = [int(np.flatnonzero([np.array_equal(s, f) for f in full])[0]) for s in x]
    assert min(matches) >= 3, "air slices must not be used"
    assert matches == sorted(matches) and len(set(matches)) == 10


def test_calibration_of_a_physically_sampled_model_samples_at_its_pixel_size():
    """A 150 mm square at 0.75 mm pixels (200 px) spans 100 px of a model with 1.5 mm pixels, centred on its plane."""
    from resunet_trt.io import CTVolume, canonical_affine

    hu = np.full((6, 400, 400), -1000, np.int16)
    hu[:, 100:300, 100:300] = 200
    spacing = (3.0, 0.75, 0.75)
    vol = CTVolume(hu=hu, spacing=spacing, affine=canonical_affine(spacing))
    meta = ModelMetadata(plane_size=(128, 128), context=3, pixel_mm=1.5, slice_mm=3.0)
    x = np.concatenate(X.calibration_batches([vol], meta, batch_size=2, max_slices=4))
    assert x.shape == (4, 3, 128, 128)
    bright = x[0, 1] > 0.5
    rows, cols = np.flatnonzero(bright.any(axis=1)), np.flatnonzero(bright.any(axis=0))
    assert len(rows) == len(cols) == 100
    assert rows[0] == cols[0] == 14  # (128 - 100) / 2: the square is centred
    # without spacing (a bare array) the whole 400-pixel plane is resized: the square spans 64 pixels
    y = np.concatenate(X.calibration_batches([hu], meta, batch_size=2, max_slices=4))
    assert np.count_nonzero((y[0, 1] > 0.5).any(axis=0)) == 64


def test_calibration_batches_reject_non_3d():
    with pytest.raises(ValueError, match=r"volumes\[0\] must be \(D, H, W\)"):
        X.calibration_batches([np.zeros((4, 4), np.int16)], ModelMetadata())


def test_find_ct_volumes(tmp_path, data_dir):
    found = X.find_ct_volumes(data_dir)
    assert {p.parent.name for p in found} >= {"lits117_roi128", "lits_small64", "totalseg_abdomen3mm"}
    with pytest.raises(FileNotFoundError, match="no CT volume"):
        X.find_ct_volumes(tmp_path)
