"""TensorRT engine logic: what runs without TensorRT is tested for real; engine builds skip without TensorRT.

A fake, minimal ``tensorrt`` module (only the calls build_engine makes) checks the builder code path: the
strongly-typed flag per TensorRT major version, the profile shapes, the workspace limit, timing-cache reuse,
parser errors in the exception text, and the sidecar written beside the plan.
"""

from __future__ import annotations

import gc
import hashlib
import importlib.machinery
import json
import logging
import sys
import types
import weakref
from pathlib import Path

import numpy as np
import pytest
from resunet_trt import engine as E
from resunet_trt.metadata import ModelMetadata


def _real_tensorrt() -> bool:
    try:
        import tensorrt
    except ImportError:
        return False
    return hasattr(tensorrt, "Builder")  # the stub package imports as an empty namespace


needs_tensorrt = pytest.mark.skipif(
    not _real_tensorrt(), reason="TensorRT is not installed (only its type stubs)"
)

META = ModelMetadata(plane_size=(128, 128), context=3, model_config={"base_width": 8})
GPU = E.GpuInfo(name="NVIDIA H100 80GB HBM3", compute_capability=(9, 0))


# -- versions and flags --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("10.13.0.35", (10, 13, 0, 35)),
        ("11.0.0", (11, 0, 0)),
        ("10.8", (10, 8)),
        ("11.1.0rc2", (11, 1, 0)),
        (" 10.3.0.26 ", (10, 3, 0, 26)),
    ],
)
def test_parse_version(text, expected):
    assert E.parse_version(text) == expected


@pytest.mark.parametrize("text", ["", "ten", "10", "v10.1", "10.x"])
def test_parse_version_rejects(text):
    with pytest.raises(ValueError, match="major.minor"):
        E.parse_version(text)


@pytest.mark.parametrize(
    "a, b, same",
    [
        ("10.13.0.35", "10.13.0.36", True),
        ("10.13.0.35", "10.13.1.1", False),
        ("10.13", "10.13.0.1", True),
        ("11.0.0.1", "10.13.0.35", False),
    ],
)
def test_same_tensorrt_release(a, b, same):
    assert E.same_tensorrt_release(a, b) is same


@pytest.mark.parametrize("bit", [1, 3])
def test_network_flags_tensorrt10_sets_strongly_typed(bit):
    assert E.network_creation_flags("10.13.0.35", bit) == 1 << bit


@pytest.mark.parametrize("version", ["11.0.0.1", "12.2.0"])
def test_network_flags_tensorrt11_is_zero(version):
    assert E.network_creation_flags(version, 1) == 0


def test_network_flags_rejects_tensorrt9():
    with pytest.raises(ValueError, match="TensorRT >= 10"):
        E.network_creation_flags("9.3.0", 1)


# -- profiles and batches ------------------------------------------------------------------------------------


def test_profile_shapes():
    p = E.BatchProfile(min=1, opt=8, max=32)
    assert p.shapes(META) == ((1, 3, 128, 128), (8, 3, 128, 128), (32, 3, 128, 128))
    assert E.BatchProfile.from_dict(p.to_dict()) == p


@pytest.mark.parametrize("mn, opt, mx", [(0, 1, 2), (2, 1, 4), (1, 8, 4), (4, 4, 3)])
def test_profile_rejects_bad_order(mn, opt, mx):
    with pytest.raises(ValueError, match="min_batch <= opt_batch <= max_batch"):
        E.BatchProfile(min=mn, opt=opt, max=mx)


def test_profile_rejects_non_int():
    with pytest.raises(TypeError, match="opt_batch"):
        E.BatchProfile(min=1, opt=2.0, max=4)  # type: ignore[arg-type]


@pytest.mark.parametrize("n, max_batch", [(0, 4), (1, 4), (4, 4), (5, 4), (33, 8), (7, 1)])
def test_split_batches_covers_range_in_order(n, max_batch):
    chunks = E.split_batches(n, max_batch)
    covered = [i for s, e in chunks for i in range(s, e)]
    assert covered == list(range(n))
    assert all(0 < e - s <= max_batch for s, e in chunks)
    assert len(chunks) == -(-n // max_batch)


def test_split_batches_rejects_zero_max():
    with pytest.raises(ValueError, match="max_batch"):
        E.split_batches(3, 0)


@pytest.mark.parametrize("device, index", [("cuda", 0), ("cuda:2", 2), (1, 1)])
def test_parse_device_index(device, index):
    assert E.parse_device_index(device) == index


@pytest.mark.parametrize("device", ["cpu", "gpu", "cuda:x", -1, True])
def test_parse_device_index_rejects(device):
    with pytest.raises((ValueError, TypeError)):
        E.parse_device_index(device)


# -- sidecar -------------------------------------------------------------------------------------------------


def _plan(tmp_path: Path, data: bytes = b"serialized engine bytes") -> tuple[Path, E.EngineSidecar]:
    plan = tmp_path / "model.plan"
    plan.write_bytes(data)
    sidecar = E.make_sidecar(
        metadata=META, plan=data, tensorrt_version="10.13.0.35", gpu=GPU, profile=E.BatchProfile(1, 8, 32)
    )
    E.write_sidecar(plan, sidecar)
    return plan, sidecar


def test_sidecar_path_appends_json():
    assert E.sidecar_path("/x/model.int8.plan") == Path("/x/model.int8.plan.json")


def test_sidecar_round_trip(tmp_path):
    plan, sidecar = _plan(tmp_path)
    back = E.read_sidecar(plan)
    assert back == sidecar
    raw = json.loads(E.sidecar_path(plan).read_text())
    assert raw["plan_sha256"] == hashlib.sha256(plan.read_bytes()).hexdigest()
    assert raw["compute_capability"] == [9, 0]
    assert raw["tensorrt_version"] == "10.13.0.35"
    assert raw["device_name"] == GPU.name
    assert ModelMetadata.from_dict(raw["metadata"]) == META


def test_sidecar_metadata_round_trip_from_checkpoint(tmp_path, trained_checkpoint, onnx_fp32):
    """.pt -> .onnx -> sidecar keeps every metadata field that says how the model is fed."""
    from resunet_trt.export import read_onnx_metadata
    from resunet_trt.model import load_checkpoint

    _, meta_pt = load_checkpoint(trained_checkpoint)
    meta_onnx = read_onnx_metadata(onnx_fp32)
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"x")
    E.write_sidecar(
        plan,
        E.make_sidecar(
            metadata=meta_onnx, plan=b"x", tensorrt_version="10.13.0.35", gpu=GPU, profile=E.BatchProfile()
        ),
    )
    meta_plan = E.read_sidecar(plan).metadata
    assert meta_plan == meta_onnx
    meta_pt.check_compatible(meta_plan)
    assert meta_plan.model_config == meta_pt.model_config
    assert meta_plan.precision == "fp32"


def test_verify_sidecar_accepts_matching(tmp_path, caplog):
    plan, sidecar = _plan(tmp_path)
    with caplog.at_level(logging.WARNING):
        E.verify_sidecar(
            sidecar,
            plan_sha256=E.sha256_file(plan),
            tensorrt_version="10.13.0.35",
            gpu=GPU,
            expected_metadata=META,
        )
    assert not caplog.records


def test_verify_sidecar_wrong_sha(tmp_path):
    plan, sidecar = _plan(tmp_path)
    plan.write_bytes(b"serialized engine bytes, tampered")
    with pytest.raises(E.EngineMismatchError, match="sha256 of the plan .* does not match its sidecar"):
        E.verify_sidecar(sidecar, plan_sha256=E.sha256_file(plan), tensorrt_version="10.13.0.35", gpu=GPU)


@pytest.mark.parametrize("cc", [(8, 0), (8, 9), (9, 1), (10, 0)])
def test_verify_sidecar_wrong_compute_capability(tmp_path, cc):
    _, sidecar = _plan(tmp_path)
    other = E.GpuInfo(name="Some GPU", compute_capability=cc)
    with pytest.raises(
        E.EngineMismatchError, match=r"built for compute capability 9\.0 .*Some GPU.*" + rf"{cc[0]}\.{cc[1]}"
    ):
        E.verify_sidecar(sidecar, plan_sha256=sidecar.plan_sha256, tensorrt_version="10.13.0.35", gpu=other)


@pytest.mark.parametrize("version", ["10.12.0.36", "11.0.0.1", "10.13.1.0"])
def test_verify_sidecar_wrong_tensorrt_version(tmp_path, version):
    _, sidecar = _plan(tmp_path)
    with pytest.raises(
        E.EngineMismatchError, match=rf"built with TensorRT 10\.13\.0\.35, this is TensorRT {version}"
    ):
        E.verify_sidecar(sidecar, plan_sha256=sidecar.plan_sha256, tensorrt_version=version, gpu=GPU)


def test_verify_sidecar_build_number_only_differs(tmp_path):
    _, sidecar = _plan(tmp_path)
    E.verify_sidecar(sidecar, plan_sha256=sidecar.plan_sha256, tensorrt_version="10.13.0.99", gpu=GPU)


def test_verify_sidecar_other_device_name_warns(tmp_path, caplog):
    _, sidecar = _plan(tmp_path)
    with caplog.at_level(logging.WARNING, logger="resunet_trt.engine"):
        E.verify_sidecar(
            sidecar,
            plan_sha256=sidecar.plan_sha256,
            tensorrt_version="10.13.0.35",
            gpu=E.GpuInfo("NVIDIA H800", (9, 0)),
        )
    assert "NVIDIA H800" in caplog.text


@pytest.mark.parametrize(
    "field, value", [("plane_size", (256, 256)), ("context", 5), ("window", (-100.0, 200.0))]
)
def test_verify_sidecar_metadata_mismatch(tmp_path, field, value):
    _, sidecar = _plan(tmp_path)
    expected = ModelMetadata.from_dict({**META.to_dict(), field: value})
    with pytest.raises(E.EngineMismatchError, match=field):
        E.verify_sidecar(
            sidecar,
            plan_sha256=sidecar.plan_sha256,
            tensorrt_version="10.13.0.35",
            gpu=GPU,
            expected_metadata=expected,
        )


def test_read_sidecar_missing(tmp_path):
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="sidecar .*model.plan.json not found"):
        E.read_sidecar(plan)


def test_read_sidecar_not_json(tmp_path):
    plan, _ = _plan(tmp_path)
    E.sidecar_path(plan).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        E.read_sidecar(plan)


@pytest.mark.parametrize("field", ["plan_sha256", "compute_capability", "tensorrt_version", "metadata"])
def test_read_sidecar_missing_field(tmp_path, field):
    plan, sidecar = _plan(tmp_path)
    d = sidecar.to_dict()
    del d[field]
    E.sidecar_path(plan).write_text(json.dumps(d))
    with pytest.raises(ValueError, match=f"lacks {field}"):
        E.read_sidecar(plan)


@pytest.mark.parametrize(
    "field, value", [("plan_sha256", "abc"), ("compute_capability", [9]), ("tensorrt_version", "latest")]
)
def test_read_sidecar_malformed_field(tmp_path, field, value):
    plan, sidecar = _plan(tmp_path)
    d = sidecar.to_dict()
    d[field] = value
    E.sidecar_path(plan).write_text(json.dumps(d))
    with pytest.raises(ValueError, match="malformed engine sidecar"):
        E.read_sidecar(plan)


def test_load_engine_refuses_tampered_plan_before_needing_tensorrt(tmp_path):
    plan, _ = _plan(tmp_path)
    plan.write_bytes(b"another engine")
    with pytest.raises(E.EngineMismatchError, match="sha256"):
        E.load_engine(plan)


def test_load_engine_missing_plan(tmp_path):
    with pytest.raises(FileNotFoundError, match="plan not found"):
        E.load_engine(tmp_path / "nope.plan")


@pytest.mark.skipif(_real_tensorrt(), reason="checks the message shown when TensorRT is missing")
def test_load_engine_without_tensorrt_says_how_to_install(tmp_path):
    plan, _ = _plan(tmp_path)
    with pytest.raises(ImportError, match="pip install tensorrt"):
        E.load_engine(plan)


@pytest.mark.skipif(_real_tensorrt(), reason="checks the message shown when TensorRT is missing")
def test_build_engine_without_tensorrt_says_how_to_install(tmp_path, onnx_fp32):
    with pytest.raises(ImportError, match="pip install tensorrt"):
        E.build_engine(onnx_fp32, tmp_path / "m.plan")


@pytest.mark.parametrize(
    "kwargs", [{"workspace_gb": 0}, {"workspace_gb": -1.0}, {"min_batch": 4, "opt_batch": 2}]
)
def test_build_engine_rejects_bad_arguments(tmp_path, onnx_fp32, kwargs):
    with pytest.raises(ValueError):
        E.build_engine(onnx_fp32, tmp_path / "m.plan", **kwargs)


# -- the builder code path against a fake TensorRT ----------------------------------------------------------


class _FakeParserError:
    def __init__(self, node: int, desc: str) -> None:
        self._node, self._desc = node, desc

    def node(self) -> int:
        return self._node

    def node_name(self) -> str:
        return f"node_{self._node}"

    def code(self) -> str:
        return "UNSUPPORTED_NODE"

    def desc(self) -> str:
        return self._desc


def _fake_tensorrt(
    version: str,
    *,
    parse_errors: list[str] | None = None,
    build_fails: bool = False,
    input_shape: tuple[int, ...] = (-1, 3, 128, 128),
):
    calls: dict = {"set_shape": [], "pool": [], "cache_in": [], "flags": None, "builds": 0}
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version

    class _Severity:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    class ILogger:
        Severity = _Severity

        def __init__(self) -> None:
            pass

    class Tensor:
        def __init__(self, name, shape):
            self.name, self.shape = name, shape

    class Network:
        num_inputs = num_outputs = 1

        def get_input(self, i):
            return Tensor("input", input_shape)

        def get_output(self, i):
            return Tensor("logits", (-1, 3, 128, 128))

    class OnnxParser:
        def __init__(self, network, logger):
            self.num_errors = len(parse_errors or [])

        def parse_from_file(self, path):
            calls["parsed"] = path
            return not parse_errors

        def get_error(self, i):
            return _FakeParserError(i, (parse_errors or [])[i])

    class Cache:
        def __init__(self, data):
            self.data = data

        def serialize(self):
            return b"cache:" + bytes(self.data)

    class Config:
        def set_memory_pool_limit(self, pool, size):
            calls["pool"].append((pool, size))

        def add_optimization_profile(self, profile):
            calls["profiles"] = calls.get("profiles", 0) + 1

        def create_timing_cache(self, data):
            calls["cache_in"].append(bytes(data))
            return Cache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            self._cache = cache
            return True

        def get_timing_cache(self):
            return self._cache

    class Profile:
        def set_shape(self, name, mn, opt, mx):
            calls["set_shape"].append((name, list(mn), list(opt), list(mx)))

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls["flags"] = flags
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            calls["builds"] += 1
            return None if build_fails else b"PLAN" * 10

    class Context:
        pass

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i):
            return ("input", "logits")[i]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name == "input" else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return "float32"

        def get_tensor_profile_shape(self, name, index):
            return [(1, 3, 128, 128), (8, 3, 128, 128), (32, 3, 128, 128)]

        def create_execution_context(self):
            context = Context()
            calls["context"] = weakref.ref(context)
            return context

    class Runtime:
        def __init__(self, logger):
            calls["runtime"] = weakref.ref(self)

        def deserialize_cuda_engine(self, plan):
            calls["deserialized"] = calls.get("deserialized", 0) + 1
            if calls.get("fail_deserialize", 0) > 0:
                calls["fail_deserialize"] -= 1
                return None
            engine = Engine()
            calls["engine"] = weakref.ref(engine)
            return engine

    trt.ILogger = ILogger
    trt.Builder = Builder
    trt.Runtime = Runtime
    trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    trt.nptype = lambda dtype: np.float32
    trt.OnnxParser = OnnxParser
    trt.Dims = list
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)
    return trt, calls


@pytest.fixture
def fake_gpu(monkeypatch):
    monkeypatch.setattr(E, "current_gpu", lambda index=0: GPU)
    monkeypatch.setattr(E, "_set_cuda_device", lambda index: None)


@pytest.mark.parametrize("version, flags", [("10.13.0.35", 1 << 1), ("11.0.0.5", 0)])
def test_build_engine_with_fake_tensorrt(tmp_path, monkeypatch, fake_gpu, onnx_fp32, version, flags):
    trt, calls = _fake_tensorrt(version)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old")
    plan = E.build_engine(
        onnx_fp32,
        tmp_path / "out" / "m.plan",
        min_batch=2,
        opt_batch=4,
        max_batch=16,
        workspace_gb=0.5,
        timing_cache=cache,
    )
    assert calls["flags"] == flags
    assert calls["set_shape"] == [("input", [2, 3, 128, 128], [4, 3, 128, 128], [16, 3, 128, 128])]
    assert calls["pool"] == [("WORKSPACE", 1 << 29)]
    assert calls["profiles"] == 1
    assert calls["cache_in"] == [b"old"]
    assert cache.read_bytes() == b"cache:old"
    assert plan.read_bytes() == b"PLAN" * 10
    side = E.read_sidecar(plan)
    assert side.plan_sha256 == hashlib.sha256(b"PLAN" * 10).hexdigest()
    assert side.tensorrt_version == version
    assert side.compute_capability == (9, 0)
    assert side.profile == E.BatchProfile(2, 4, 16)
    assert side.onnx_sha256 == E.sha256_file(onnx_fp32)
    assert sorted(p.name for p in plan.parent.iterdir()) == ["m.plan", "m.plan.json"]  # no temporary left


def test_build_engine_collects_every_parser_error(tmp_path, monkeypatch, fake_gpu, onnx_fp32):
    trt, _ = _fake_tensorrt("10.13.0.35", parse_errors=["Resize mode not supported", "bad Q/DQ axis"])
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    with pytest.raises(E.EngineBuildError, match=r"2 error\(s\)") as info:
        E.build_engine(onnx_fp32, tmp_path / "m.plan")
    text = str(info.value)
    assert "node 0 (node_0): UNSUPPORTED_NODE: Resize mode not supported" in text
    assert "node 1 (node_1): UNSUPPORTED_NODE: bad Q/DQ axis" in text
    assert not (tmp_path / "m.plan").exists()


def test_build_engine_failed_build_writes_nothing(tmp_path, monkeypatch, fake_gpu, onnx_fp32):
    trt, _ = _fake_tensorrt("10.13.0.35", build_fails=True)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    with pytest.raises(E.EngineBuildError, match="failed to build"):
        E.build_engine(onnx_fp32, tmp_path / "m.plan")
    assert list(tmp_path.iterdir()) == []


def test_build_cli_reports_missing_tensorrt(tmp_path, onnx_fp32, capsys):
    if _real_tensorrt():
        pytest.skip("checks the message shown when TensorRT is missing")
    from resunet_trt.cli.build import main

    code = main([str(onnx_fp32), "-o", str(tmp_path / "m.plan"), "--opt-batch", "2", "--max-batch", "4"])
    assert code == 1
    assert "pip install tensorrt" in capsys.readouterr().err


def test_build_cli_rejects_bad_profile(tmp_path, onnx_fp32, capsys):
    from resunet_trt.cli.build import main

    code = main([str(onnx_fp32), "-o", str(tmp_path / "m.plan"), "--min-batch", "8", "--opt-batch", "2"])
    assert code == 2
    assert "min_batch <= opt_batch" in capsys.readouterr().err


# -- plane profiles and the enqueue plan (no TensorRT) --------------------------------------------------------


def test_plane_profile_fixed_without_pixel_mm():
    p = E.PlaneProfile.for_model(META, dynamic=False)
    assert (p.min, p.opt, p.max) == ((128, 128), (128, 128), (128, 128))
    assert not p.dynamic
    assert p.covers((128, 128)) and not p.covers((160, 128))


@pytest.mark.parametrize(
    "plane, depth, max_side, expected",
    [
        ((256, 256), 5, 512, ((256, 256), (288, 288), (512, 512))),
        ((256, 256), 5, 640, ((256, 256), (288, 288), (640, 640))),
        ((200, 256), 4, 500, ((208, 208), (288, 288), (496, 496))),  # divisor 16: 200 -> 208, 500 -> 496
        ((320, 320), 5, 512, ((320, 320), (320, 320), (512, 512))),  # opt never below min
    ],
)
def test_plane_profile_dynamic(plane, depth, max_side, expected):
    meta = ModelMetadata(plane_size=plane, context=3, model_config={"depth": depth}, pixel_mm=1.25)
    p = E.PlaneProfile.for_model(meta, dynamic=True, max_side=max_side)
    assert (p.min, p.opt, p.max) == expected
    assert p.dynamic


def test_profile_shapes_with_plane_range():
    plane = E.PlaneProfile(min=(256, 256), opt=(288, 288), max=(512, 512))
    assert E.profile_shapes(E.BatchProfile(1, 8, 32), plane, 5) == (
        (1, 5, 256, 256),
        (8, 5, 288, 288),
        (32, 5, 512, 512),
    )


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"min": (256, 256), "opt": (224, 288), "max": (512, 512)}, ValueError),
        ({"min": (0, 256), "opt": (256, 256), "max": (512, 512)}, ValueError),
        ({"min": (256, 256), "opt": (288, 288), "max": [512, 512]}, TypeError),
    ],
)
def test_plane_profile_rejects(kwargs, error):
    with pytest.raises(error, match="plane"):
        E.PlaneProfile(**kwargs)


@pytest.mark.parametrize(
    "n, mn, mx, expected",
    [
        (40, 1, 16, [(0, 16, 16), (16, 32, 16), (32, 40, 8)]),  # split, last chunk short but within the profile
        (3, 4, 8, [(0, 3, 4)]),  # padded up to the profile minimum
        (10, 4, 8, [(0, 8, 8), (8, 10, 4)]),  # split, and the remainder padded
        (8, 8, 8, [(0, 8, 8)]),
        (0, 1, 4, []),
    ],
)
def test_plan_enqueues_hand_computed(n, mn, mx, expected):
    plan = E.plan_enqueues(n, mn, mx)
    assert [(q.start, q.stop, q.run_batch) for q in plan] == expected
    assert [q.padded for q in plan] == [q[2] > q[1] - q[0] for q in expected]


@pytest.mark.parametrize("mn, mx", [(1, 1), (1, 7), (3, 5), (6, 6), (2, 32)])
def test_plan_enqueues_covers_every_sample_once_within_the_profile(mn, mx):
    for n in range(0, 3 * mx + 2):
        plan = E.plan_enqueues(n, mn, mx)
        assert [i for q in plan for i in range(q.start, q.stop)] == list(range(n))
        assert all(mn <= q.run_batch <= mx for q in plan)
        assert all(q.run_batch == max(q.stop - q.start, mn) for q in plan)
        assert not any(q.padded for q in plan[:-1])  # only the last chunk can be short


@pytest.mark.parametrize("mn, mx", [(0, 4), (5, 4)])
def test_plan_enqueues_rejects_bad_profile(mn, mx):
    with pytest.raises(ValueError, match="min_batch <= max_batch"):
        E.plan_enqueues(4, mn, mx)


def test_sidecar_keeps_a_dynamic_plane(tmp_path):
    meta = ModelMetadata(plane_size=(256, 256), context=3, model_config={"depth": 5}, pixel_mm=1.25)
    plane = E.PlaneProfile.for_model(meta, dynamic=True)
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"x")
    E.write_sidecar(
        plan,
        E.make_sidecar(
            metadata=meta, plan=b"x", tensorrt_version="10.13.0.35", gpu=GPU, profile=E.BatchProfile(), plane=plane
        ),
    )
    back = E.read_sidecar(plan)
    assert back.plane == plane and back.plane_profile == plane
    _, fixed = _plan(tmp_path)  # a fixed plane is not written: older readers see the sidecar they know
    assert fixed.to_dict()["plane"] is None
    assert fixed.plane_profile == E.PlaneProfile.fixed((128, 128))


def test_build_engine_dynamic_plane_profile(tmp_path, monkeypatch, fake_gpu, onnx_fp32):
    import resunet_trt.export as export

    meta = ModelMetadata.from_dict(
        {**export.read_onnx_metadata(onnx_fp32).to_dict(), "plane_size": [256, 256], "pixel_mm": 1.25}
    )
    meta = ModelMetadata.from_dict({**meta.to_dict(), "model_config": {**meta.model_config, "depth": 5}})
    monkeypatch.setattr(E, "read_onnx_metadata", lambda path: meta)
    trt, calls = _fake_tensorrt("10.13.0.35", input_shape=(-1, 3, -1, -1))
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    plan = E.build_engine(onnx_fp32, tmp_path / "m.plan", max_batch=16, max_plane=640)
    assert calls["set_shape"] == [("input", [1, 3, 256, 256], [8, 3, 288, 288], [16, 3, 640, 640])]
    assert E.read_sidecar(plan).plane == E.PlaneProfile(min=(256, 256), opt=(288, 288), max=(640, 640))


def test_build_engine_dynamic_plane_needs_pixel_mm(tmp_path, monkeypatch, fake_gpu, onnx_fp32):
    trt, _ = _fake_tensorrt("10.13.0.35", input_shape=(-1, 3, -1, -1))
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    with pytest.raises(ValueError, match=r"input must be \(N, 3, 128, 128\)"):
        E.build_engine(onnx_fp32, tmp_path / "m.plan")


# -- the engine cache against the stand-in TensorRT -----------------------------------------------------------


def _use_tensorrt(monkeypatch, version: str, **kwargs):
    trt, calls = _fake_tensorrt(version, **kwargs)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return calls


def test_engine_cache_dir_default_and_override(tmp_path, monkeypatch):
    monkeypatch.delenv(E.ENGINE_CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert E.default_engine_cache_dir() == tmp_path / "xdg" / "resunet-trt" / "engines"
    monkeypatch.setenv(E.ENGINE_CACHE_ENV, str(tmp_path / "mine"))
    assert E.default_engine_cache_dir() == tmp_path / "mine"


def test_cached_engine_builds_once_then_reuses(tmp_path, monkeypatch, fake_gpu, onnx_fp32, caplog):
    calls = _use_tensorrt(monkeypatch, "10.13.0.35")
    monkeypatch.setenv(E.ENGINE_CACHE_ENV, str(tmp_path / "cache"))  # the default folder, overridden
    with caplog.at_level(logging.INFO, logger="resunet_trt.engine"):
        plan = E.cached_engine(onnx_fp32)
    assert calls["builds"] == 1
    assert plan.parent == tmp_path / "cache"
    sha = hashlib.sha256(onnx_fp32.read_bytes()).hexdigest()
    assert plan.name == f"{onnx_fp32.stem}-{sha[:16]}-trt10.13.0-sm90-b1-8-32.plan"
    announced = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(announced) == 1 and "building the TensorRT fp32 engine" in announced[0]
    assert "first build on this GPU" in announced[0] and str(tmp_path / "cache") in announced[0]
    side = E.read_sidecar(plan)
    assert side.onnx_sha256 == sha and side.profile == E.BatchProfile(1, 8, 32)
    assert (tmp_path / "cache" / "timing-trt10.13.0-sm90.cache").is_file()

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="resunet_trt.engine"):
        again = E.cached_engine(onnx_fp32)
    assert again == plan and calls["builds"] == 1  # a hit builds nothing
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "from the cache" in caplog.text

    same_release = _use_tensorrt(monkeypatch, "10.13.0.99")  # another build number of the same release
    assert E.cached_engine(onnx_fp32) == plan and same_release["builds"] == 0


def test_cached_engine_misses_on_another_tensorrt_gpu_or_profile(tmp_path, monkeypatch, fake_gpu, onnx_fp32, caplog):
    cache = tmp_path / "cache"
    _use_tensorrt(monkeypatch, "10.13.0.35")
    first = E.cached_engine(onnx_fp32, cache_dir=cache)

    newer = _use_tensorrt(monkeypatch, "10.14.1.48")
    other_release = E.cached_engine(onnx_fp32, cache_dir=cache)
    assert newer["builds"] == 1 and other_release != first and "trt10.14.1" in other_release.name
    assert E.read_sidecar(other_release).tensorrt_version == "10.14.1.48"

    l4 = E.GpuInfo(name="NVIDIA L4", compute_capability=(8, 9))
    monkeypatch.setattr(E, "current_gpu", lambda index=0: l4)
    calls = _use_tensorrt(monkeypatch, "10.13.0.35")
    other_gpu = E.cached_engine(onnx_fp32, cache_dir=cache)
    assert calls["builds"] == 1 and "-sm89-" in other_gpu.name
    assert E.read_sidecar(other_gpu).compute_capability == (8, 9)

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="resunet_trt.engine"):
        other_profile = E.cached_engine(onnx_fp32, cache_dir=cache, max_batch=16)
    assert calls["builds"] == 2 and "-b1-8-16" in other_profile.name
    assert "as earlier builds on this GPU" in caplog.text  # the expected time comes from the L4 build above
    assert len(list(cache.glob("*.plan"))) == 4 and first.is_file()


@pytest.mark.parametrize("damage", ["plan bytes", "sidecar json", "sidecar missing", "other onnx"])
def test_cached_engine_rebuilds_a_damaged_entry(tmp_path, monkeypatch, fake_gpu, onnx_fp32, caplog, damage):
    calls = _use_tensorrt(monkeypatch, "10.13.0.35")
    plan = E.cached_engine(onnx_fp32, cache_dir=tmp_path)
    side = E.sidecar_path(plan)
    if damage == "plan bytes":
        plan.write_bytes(b"PLAN" * 9 + b"PLAX")
    elif damage == "sidecar json":
        side.write_text('{"schema": 1, "plan_sha')
    elif damage == "sidecar missing":
        side.unlink()
    else:
        d = json.loads(side.read_text())
        d["onnx_sha256"] = "0" * 64
        side.write_text(json.dumps(d))
    with caplog.at_level(logging.WARNING, logger="resunet_trt.engine"):
        again = E.cached_engine(onnx_fp32, cache_dir=tmp_path)
    assert again == plan and calls["builds"] == 2
    assert "is unusable" in caplog.text and "building it again" in caplog.text
    assert plan.read_bytes() == b"PLAN" * 10
    assert E.read_sidecar(plan).plan_sha256 == hashlib.sha256(b"PLAN" * 10).hexdigest()


@pytest.mark.parametrize("times, expected", [([], None), ([30.0], 30.0), ([10.0, 50.0, 20.0], 20.0), ([4, 6], 5.0)])
def test_expected_build_seconds_is_the_median_for_this_gpu(tmp_path, times, expected):
    for i, t in enumerate(times):
        E.write_sidecar(
            tmp_path / f"m{i}.plan",
            E.make_sidecar(
                metadata=META, plan=b"x", tensorrt_version="10.13.0.35", gpu=GPU, profile=E.BatchProfile(),
                extra={"build_seconds": t},
            ),
        )
    E.write_sidecar(  # another GPU model: its time says nothing about this one
        tmp_path / "l4.plan",
        E.make_sidecar(
            metadata=META, plan=b"x", tensorrt_version="10.13.0.35", gpu=E.GpuInfo("NVIDIA L4", (8, 9)),
            profile=E.BatchProfile(), extra={"build_seconds": 999.0},
        ),
    )
    (tmp_path / "broken.plan.json").write_text("{")
    assert E.expected_build_seconds(tmp_path, gpu=GPU, tensorrt_version="10.13.0.1") == expected


# -- the TensorRT backend against stand-ins for TensorRT and CuPy ----------------------------------------------


def _fake_cupy(calls: dict):
    cp = types.ModuleType("cupy")
    cp.__spec__ = importlib.machinery.ModuleSpec("cupy", None)

    class Device:
        def __init__(self, index=0):
            self.id = index

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def use(self):
            pass

    class Stream:
        ptr = 1

        def __init__(self, non_blocking=False):
            calls["syncs"] = 0

        def synchronize(self):
            calls["syncs"] += 1

    cp.ndarray = type("ndarray", (), {})
    cp.cuda = types.SimpleNamespace(
        Device=Device, Stream=Stream, runtime=types.SimpleNamespace(getDeviceCount=lambda: 1)
    )
    return cp


@pytest.fixture
def stand_ins(monkeypatch, fake_gpu):
    calls = _use_tensorrt(monkeypatch, "10.13.0.35")
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(calls))
    return calls


def test_tensorrt_backend_close_drops_engine_context_and_runtime(tmp_path, stand_ins):
    from resunet_trt.backends.tensorrt import TensorRTBackend

    plan, _ = _plan(tmp_path, b"PLAN" * 10)
    backend = TensorRTBackend(plan, device="cuda:0")
    refs = [stand_ins["engine"], stand_ins["context"], stand_ins["runtime"]]
    gc.collect()
    assert all(ref() is not None for ref in refs)  # the backend holds them while open
    assert backend.max_batch == 32 and backend.plane == E.PlaneProfile.fixed((128, 128))
    backend.close()
    gc.collect()
    assert [ref() for ref in refs] == [None, None, None]
    assert stand_ins["syncs"] == 1  # queued work finished before the context went
    backend.close()  # twice is fine
    assert stand_ins["syncs"] == 1
    with pytest.raises(RuntimeError, match="closed"):
        backend.infer(np.zeros((1, 3, 128, 128), np.float32))


def test_tensorrt_backend_from_onnx_rebuilds_a_plan_tensorrt_cannot_load(tmp_path, stand_ins, onnx_fp32, caplog):
    from resunet_trt.backends.tensorrt import TensorRTBackend

    stand_ins["fail_deserialize"] = 1
    with caplog.at_level(logging.WARNING):
        backend = TensorRTBackend.from_onnx(onnx_fp32, device="cuda:0", cache_dir=tmp_path)
    with backend:
        assert stand_ins["builds"] == 2 and stand_ins["deserialized"] == 2
        assert "did not load" in caplog.text
        assert backend.metadata.precision == "fp32"


def test_default_model_on_a_gpu_is_the_fp16_onnx_on_tensorrt(tmp_path, monkeypatch, fake_gpu):
    from resunet_trt import backends as B
    from resunet_trt.export import read_onnx_metadata

    meta = read_onnx_metadata(B.default_model_path("fp16"))
    h, w = (-1, -1) if meta.pixel_mm is not None else meta.plane_size
    calls = _use_tensorrt(monkeypatch, "10.13.0.35", input_shape=(-1, meta.context, h, w))
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(calls))
    monkeypatch.setenv(E.ENGINE_CACHE_ENV, str(tmp_path))
    with B.open_backend(None, device="auto") as backend:
        assert (backend.name, backend.device, backend.precision) == ("tensorrt", "cuda:0", "fp16")
    plans = list(tmp_path.glob("*.plan"))
    assert len(plans) == 1 and plans[0].name.startswith("resunet_default.fp16-")
    assert E.read_sidecar(plans[0]).onnx_sha256 == E.sha256_file(B.default_model_path("fp16"))
    with B.open_backend(None, device="cuda", precision="int8") as backend:  # INT8 on request
        assert backend.precision == "int8"
    assert calls["builds"] == 2 and len(list(tmp_path.glob("resunet_default.int8-*.plan"))) == 1


def test_default_model_on_a_gpu_without_tensorrt_falls_back_with_a_notice(monkeypatch, caplog):
    from resunet_trt import backends as B

    opened = []
    monkeypatch.setattr(B, "_installed", lambda name: name != "tensorrt")
    monkeypatch.setattr(B, "_gpu_capable", lambda name: name == "torch")
    monkeypatch.setattr(B, "_construct", lambda name, path, dev, *args: opened.append((name, path.name, dev)))
    with caplog.at_level(logging.WARNING, logger="resunet_trt.backends"):
        B.open_backend(None, device="cuda")
    assert opened == [("torch", B.DEFAULT_MODEL_FILES["pt"], "cuda:0")]
    notices = [r.getMessage() for r in caplog.records]
    assert len(notices) == 1 and "\n" not in notices[0]
    assert "TensorRT is not installed" in notices[0] and "pip install tensorrt-cu12" in notices[0]


# -- real TensorRT (skipped here) ------------------------------------------------------------------------------


@needs_tensorrt
@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["onnx_fp32", "onnx_fp16", "onnx_int8"])
def test_build_and_run_engine(tmp_path, request, variant, eval_inputs):
    from resunet_trt.backends import open_backend

    onnx_path = request.getfixturevalue(variant)
    plan = E.build_engine(
        onnx_path,
        tmp_path / "m.plan",
        min_batch=1,
        opt_batch=8,
        max_batch=16,
        workspace_gb=2,
        timing_cache=tmp_path / "cache",
    )
    with open_backend(onnx_path, device="cpu") as ort_backend:
        ref = ort_backend.infer(eval_inputs[:40])
    with open_backend(plan, device="cuda:0") as trt_backend:
        out = trt_backend.infer(eval_inputs[:40])  # 40 > max batch 16: split into 3 enqueues
    agree = (np.asarray(out).argmax(1) == ref.argmax(1)).mean()
    assert agree >= 0.99, f"{variant}: TensorRT and ONNX Runtime labels agree on {agree:.4f} of pixels"
