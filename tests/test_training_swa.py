"""Stochastic weight averaging in training/train.py (optim.swa_start_epoch, optim.swa_bn_batches).

One module-scoped set of tiny 3-epoch runs on a real LiTS case (32x32 plane, 2-level network) serves them all:
an uninterrupted run, the same run taken one epoch per call (``stop_after=1`` + resume, the plain weights read
from ``resume.pt`` after each epoch), a copy of that run whose ``resume.pt`` lost its average (as written
before SWA existed), and a run with SWA off. The averaged weights and BatchNorm statistics are checked against
numbers computed here from those snapshots and from the training pipeline's batches.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("nibabel")
pytest.importorskip("yaml")

# test_training also puts the repository root on sys.path
from test_training import _ddp_worker, _free_port, _link, _tiny_config  # noqa: E402

from training.train import SliceDataset, _prepare_data, _run_plan, train  # noqa: E402

EPOCHS, SWA_START, BATCH, SAMPLES = 3, 2, 4, 16
BN_BATCHES = 6  # more than one draw holds (16 / 4): the 4 of one draw and 2 of the next


def _config(run_dir: Path, data: Path, val: Path, **optim: Any) -> dict:
    return _tiny_config(run_dir, sources=[str(data)], data={"val_sources": [str(val)]},
                        sampling={"samples_per_epoch": SAMPLES}, val={"every": EPOCHS},
                        optim={"epochs": EPOCHS, "batch_size": BATCH, "swa_start_epoch": SWA_START,
                               "swa_bn_batches": BN_BATCHES, **optim})


def _plain_weights(run_dir: Path) -> dict[str, Any]:
    return torch.load(run_dir / "resume.pt", weights_only=True)["model"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("swa")
    data, val = root / "data", data_dir / "lits_small64"
    _link(val / "ct.nii.gz", data / "volume-1.nii.gz")
    _link(val / "label.nii.gz", data / "segmentation-1.nii.gz")
    out: dict[str, Any] = {"data": data, "val": val}
    out["full"] = train(_config(root / "full", data, val))
    snapshots = []
    for i in range(EPOCHS):
        train(_config(root / "steps", data, val), stop_after=1, resume=i > 0)
        snapshots.append(_plain_weights(root / "steps"))
        if i + 1 == SWA_START:  # an older resume.pt: no average in it, the run already inside the SWA window
            shutil.copytree(root / "steps", root / "old")
            state = torch.load(root / "old" / "resume.pt", weights_only=True)
            assert int(state.pop("swa")["n_averaged"]) == 1
            torch.save(state, root / "old" / "resume.pt")
    out["snapshots"] = snapshots
    out["off"] = train(_config(root / "off", data, val, swa_start_epoch=0))
    out.update(root=root, full_dir=root / "full", steps_dir=root / "steps", old_dir=root / "old",
               off_dir=root / "off")
    return out


def _load(path: Path) -> tuple[Any, Any]:
    from resunet_trt.model import load_checkpoint

    return load_checkpoint(path)


def test_average_is_the_mean_of_the_epoch_snapshots(runs):
    model, meta = _load(runs["steps_dir"] / "swa.pt")
    assert meta.extra["swa"] == {"start_epoch": SWA_START, "epochs_averaged": EPOCHS - SWA_START + 1,
                                 "bn_batches": BN_BATCHES}
    window = runs["snapshots"][SWA_START - 1:]  # the plain weights at the end of epochs 2 and 3
    moved = 0
    for name, param in model.named_parameters():
        stack = np.stack([s[name].double().numpy() for s in window])
        moved += not np.array_equal(stack[0], stack[-1])
        np.testing.assert_allclose(param.detach().double().numpy(), stack.mean(axis=0), rtol=0, atol=1e-6,
                                   err_msg=name)
    assert moved > 0  # the last epoch changed the weights, so the mean is not one of the snapshots


def test_resuming_inside_the_window_gives_the_uninterrupted_average(runs):
    full, _ = _load(runs["full_dir"] / "swa.pt")
    resumed, _ = _load(runs["steps_dir"] / "swa.pt")
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)
    # the returned model is the average, and last.pt was replaced by it
    returned = runs["full"].model.state_dict()
    last, meta = _load(runs["full_dir"] / "last.pt")
    assert meta.extra["swa"]["epochs_averaged"] == EPOCHS - SWA_START + 1
    for k, v in last.state_dict().items():
        assert torch.equal(v, a[k]) and torch.equal(returned[k], a[k]), k


def test_batchnorm_statistics_are_recomputed_on_training_batches(runs):
    model, _ = _load(runs["full_dir"] / "swa.pt")
    plain = _plain_weights(runs["full_dir"])
    bns = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert bns
    for name, bn in bns.items():
        assert torch.isfinite(bn.running_mean).all() and torch.isfinite(bn.running_var).all(), name
        assert int(bn.num_batches_tracked) == BN_BATCHES, name
        assert not torch.allclose(bn.running_var, plain[f"{name}.running_var"]), name

    # by hand for the first BatchNorm (its input does not depend on any BN statistics): the batch means and
    # unbiased batch variances of the stem convolution's output, averaged with equal weight over the training
    # pipeline's batches that follow the run (the draws of 0-based epochs 3 and 4, in order)
    config = _config(runs["root"] / "unused", runs["data"], runs["val"])
    plan = _run_plan(config, "cpu")
    train_prep, _ = _prepare_data(config, plan)
    dataset = SliceDataset(train_prep, plan.sampling, plan.augment, plan.seed, window=plan.window)
    batches = []
    for draw in (EPOCHS, EPOCHS + 1):
        dataset.set_epoch(draw)
        items = [dataset[i][0] for i in range(len(dataset) // BATCH * BATCH)]
        batches += [torch.stack(items[i : i + BATCH]) for i in range(0, len(items), BATCH)]
    batches = batches[:BN_BATCHES]
    assert len(batches) == BN_BATCHES
    conv, bn = model.stem[0], model.stem[1]
    with torch.no_grad():
        feats = [conv(x).double() for x in batches]
    mean = torch.stack([f.mean(dim=(0, 2, 3)) for f in feats]).mean(0)
    var = torch.stack([f.var(dim=(0, 2, 3), unbiased=True) for f in feats]).mean(0)
    torch.testing.assert_close(bn.running_mean.double(), mean, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(bn.running_var.double(), var, rtol=1e-4, atol=1e-6)


def test_average_is_validated_once_at_the_end(runs):
    records = [json.loads(line) for line in (runs["full_dir"] / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 3]
    assert not any(r.get("swa") for r in records[:-1])
    swa = records[-1]
    assert swa["swa"] is True and swa["epochs_averaged"] == EPOCHS - SWA_START + 1
    assert 0.0 <= swa["val"]["mean_dice"] <= 1.0 and set(swa["val"]["cases"]) == {"lits_small64"}
    _, meta = _load(runs["full_dir"] / "swa.pt")
    assert meta.extra["metrics"]["mean_dice"] == swa["val"]["mean_dice"]


def test_resume_state_without_an_average_still_loads(runs, caplog):
    with caplog.at_level(logging.WARNING, logger="resunet_trt.train"):
        train(_config(runs["old_dir"], runs["data"], runs["val"]), resume=True)
    assert any("no weight average" in r.getMessage() for r in caplog.records)
    model, meta = _load(runs["old_dir"] / "swa.pt")
    assert meta.extra["swa"]["epochs_averaged"] == 1  # only epoch 3 reached the average
    last_epoch = runs["snapshots"][-1]
    for name, param in model.named_parameters():
        assert torch.equal(param.detach(), last_epoch[name]), name


def test_swa_off_writes_no_average_and_trains_the_same_weights(runs):
    off_dir = runs["off_dir"]
    assert not (off_dir / "swa.pt").exists()
    assert len((off_dir / "metrics.jsonl").read_text().splitlines()) == EPOCHS
    assert "swa" not in torch.load(off_dir / "resume.pt", weights_only=True)
    last, meta = _load(off_dir / "last.pt")
    assert "swa" not in meta.extra
    plain_with_swa = _plain_weights(runs["full_dir"])  # averaging must not disturb the training itself
    for k, v in last.state_dict().items():
        assert torch.equal(v, plain_with_swa[k]), k
        assert torch.equal(runs["off"].model.state_dict()[k], v), k


@pytest.mark.parametrize(("key", "value"), [
    ("swa_start_epoch", -1), ("swa_start_epoch", EPOCHS + 1), ("swa_start_epoch", 1.5),
    ("swa_start_epoch", "2"), ("swa_start_epoch", True), ("swa_bn_batches", 0), ("swa_bn_batches", 2.5),
    ("swa_bn_batches", None),
])
def test_bad_swa_settings_name_the_key(tmp_path, key, value):
    with pytest.raises(ValueError, match=rf"optim\.{key} must be an integer") as err:
        train(_tiny_config(tmp_path / "run", optim={"epochs": EPOCHS, key: value}))
    assert str(err.value).endswith(f"got {value!r}")


def test_ddp_ranks_return_the_same_average_and_only_rank0_writes(tmp_path, runs):
    import torch.multiprocessing as mp

    run = tmp_path / "run"
    config = _config(run, runs["data"], runs["val"], batch_size=2)
    mp.spawn(_ddp_worker, args=(2, _free_port(), config, str(tmp_path)), nprocs=2, join=True)
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    swa, meta = _load(run / "swa.pt")
    assert meta.extra["swa"]["epochs_averaged"] == EPOCHS - SWA_START + 1
    for name, param in swa.named_parameters():
        assert torch.equal(w0[name], w1[name]) and torch.equal(w0[name], param.detach()), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r.get("swa", False)) for r in records] == [(1, False), (2, False), (3, False),
                                                                     (3, True)]
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "config.yaml", "last.pt", "metrics.jsonl",
                                                     "resume.pt", "swa.pt"]


def test_phase6_config_averages_a_constant_rate_run_from_phase4():
    from training.train import load_config, lr_factor

    root = Path(__file__).resolve().parent.parent
    config = load_config(root / "training/configs/default_model_phase6_swa.yaml")
    plan = _run_plan(config, "cpu")
    assert (plan.epochs, plan.swa_start, plan.swa_bn_batches) == (24, 4, 32)
    assert config["init_from"] == "runs/default_model_phase4/last.pt"
    ocfg = config["optim"]
    steps = plan.sampling.samples_per_epoch // plan.batch_size
    warmup = round(float(ocfg["warmup_epochs"]) * steps)
    factors = [lr_factor(s, total=steps * plan.epochs, warmup=warmup, schedule=ocfg["schedule"],
                         power=float(ocfg["poly_power"]), min_ratio=float(ocfg["min_lr_ratio"]))
               for s in range(warmup, steps * plan.epochs)]
    assert float(ocfg["lr"]) == 0.0003 and min(factors) == max(factors) == 1.0
