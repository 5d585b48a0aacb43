"""TensorRT engine logic: what runs without TensorRT is tested for real; engine builds skip without TensorRT.

A fake, minimal ``tensorrt`` module (only the calls build_engine makes) checks the builder code path: the
strongly-typed flag per TensorRT major version, the profile shapes, the workspace limit, timing-cache reuse,
parser errors in the exception text, and the sidecar written beside the plan.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import types
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


def _fake_tensorrt(version: str, *, parse_errors: list[str] | None = None, build_fails: bool = False):
    calls: dict = {"set_shape": [], "pool": [], "cache_in": [], "flags": None}
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
            return Tensor("input", (-1, 3, 128, 128))

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
            return None if build_fails else b"PLAN" * 10

    trt.ILogger = ILogger
    trt.Builder = Builder
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
