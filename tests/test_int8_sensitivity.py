"""Mixed-precision INT8: sensitivity ranking, the automatic choice of float nodes, and the float_nodes argument.

A hand-built network of three convolutions has one layer made fragile on purpose: its output carries a channel
with a huge constant activation, so a per-tensor int8 scale for that output rounds the small channels that the
logits read to zero. Sensitivity measurement must find that layer first, and leaving it in float must restore the
fp32 labels.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from resunet_trt import int8_sensitivity as S
from resunet_trt.metadata import ModelMetadata, read_onnx_metadata, set_onnx_metadata
from resunet_trt.onnx_precision import quantize_int8

PLANE = (32, 32)
OUTLIER = 2000.0  # the fragile layer's constant channel: its int8 step (about OUTLIER / 127) dwarfs the others


def _conv(name: str, x: str, w: np.ndarray, b: np.ndarray, out: str, pad: int) -> tuple[onnx.NodeProto, list]:
    inits = [numpy_helper.from_array(w.astype(np.float32), f"{name}.w"),
             numpy_helper.from_array(b.astype(np.float32), f"{name}.b")]
    node = helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [out], name=name, pads=[pad] * 4)
    return node, inits


def _fragile_model(path) -> None:
    """input (N, 1, 32, 32) -> conv "first" 3x3 (4 ch) -> Relu -> conv "fragile" 1x1 (4 ch, one at +OUTLIER)
    -> conv "head" 1x1 (3 classes, blind to the outlier channel) -> logits."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.5, (4, 1, 3, 3))
    b1 = np.array([0.0, -0.2, -0.5, 0.1])
    w2 = np.zeros((4, 4, 1, 1))
    w2[:3, :3, 0, 0] = np.eye(3) + rng.normal(0, 0.1, (3, 3))
    b2 = np.array([0.0, 0.0, 0.0, OUTLIER])
    w3 = np.zeros((3, 4, 1, 1))
    w3[:, :3, 0, 0] = [[-2.0, -2.0, -2.0], [3.0, -1.0, 0.5], [-1.0, 3.0, 1.0]]  # class 0 when all are small
    b3 = np.array([0.3, 0.0, 0.0])
    nodes, inits = [], []
    for spec in (("first", "input", w1, b1, "c1", 1), ("fragile", "r1", w2, b2, "c2", 0),
                 ("head", "c2", w3, b3, "logits", 0)):
        n, i = _conv(*spec)
        nodes.append(n)
        inits += i
        if spec[0] == "first":
            nodes.append(helper.make_node("Relu", ["c1"], ["r1"], name="relu"))
    graph = helper.make_graph(
        nodes, "fragile",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, *PLANE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3, *PLANE])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    set_onnx_metadata(model, ModelMetadata(plane_size=PLANE, context=1, window=(-200.0, 250.0)))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def fragile(tmp_path_factory):
    path = tmp_path_factory.mktemp("fragile") / "fragile.onnx"
    _fragile_model(path)
    return path


@pytest.fixture(scope="module")
def ct_volumes():
    """Two smooth synthetic HU volumes (D, H, W) spanning the window: soft tissue blobs in fat and air."""
    rng = np.random.default_rng(1)
    z, y, x = np.mgrid[:6, :32, :32]
    vols = []
    for k in range(2):
        hu = -150.0 + 350.0 * np.exp(-((y - 12 - 6 * k) ** 2 + (x - 16) ** 2) / 60.0) + 5.0 * z
        hu[:, :, :3] = -1000.0
        vols.append((hu + rng.normal(0, 20, hu.shape)).astype(np.int16))
    return vols


def _inputs(volumes) -> list[np.ndarray]:
    from resunet_trt.onnx_precision import calibration_batches

    return calibration_batches(volumes, ModelMetadata(plane_size=PLANE, context=1), max_slices=48)


def _weight_is_quantized(model: onnx.ModelProto, node_name: str) -> bool:
    producers = {o: n for n in model.graph.node for o in n.output}
    node = next(n for n in model.graph.node if n.name == node_name)
    return node.input[1] in producers and producers[node.input[1]].op_type == "DequantizeLinear"


# -- output_agreement against hand-computed values ---------------------------------------------------------------


def test_output_agreement_hand_computed():
    ref = np.zeros((1, 3, 2, 2))
    ref[0, 1, 0, 0] = ref[0, 2, 0, 1] = 5.0  # labels [[1, 2], [0, 0]]
    other = ref.copy()
    other[0, 1, 0, 1] = 9.0  # labels [[1, 1], [0, 0]]
    a = S.output_agreement(ref, other)
    assert a.agreement == pytest.approx(1 / 2)  # foreground: the two top pixels, one agrees
    assert a.pixel_agreement == pytest.approx(3 / 4)
    # KL at the changed pixel, others 0: p = softmax(0, 0, 5), q = softmax(0, 9, 5)
    p = np.exp([0.0, 0.0, 5.0]) / np.exp([0.0, 0.0, 5.0]).sum()
    q = np.exp([0.0, 9.0, 5.0]) / np.exp([0.0, 9.0, 5.0]).sum()
    assert a.kl == pytest.approx(float((p * np.log(p / q)).sum()) / 4)
    # Dice of the two label maps per class: liver {(0,0)} vs {(0,0),(0,1)} -> 2/3; tumor {(0,1)} vs {} -> 0
    assert a.class_dice == 0.0 and a.score == 0.0
    liver_only = ref[:, :2].copy()
    liver_only[0, 1, 0, 1] = 5.0
    assert S.output_agreement(liver_only, ref[:, :2]).class_dice == pytest.approx(2 / 3)
    assert S.output_agreement(ref, ref) == S.OutputAgreement(1.0, 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="reference and other"):
        S.output_agreement(ref, ref[:, :2])


# -- the greedy choice, on scores whose effect is known -------------------------------------------------------


def _additive(gains: dict[str, float], base: float = 0.9):
    """quantize/evaluate pair where leaving node n in float adds gains[n] to agreement."""
    def quantize(names):
        return ",".join(names)

    def evaluate(path):
        names = [n for n in str(path).split(",") if n]
        return S.OutputAgreement(base + sum(gains.get(n, 0.0) for n in names), 1.0, 1.0 - len(names) / 100)

    return quantize, evaluate


def test_rank_then_choose_stops_at_target_and_cap():
    gains = {"a": 0.001, "b": 0.05, "c": 0.03, "d": 0.0}
    quantize, evaluate = _additive(gains)
    ranking = S.rank_sensitivity([((n,), "Conv") for n in gains], quantize, evaluate)
    assert [r.nodes for r in ranking][:3] == [("b",), ("c",), ("a",)]
    assert ranking[0].gain == pytest.approx(0.05)
    chosen, steps = S.choose_float_nodes(ranking, quantize, evaluate, target=0.97)
    assert chosen == ["b", "c"] and len(steps) == 2  # 0.9 + 0.05 + 0.03 >= 0.97: stops
    chosen, _ = S.choose_float_nodes(ranking, quantize, evaluate, target=0.999, max_nodes=1)
    assert chosen == ["b"]
    chosen, _ = S.choose_float_nodes(ranking, quantize, evaluate, target=1.0)
    assert chosen == ["b", "c", "a"]  # "d" gains nothing alone: never tried
    with pytest.raises(ValueError, match="target must be in"):
        S.choose_float_nodes(ranking, quantize, evaluate, target=1.5)
    with pytest.raises(ValueError, match="max_nodes must be"):
        S.choose_float_nodes(ranking, quantize, evaluate, max_nodes=-1)


def test_groups_and_cap_count_nodes():
    gains = {"a": 0.01, "b": 0.01, "c": 0.02}
    quantize, evaluate = _additive(gains)
    ranking = S.rank_sensitivity([(("a", "b"), "Conv+Conv"), (("c",), "Conv")], quantize, evaluate)
    assert [r.nodes for r in ranking] == [("a", "b"), ("c",)]  # the pair gains 0.02 + lower KL: first
    assert S.choose_float_nodes(ranking, quantize, evaluate, target=1.0)[0] == ["a", "b", "c"]
    # a cap of 1 node skips the pair and takes the single node
    assert S.choose_float_nodes(ranking, quantize, evaluate, target=1.0, max_nodes=1)[0] == ["c"]


def test_candidate_groups_join_readers_of_one_tensor_and_residual_blocks():
    w = numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["a"], name="conv_a"),
        helper.make_node("Conv", ["x", "w"], ["b"], name="conv_b"),  # reads x too: one group with conv_a
        helper.make_node("Add", ["a", "b"], ["s"], name="add"),
        helper.make_node("Relu", ["s"], ["r"], name="relu"),  # not a candidate
        helper.make_node("Conv", ["r", "w"], ["y"], name="head"),
    ]
    info = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 1, 4, 4]) for n in ("x", "y")]
    model = helper.make_model(helper.make_graph(nodes, "g", info[:1], info[1:], [w]))
    assert S.candidate_groups(model, exclude=["head"]) == [
        (("conv_a", "conv_b"), "Conv+Conv"),
        (("conv_a", "conv_b", "add"), "Conv+Conv+Add"),  # the residual sum with the convolutions feeding it
    ]


# -- the whole path on a network with a known fragile layer ------------------------------------------------------


def test_auto_finds_the_fragile_layer_and_restores_labels(tmp_path, fragile, ct_volumes):
    batches = _inputs(ct_volumes)
    ref = S.onnx_logits(fragile, batches)
    assert (ref.argmax(1) != 0).mean() > 0.1, "the reference must segment something"
    plain = quantize_int8(fragile, tmp_path / "none.onnx", volumes=ct_volumes, float_nodes="none")
    auto = quantize_int8(fragile, tmp_path / "auto.onnx", volumes=ct_volumes, float_nodes="auto")
    calibration = read_onnx_metadata(auto).extra["export"]["calibration"]
    assert calibration["sensitivity"][0]["nodes"] == ["fragile"]
    assert calibration["float_nodes"][:2] == ["head", "fragile"]
    model = onnx.load(str(auto))
    assert not _weight_is_quantized(model, "fragile") and not _weight_is_quantized(model, "head")
    assert _weight_is_quantized(model, "first"), "the robust layer stays int8"
    # Full int8 loses the labels; the mixed model gets them back.
    assert S.output_agreement(ref, S.onnx_logits(plain, batches)).agreement < 0.5
    assert S.output_agreement(ref, S.onnx_logits(auto, batches)).agreement >= 0.99
    assert calibration["mixed"]["agreement"] >= 0.99 > calibration["full_int8"]["agreement"]


def test_explicit_float_nodes_and_none(tmp_path, fragile, ct_volumes):
    out = quantize_int8(fragile, tmp_path / "q.onnx", volumes=ct_volumes, float_nodes="first")
    model = onnx.load(str(out))
    assert read_onnx_metadata(out).extra["export"]["calibration"]["float_nodes"] == ["head", "first"]
    assert not _weight_is_quantized(model, "first") and _weight_is_quantized(model, "fragile")
    out = quantize_int8(fragile, tmp_path / "n.onnx", volumes=ct_volumes, float_nodes=None)
    calibration = read_onnx_metadata(out).extra["export"]["calibration"]
    assert calibration["float_nodes"] == ["head"] and "sensitivity" not in calibration


@pytest.mark.parametrize(
    "value, error, message",
    [
        (["fragile", "no_such_node"], ValueError, "'no_such_node'"),
        ("first,bogus", ValueError, "'bogus'"),
        (3, TypeError, "float_nodes must be"),
    ],
)
def test_bad_float_nodes_are_named(tmp_path, fragile, ct_volumes, value, error, message):
    with pytest.raises(error, match=message):
        quantize_int8(fragile, tmp_path / "q.onnx", volumes=ct_volumes, float_nodes=value)
    assert not (tmp_path / "q.onnx").exists()
