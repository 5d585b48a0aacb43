"""Fixtures that provide a small trained model, and its ONNX variants, to the deployment tests.

A random-weight network cannot show that FP16/INT8 keep the liver and tumor where fp32 puts them, so the
session trains a tiny ResUNet (base width 8, plane 128, context 3) on the real LiTS case 117 ROI for a fixed
number of steps (about half a minute on two cores). It is fitted to that one case on purpose: the tests compare
precisions and backends with each other on meaningful predictions, not the model's generalisation.
The model files live in one session temporary folder; the trained checkpoint is also kept in pytest's cache
(see :func:`trained_checkpoint`).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

FIXTURE_PLANE = (128, 128)
FIXTURE_CONTEXT = 3
FIXTURE_WINDOW = (-200.0, 250.0)
TRAIN_STEPS = 110
TRAIN_BATCH = 8


def _train_tiny_model(hu: np.ndarray, labels: np.ndarray):
    """Fit a tiny ResUNet to one CT volume; returns (model in eval mode, ModelMetadata)."""
    import torch
    import torch.nn.functional as F
    from resunet_trt import kernels
    from resunet_trt.metadata import ModelMetadata, current_versions
    from resunet_trt.model import ResUNet, ResUNetConfig

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x_all = kernels.preprocess(
            hu, window=FIXTURE_WINDOW, out_size=FIXTURE_PLANE, context=FIXTURE_CONTEXT, dtype="float32"
        )
        x_all = torch.from_numpy(np.ascontiguousarray(np.asarray(x_all, dtype=np.float32)))
        # Labels to the plane size by nearest neighbour (the ROI is already 128 x 128 in plane).
        d, h, w = labels.shape
        rows = (np.arange(FIXTURE_PLANE[0]) * h) // FIXTURE_PLANE[0]
        cols = (np.arange(FIXTURE_PLANE[1]) * w) // FIXTURE_PLANE[1]
        y_all = torch.from_numpy(labels[:, rows][:, :, cols].astype(np.int64))

        # Oversample slices with liver and tumor.
        has_liver = (labels >= 1).any(axis=(1, 2))
        has_tumor = (labels == 2).any(axis=(1, 2))
        weights = 1.0 + 2.0 * has_liver + 4.0 * has_tumor
        weights = weights / weights.sum()

        config = ResUNetConfig(in_channels=FIXTURE_CONTEXT, num_classes=3, base_width=8, depth=3)
        model = ResUNet(config)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=TRAIN_STEPS, pct_start=0.15)
        class_weight = torch.tensor([0.5, 1.0, 2.0])
        for _ in range(TRAIN_STEPS):
            idx = torch.from_numpy(rng.choice(d, size=TRAIN_BATCH, p=weights))
            x, y = x_all[idx], y_all[idx]
            if rng.random() < 0.5:  # flips keep the tiny model from memorising one orientation only
                x, y = x.flip(-1), y.flip(-1)
            logits = model(x)
            prob = logits.softmax(1)
            onehot = F.one_hot(y, 3).permute(0, 3, 1, 2).float()
            inter = (prob * onehot).sum((0, 2, 3))
            dice = (2 * inter + 1) / (prob.sum((0, 2, 3)) + onehot.sum((0, 2, 3)) + 1)
            loss = F.cross_entropy(logits, y, weight=class_weight) + (1 - dice[1:]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
    finally:
        torch.set_num_threads(threads)
    metadata = ModelMetadata(
        plane_size=FIXTURE_PLANE,
        context=FIXTURE_CONTEXT,
        window=FIXTURE_WINDOW,
        model_config=config.to_dict(),
        versions=current_versions(),
        extra={"training": f"tests/model_fixtures.py: {TRAIN_STEPS} steps on lits117_roi128"},
    )
    return model, metadata


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """A session folder for the model files."""
    return tmp_path_factory.mktemp("models")


def _cache_key() -> str:
    """Changes whenever the network code, this recipe or torch changes, so a cached model is never stale."""
    import resunet_trt.model
    import torch

    h = hashlib.sha256()
    h.update(Path(resunet_trt.model.__file__).read_bytes())
    h.update(Path(__file__).read_bytes())
    h.update(torch.__version__.encode())
    return h.hexdigest()[:16]


@pytest.fixture(scope="session")
def trained_checkpoint(request, model_dir, lits117) -> Path:
    """A .pt checkpoint of a tiny ResUNet trained on lits117_roi128 (plane 128, context 3).

    Training takes about half a minute on an idle 2-core machine; the result is also kept in pytest's cache
    folder (.pytest_cache, keyed by the network code and this recipe) so later runs reuse it. With the cache
    plugin disabled (-p no:cacheprovider) it is trained once per session.
    """
    from resunet_trt.model import save_checkpoint

    path = model_dir / "tiny.pt"
    cache = getattr(request.config, "cache", None)
    cached = cache.mkdir(f"resunet_tiny_model_{_cache_key()}") / "tiny.pt" if cache is not None else None
    if cached is not None and cached.is_file():
        shutil.copyfile(cached, path)
        return path
    hu, labels = lits117
    model, metadata = _train_tiny_model(hu, labels)
    save_checkpoint(path, model, metadata)
    if cached is not None:
        save_checkpoint(cached, model, metadata)
    return path


@pytest.fixture(scope="session")
def onnx_fp32(model_dir, trained_checkpoint) -> Path:
    """The fp32 ONNX export of :func:`trained_checkpoint`."""
    from resunet_trt.export import export_onnx

    return export_onnx(trained_checkpoint, model_dir / "tiny.onnx")


@pytest.fixture(scope="session")
def onnx_fp16(model_dir, onnx_fp32) -> Path:
    """The FP16 variant (fp32 I/O)."""
    from resunet_trt.export import convert_fp16

    return convert_fp16(onnx_fp32, model_dir / "tiny.fp16.onnx")


@pytest.fixture(scope="session")
def onnx_int8(model_dir, onnx_fp32, lits_small, totalseg) -> Path:
    """The INT8 Q/DQ variant, calibrated on the two CT cases the model was not trained on."""
    from resunet_trt.export import quantize_int8

    return quantize_int8(
        onnx_fp32,
        model_dir / "tiny.int8.onnx",
        volumes=[lits_small[0], totalseg[0]],
        method="percentile",
        max_slices=64,
        # Fully int8: the sensitivity search of the default "auto" costs about 40 s here and has its own tests
        # (tests/test_int8_sensitivity.py).
        float_nodes="none",
    )


@pytest.fixture(scope="session")
def eval_inputs(lits117) -> np.ndarray:
    """Network input for every slice of lits117_roi128: float32 (128, 3, 128, 128)."""
    from resunet_trt import kernels

    hu, _ = lits117
    x = kernels.preprocess(
        hu, window=FIXTURE_WINDOW, out_size=FIXTURE_PLANE, context=FIXTURE_CONTEXT, dtype="float32"
    )
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))
