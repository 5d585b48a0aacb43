"""ResUNet: shapes, configuration checks, parameter and FLOP counts against independent counts, checkpoints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from resunet_trt.metadata import ModelMetadata
from resunet_trt.model import (
    DEFAULT_MODEL_NOTE,
    ResUNet,
    ResUNetConfig,
    count_parameters,
    gflops_per_slice,
    load_checkpoint,
    save_checkpoint,
)

ROOT = Path(__file__).resolve().parent.parent


def _tiny(**kw) -> ResUNetConfig:
    base = {"base_width": 4, "depth": 2, "max_width": 16}
    base.update(kw)
    return ResUNetConfig(**base)


@pytest.mark.parametrize(
    "cfg, plane",
    [
        (_tiny(depth=1), (16, 16)),
        (_tiny(depth=2), (32, 48)),
        (_tiny(depth=3, in_channels=5), (32, 32)),
        (_tiny(depth=4, units_per_stage=2), (64, 32)),
        (_tiny(depth=2, upsample="bilinear"), (32, 32)),
        (_tiny(depth=2, in_channels=1, num_classes=2), (16, 32)),
    ],
)
def test_output_shape_matches_input_plane(cfg, plane):
    net = ResUNet(cfg).eval()
    x = torch.randn(2, cfg.in_channels, *plane)
    with torch.no_grad():
        y = net(x)
    assert y.shape == (2, cfg.num_classes, *plane)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("plane", [(30, 32), (32, 34), (17, 17)])
def test_plane_not_divisible_by_two_to_depth_is_a_clear_error(plane):
    net = ResUNet(_tiny(depth=2)).eval()
    with pytest.raises(ValueError, match=r"multiples of 2\*\*depth = 4"):
        net(torch.zeros(1, 3, *plane))


def test_wrong_channel_count_is_a_clear_error():
    net = ResUNet(_tiny()).eval()
    with pytest.raises(ValueError, match=r"\(N, 3, h, w\)"):
        net(torch.zeros(1, 4, 16, 16))


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        ({"in_channels": 0}, ValueError),
        ({"num_classes": 1}, ValueError),
        ({"base_width": 0}, ValueError),
        ({"depth": 0}, ValueError),
        ({"depth": 9}, ValueError),
        ({"max_width": 2, "base_width": 4}, ValueError),
        ({"units_per_stage": 0}, ValueError),
        ({"upsample": "nearest"}, ValueError),
        ({"depth": 2.0}, TypeError),
        ({"base_width": True}, TypeError),
    ],
)
def test_bad_config_values_are_rejected(kwargs, exc):
    with pytest.raises(exc, match="ResUNetConfig"):
        ResUNetConfig(**kwargs)


def test_config_dict_round_trip_and_unknown_keys():
    cfg = _tiny(depth=3, upsample="bilinear", in_channels=5)
    assert ResUNetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown keys"):
        ResUNetConfig.from_dict({**cfg.to_dict(), "dropout": 0.1})


def _expected_parameters(cfg: ResUNetConfig) -> int:
    """Parameter count written out from the architecture description, without the torch module."""
    w = cfg.widths

    def conv(cin, cout, k, bias):
        return cin * cout * k * k + (cout if bias else 0)

    def bn(c):
        return 2 * c

    def unit(cin, cout, stride):
        n = bn(cin) + conv(cin, cout, 3, False) + bn(cout) + conv(cout, cout, 3, True)
        if cin != cout or stride != 1:
            n += conv(cin, cout, 1, False)
        return n

    total = conv(cfg.in_channels, w[0], 3, True)
    for level in range(cfg.depth + 1):
        for u in range(cfg.units_per_stage):
            cin = (w[0] if level == 0 else w[level - 1]) if u == 0 else w[level]
            total += unit(cin, w[level], 2 if (u == 0 and level) else 1)
    for level in range(cfg.depth):
        total += conv(w[level + 1], w[level], 2 if cfg.upsample == "transpose" else 1, True)
        total += unit(2 * w[level], w[level], 1)
    return total + bn(w[0]) + conv(w[0], cfg.num_classes, 1, True)


@pytest.mark.parametrize(
    "cfg", [ResUNetConfig(), _tiny(), _tiny(depth=3, units_per_stage=2), _tiny(upsample="bilinear", in_channels=5)]
)
def test_parameter_count_matches_an_independent_count(cfg):
    net = ResUNet(cfg)
    assert count_parameters(net) == _expected_parameters(cfg)
    assert count_parameters(net) == sum(p.numel() for p in net.state_dict().values() if p.dtype.is_floating_point) \
        - sum(m.running_mean.numel() + m.running_var.numel() for m in net.modules()
              if isinstance(m, torch.nn.BatchNorm2d))


def _measured_conv_macs(net, x) -> int:
    """Multiply-accumulates of every conv/transposed conv, measured with forward hooks on real tensors."""
    macs = []

    def hook(mod, inp, out):
        k = mod.kernel_size[0] * mod.kernel_size[1]
        if isinstance(mod, torch.nn.ConvTranspose2d):
            macs.append(inp[0][0].numel() * mod.out_channels * k)
        else:
            macs.append(out[0].numel() * mod.in_channels * k)

    handles = [m.register_forward_hook(hook) for m in net.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    with torch.no_grad():
        net(x)
    for h in handles:
        h.remove()
    return sum(macs)


@pytest.mark.parametrize(
    "cfg, plane",
    [(ResUNetConfig(), (256, 256)), (_tiny(depth=3, units_per_stage=2), (64, 32)), (_tiny(upsample="bilinear"), (32, 32))],
)
def test_gflops_match_hook_measured_multiply_accumulates(cfg, plane):
    net = ResUNet(cfg).eval()
    macs = _measured_conv_macs(net, torch.zeros(1, cfg.in_channels, *plane))
    assert gflops_per_slice(cfg, plane) == pytest.approx(2 * macs / 1e9, rel=1e-12)


def test_default_model_note_states_the_measured_numbers():
    cfg = ResUNetConfig()
    params = count_parameters(ResUNet(cfg))
    assert f"{params:,} parameters" in DEFAULT_MODEL_NOTE
    assert f"{gflops_per_slice(cfg, (256, 256)):.2f} GFLOPs" in DEFAULT_MODEL_NOTE
    assert 1_000_000 <= params <= 1_600_000 and gflops_per_slice(cfg, (256, 256)) <= 3.0


def _metadata(cfg: ResUNetConfig, plane=(32, 32)) -> ModelMetadata:
    return ModelMetadata(plane_size=plane, context=cfg.in_channels, model_config=cfg.to_dict())


def test_checkpoint_round_trip(tmp_path):
    cfg = _tiny(depth=2, in_channels=3)
    torch.manual_seed(0)
    net = ResUNet(cfg)
    # train-mode passes move the BatchNorm running statistics away from their initial values
    net.train()
    for _ in range(2):
        net(torch.randn(4, 3, 32, 32))
    net.eval()
    meta = _metadata(cfg)
    path = save_checkpoint(tmp_path / "m.pt", net, meta, extra={"training": {"epochs": 3}, "note": "x"})
    raw = torch.load(path, weights_only=True)  # plain containers and tensors only
    assert set(raw) == {"format", "version", "state_dict", "metadata", "extra"}
    loaded, meta2 = load_checkpoint(path)
    assert not loaded.training
    assert meta2.check_compatible(meta) is None
    assert meta2.model_config == cfg.to_dict()
    assert meta2.extra["training"] == {"epochs": 3} and meta2.extra["note"] == "x"
    assert meta2.versions["torch"] == torch.__version__
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
    assert not list(tmp_path.glob(".*.tmp"))


def test_checkpoint_context_must_match_model_channels(tmp_path):
    cfg = _tiny(in_channels=3)
    meta = ModelMetadata(plane_size=(32, 32), context=5)
    with pytest.raises(ValueError, match="context"):
        save_checkpoint(tmp_path / "m.pt", ResUNet(cfg), meta)
    assert not (tmp_path / "m.pt").exists()


def test_checkpoint_plane_must_fit_depth(tmp_path):
    cfg = _tiny(depth=3)
    with pytest.raises(ValueError, match="2\\*\\*depth"):
        save_checkpoint(tmp_path / "m.pt", ResUNet(cfg), _metadata(cfg, plane=(36, 36)))


def test_load_checkpoint_rejects_missing_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a resunet-trt checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")


def test_exports_to_onnx_with_dynamic_batch_and_matches_torch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    cfg = _tiny(depth=3)
    net = ResUNet(cfg).eval()
    path = tmp_path / "m.onnx"
    torch.onnx.export(net, torch.zeros(1, 3, 32, 32), str(path), input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}}, opset_version=17, dynamo=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((3, 3, 32, 32), dtype=np.float32)
    got = sess.run(None, {"x": x})[0]
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_importing_the_config_module_does_not_import_torch():
    code = "import sys, resunet_trt.model_config as m; m.ResUNetConfig(); m.gflops_per_slice(m.ResUNetConfig()); " \
           "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT / "python"), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "False"


def _randomise_batchnorm(net):
    gen = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=gen) * 2 - 1)
            m.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(c, generator=gen) - 0.5)


@pytest.mark.parametrize("cfg", [_tiny(block="conv_bn_relu"), _tiny(block="conv_bn_relu", units_per_stage=2, depth=3),
                                 ResUNetConfig(block="conv_bn_relu", upsample="bilinear")])
def test_fold_batchnorm_leaves_no_batchnorm_and_the_same_function(cfg):
    from resunet_trt.model import fold_batchnorm

    net = ResUNet(cfg)
    _randomise_batchnorm(net)
    net.eval()
    folded = fold_batchnorm(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # the original is untouched
    x = torch.rand(2, cfg.in_channels, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = net(x), folded(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


def test_conv_bn_relu_parameter_count_matches_an_independent_count():
    cfg = _tiny(block="conv_bn_relu")
    w = cfg.widths

    def conv(cin, cout, k, bias):
        return cin * cout * k * k + (cout if bias else 0)

    def unit(cin, cout, stride):
        n = conv(cin, cout, 3, False) + 2 * cout + conv(cout, cout, 3, False) + 2 * cout
        if cin != cout or stride != 1:
            n += conv(cin, cout, 1, False) + 2 * cout
        return n

    total = conv(cfg.in_channels, w[0], 3, False) + 2 * w[0]
    for level in range(cfg.depth + 1):
        total += unit(w[0] if level == 0 else w[level - 1], w[level], 2 if level else 1)
    for level in range(cfg.depth):
        total += conv(w[level + 1], w[level], 2, True) + unit(2 * w[level], w[level], 1)
    total += conv(w[0], cfg.num_classes, 1, True)
    assert count_parameters(ResUNet(cfg)) == total


def test_configs_without_block_are_the_first_preact_models():
    cfg = ResUNetConfig.from_dict({k: v for k, v in _tiny().to_dict().items() if k != "block"})
    assert cfg.block == "preact"
    with pytest.raises(ValueError, match="block must be one of"):
        ResUNetConfig(block="postact")
