"""Train the ResUNet: ``python training/train.py --config training/configs/default.yaml --data DIR``.

One process on CPU or one GPU, or several through ``torchrun`` (DDP; gloo on CPU, nccl on CUDA)::

    python training/train.py --config training/configs/default.yaml --data /data/LiTS --run-dir runs/lits
    torchrun --nproc_per_node 4 training/train.py --config training/configs/default.yaml --data /data/LiTS
    python training/train.py --run-dir runs/lits --resume            # continue exactly where it stopped
    python training/train.py ... --override optim.epochs=50 --override optim.lr=3e-3

Defaults live in ``training/configs/default.yaml`` (used when there is no ``--config``); a ``--config`` file and
``--override`` change only the keys they name.

What a run leaves in its folder (rank 0 only): ``config.yaml`` (the full configuration used, augmentation and loss
values included), ``command.txt`` (the command line of the start and of every resume), ``metrics.jsonl``
(one JSON object per epoch: losses, learning rate, validation metrics), ``best.pt`` and ``last.pt`` (inference
checkpoints written by :func:`resunet_trt.model.save_checkpoint`: weights, model config, preprocessing, class
names, training summary, metrics; they load with ``torch.load(weights_only=True)``) and ``resume.pt`` (optimizer,
scheduler, GradScaler and RNG states for ``--resume``).

Stochastic weight averaging (``optim.swa_start_epoch`` > 0): from the end of that epoch on, the weights after
every epoch join an equal-weight average (kept in ``resume.pt``, so resuming keeps it). During the run ``last.pt``
holds the plain weights; at the end the average, its BatchNorm statistics recomputed on ``optim.swa_bn_batches``
training batches, is written to ``swa.pt`` and replaces ``last.pt``, and is validated once (a ``"swa": true``
record in ``metrics.jsonl``).

Determinism: each epoch's slice draws and augmentations are a pure function of (seed, epoch, sample), and the
torch/numpy/python RNGs are re-seeded from (seed, epoch) at the start of every epoch, so a run resumed at an epoch
boundary repeats the uninterrupted run exactly on the CPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import random
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

if __package__ in (None, ""):  # run as a script: make `training` (and, from a source tree, `resunet_trt`) importable
    import importlib.util

    _ROOT = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(_ROOT))
    if importlib.util.find_spec("resunet_trt") is None and (_ROOT / "python" / "resunet_trt").is_dir():
        sys.path.insert(1, str(_ROOT / "python"))

from resunet_trt._progress import progress as progress_bar
from resunet_trt.files import atomic_write, atomic_write_text

from training.augment import AugmentConfig, augment_sample, random_crop
from training.synthetic_tumors import TumorConfig, insert_tumors
from training.data import (
    Case,
    PreparedCase,
    Sampling,
    SamplingConfig,
    epoch_seed,
    find_cases,
    load_case,
    phantom_cases,
    prepare_case,
    sample_slices,
    split_cases,
)
from training.losses import LossConfig

logger = logging.getLogger("resunet_trt.train")

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent / "configs" / "default.yaml"


def read_default_config() -> dict[str, Any]:
    """The training defaults: ``training/configs/default.yaml``, the one place where they are written down."""
    return read_config_file(DEFAULT_CONFIG_PATH)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The YAML mapping in ``path``.

    Raises:
        ValueError: the file is missing or does not hold a mapping.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file not found: {path}")
    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: the config must be a YAML mapping, got {type(loaded).__name__}")
    return loaded


DEFAULT_CONFIG: dict[str, Any] = read_default_config()


# ---- configuration ------------------------------------------------------------------------------------------


def deep_update(base: dict[str, Any], new: dict[str, Any], *, where: str = "") -> dict[str, Any]:
    """Recursively merge ``new`` into a copy of ``base``; unknown top-level sections are an error."""
    out = copy.deepcopy(base)
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value, where=f"{where}{key}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_override(config: dict[str, Any], text: str) -> None:
    """Apply ``section.key=value`` (value parsed as YAML) in place."""
    import yaml

    if "=" not in text:
        raise ValueError(f"--override expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ValueError(f"--override expects key=value, got {text!r}")
    node = config
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            raise ValueError(f"--override {key}: {p!r} is not a config section")  # noqa: TRY004 - user input
        node = node[p]
    if parts[-1] not in node:
        raise ValueError(f"--override {key}: unknown key (known here: {sorted(node)})")
    node[parts[-1]] = yaml.safe_load(raw)


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The defaults (``training/configs/default.yaml``) updated by the YAML file at ``path``, then by
    ``overrides``."""
    if path is None:
        return _merged_config(read_default_config(), {}, "defaults", overrides)
    return _merged_config(read_default_config(), read_config_file(path), path, overrides)


def _merged_config(
    defaults: dict[str, Any], loaded: dict[str, Any], path: str | Path, overrides: Sequence[str]
) -> dict[str, Any]:
    """``defaults`` updated by ``loaded`` (read from ``path``; unknown sections are an error), then ``overrides``."""
    unknown = sorted(set(loaded) - set(defaults))
    if unknown:
        raise ValueError(f"{path}: unknown config sections {unknown}; known: {sorted(defaults)}")
    config = deep_update(defaults, loaded)
    for text in overrides:
        apply_override(config, text)
    return config


def load_run_config(run_dir: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The configuration recorded in ``run_dir/config.yaml`` (for ``--resume``), then ``overrides``.

    Runs recorded before the augmentation and loss values were written out hold ``{}`` there, which meant the
    dataclass defaults of :class:`AugmentConfig` and :class:`LossConfig`; those values are filled in, so such a
    run continues with what it started with rather than with today's defaults.
    """
    path = Path(run_dir) / "config.yaml"
    snapshot = read_config_file(path)
    for key, cls in (("augment", AugmentConfig), ("loss", LossConfig)):
        if snapshot.get(key) == {}:
            snapshot[key] = _jsonable(asdict(cls()))
    return _merged_config(DEFAULT_CONFIG, snapshot, path, overrides)


def record_command(path: Path, command: str) -> None:
    """Append ``command`` as one line to the run's ``command.txt`` (start first, then every resume), atomically."""
    previous = path.read_text() if path.is_file() else ""
    if previous and not previous.endswith("\n"):
        previous += "\n"
    atomic_write_text(path, previous + command + "\n")


def _atomic_torch_save(obj: Any, path: Path) -> None:
    import torch

    with atomic_write(path) as tmp:
        torch.save(obj, tmp)


# ---- distributed --------------------------------------------------------------------------------------------


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): gloo on CPU, nccl on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist

    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo", rank=info.rank, world_size=world)
    return info


# ---- data pipeline ------------------------------------------------------------------------------------------


class SliceDataset:
    """Map-style dataset over the current epoch's sample table: item i -> (image (K, h, w) float32 tensor,
    label (h, w) int64 tensor, liver_only bool). The table is set per epoch by :meth:`set_epoch`."""

    def __init__(self, cases: list[PreparedCase], sampling: SamplingConfig, augment: AugmentConfig, seed: int,
                 *, tumors: TumorConfig | None = None, window: tuple[float, float] = (-200.0, 250.0)):
        self.cases = cases
        self.sampling = sampling
        self.augment = augment
        self.seed = seed
        self.tumors = tumors if tumors is not None and tumors.probability > 0 else None
        self.window = window
        self.table = np.zeros((0, 3), np.int64)

    def set_epoch(self, epoch: int) -> None:
        self.table = sample_slices(self.cases, self.sampling, seed=self.seed, epoch=epoch)

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> tuple[Any, Any, bool]:
        import torch

        c, s, aug_seed = (int(v) for v in self.table[i])
        case = self.cases[c]
        rng = np.random.default_rng(aug_seed)
        image, label = case.x[s], case.y[s]
        if self.tumors is not None and case.kind != "negative":
            image, label = self._synthetic_tumors(case, image, label, rng)
        image, label = augment_sample(image, label, self.augment, rng)
        if self.sampling.crop_size is not None:
            image, label = random_crop(image, label, self.sampling.crop_size, rng,
                                       foreground_prob=self.sampling.crop_foreground_prob)
        return torch.from_numpy(image), torch.from_numpy(label.astype(np.int64)), case.kind == "liver_only"


    def _synthetic_tumors(self, case: PreparedCase, image: np.ndarray, label: np.ndarray,
                          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Insert synthetic tumors into the liver of one (K, h, w) sample, in HU, before augmentation.

        The K channels are slices ``slice_mm`` apart; the centre slice's liver mask (without its real tumors)
        stands for all K, and the label gains class 2 where the centre slice got a tumor."""
        assert self.tumors is not None  # noqa: S101 - checked by the caller
        liver = label == 1
        if not liver.any():
            return image, label
        lo, hi = self.window
        hu = lo + np.asarray(image, np.float32) * (hi - lo)
        k = hu.shape[0]
        stack = np.ascontiguousarray(np.broadcast_to(liver, hu.shape))
        new_hu, tumor = insert_tumors(hu, stack, (case.slice_mm, *case.pixel_mm), rng, self.tumors)
        if not tumor.any():
            return image, label
        image = np.clip((new_hu - lo) / (hi - lo), 0.0, 1.0).astype(image.dtype)
        label = np.where(tumor[k // 2], np.uint8(2), label).astype(label.dtype)
        return image, label


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)


# ---- model, schedule ----------------------------------------------------------------------------------------


def lr_factor(step: int, *, total: int, warmup: int, schedule: str, power: float, min_ratio: float) -> float:
    """Multiplier of the base learning rate at optimizer step ``step``: linear warmup, then cosine or poly decay
    to ``min_ratio``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * t))
    elif schedule == "poly":
        decay = (1.0 - t) ** power
    else:
        raise ValueError(f"optim.schedule must be 'cosine' or 'poly', got {schedule!r}")
    return min_ratio + (1.0 - min_ratio) * decay


def _amp_dtype(setting: str, device_type: str) -> Any:
    import torch

    if device_type != "cuda" or setting in ("off", "none", False, None):
        return None
    if setting == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if setting == "bf16":
        return torch.bfloat16
    if setting == "fp16":
        return torch.float16
    raise ValueError(f"optim.amp must be 'auto', 'bf16', 'fp16' or 'off', got {setting!r}")


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    import torch

    np_state = np.random.get_state()
    state = {
        "python": [list(random.getstate()[1]), random.getstate()[0]],
        "numpy": [torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import torch

    random.setstate((state["python"][1], tuple(state["python"][0]), None))
    key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", key.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- validation ---------------------------------------------------------------------------------------------


def predict_case(model: Any, case: PreparedCase, *, device: Any, batch_size: int, amp_dtype: Any) -> np.ndarray:
    """Labels uint8 (D, H, W) at the case's original resolution, through ``kernels.logits_to_labels``."""
    import torch
    from resunet_trt import kernels

    out = np.empty(case.labels.shape, np.uint8)
    hw = case.labels.shape[1:]
    with torch.no_grad():
        for start in range(0, case.x.shape[0], batch_size):
            xb = torch.from_numpy(np.asarray(case.x[start : start + batch_size], dtype=np.float32)).to(device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(xb)
            mapping = {} if case.step is None else {"step": case.step, "origin": case.origin}
            out[start : start + len(xb)] = kernels.logits_to_labels(
                np.ascontiguousarray(logits.float().cpu().numpy()), out_size=hw, **mapping
            )
    return out


def validate(model: Any, cases: list[PreparedCase], *, device: Any, batch_size: int, amp_dtype: Any) -> dict[str, Any]:
    """Per-volume Dice/IoU/precision/recall for liver (labels >= 1) and tumor (label 2; full-label cases only)."""
    model.eval()
    per_case = {}
    for case in cases:
        pred = predict_case(model, case, device=device, batch_size=batch_size, amp_dtype=amp_dtype)
        per_case[case.name] = volume_metrics(pred, case.labels, tumor=case.kind == "full")
    model.train()
    return {"cases": per_case, "mean_dice": mean_dice(per_case), **_class_means(per_case)}


def volume_metrics(pred: np.ndarray, gt: np.ndarray, *, tumor: bool) -> dict[str, dict[str, float]]:
    """Dice, IoU, precision and recall of one (D, H, W) prediction, per class, by ``resunet_trt.metrics``."""
    from resunet_trt.metrics import evaluate_case

    classes = ("liver", "tumor") if tumor else ("liver",)
    scores = evaluate_case(pred, gt, (1.0, 1.0, 1.0), classes=classes, surface=False)
    return {c: {k: float(scores[c][k]) for k in ("dice", "iou", "precision", "recall")} for c in classes}


def mean_dice(per_case: dict[str, dict[str, dict[str, float]]]) -> float:
    """Model-selection score: the mean over cases of the mean Dice of the classes scored in each case."""
    if not per_case:
        return float("nan")
    return float(np.mean([np.mean([v["dice"] for v in case.values()]) for case in per_case.values()]))


def _class_means(per_case: dict[str, Any]) -> dict[str, float]:
    out = {}
    for cls in ("liver", "tumor"):
        for m in ("dice", "iou", "precision", "recall"):
            vals = [v[cls][m] for v in per_case.values() if cls in v]
            if vals:
                out[f"{cls}_{m}"] = float(np.mean(vals))
    return out


# ---- the run ------------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What :func:`train` returns: the trained module (unwrapped, in eval mode; the weight average when SWA ran to
    the end), the run folder, the last validation, and the per-epoch history."""

    model: Any
    run_dir: Path
    best_metric: float | None
    history: list[dict[str, Any]] = field(default_factory=list)
    best_summary: str = ""  # where best.pt is and what "best" meant (see describe_best)


def describe_best(history: Sequence[dict[str, Any]], *, best_path: Path, select_best: bool, n_val: int,
                  epochs: int) -> str:
    """One line for the end of a run: where the best checkpoint is and what "best" meant in this run.

    Args:
        history: the per-epoch records (``metrics.jsonl``); validated epochs carry ``val.mean_dice``.
        best_path: the run's ``best.pt``.
        select_best: ``val.select_best`` (False: best.pt holds the last validated weights).
        n_val: number of validation cases.
        epochs: ``optim.epochs``, the planned length of the run.
    """
    done = int(history[-1]["epoch"]) if history else 0
    progress = f"after {done} of {epochs} epochs"
    validated = [r for r in history if "val" in r]
    if not validated:
        return (f"best checkpoint: {best_path} = the weights of the last epoch ({progress}); there was no "
                "validation case to choose by (give --val-data or set data.val_fraction > 0)")
    if select_best:
        rec = max(validated, key=lambda r: float(r["val"]["mean_dice"]))  # the first of equal scores, as saved
        chosen = "the highest validation mean Dice"
    else:
        rec = validated[-1]
        chosen = "the last validation (val.select_best is false), mean Dice"
    return (f"best checkpoint: {best_path} = epoch {rec['epoch']}, {chosen} {float(rec['val']['mean_dice']):.4f} "
            f"(liver and tumor Dice averaged over {n_val} validation case{'s' if n_val != 1 else ''}; {progress})")


def _collect_cases(config: dict[str, Any]) -> tuple[list[Case], list[Case]]:
    """Load (train cases, validation cases), checking every file before any training starts."""
    dcfg = config["data"]
    seed = int(config["seed"])
    specs_by_role: list[tuple[Any, str]] = []
    for src in dcfg["sources"]:
        specs_by_role += [(s, "pool") for s in find_cases(src)]
    for src in dcfg["liver_only_sources"]:
        specs_by_role += [(s, "pool") for s in find_cases(src, kind="liver_only")]
    for src in dcfg["val_sources"]:
        specs_by_role += [(s, "val") for s in find_cases(src)]
    names = [s.name for s, _ in specs_by_role]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"case names appear twice across data sources: {dup}")
    pphan = dcfg["phantoms"]
    if not specs_by_role and int(pphan.get("count", 0)) <= 0:
        raise ValueError("no training data: give --data DIR (or data.sources in the config) or data.phantoms.count")
    loaded = {s.name: load_case(s) for s, _ in specs_by_role}  # every file checked here, before training
    pool = [s.name for s, role in specs_by_role if role == "pool"]
    forced_val = [s.name for s, role in specs_by_role if role == "val"]
    train_names, val_names = split_cases(
        pool, val_fraction=float(dcfg["val_fraction"]), seed=seed, val_names=dcfg["val_cases"]
    ) if pool else ([], [])
    train = [loaded[n] for n in train_names]
    val = [loaded[n] for n in val_names + forced_val]
    n_ph, n_ph_val = int(pphan.get("count", 0)), int(pphan.get("val_count", 0))
    phantoms = phantom_cases(n_ph + n_ph_val, shape=pphan["shape"], spacing=pphan["spacing"], seed=int(pphan["seed"]))
    train += phantoms[:n_ph]
    val += phantoms[n_ph:]
    if not train:
        raise ValueError("the split left no training case")
    return train, val


@dataclass
class RunPlan:
    """What the configuration fixes before any data is read: input, model, sampling, optimisation."""

    plane: tuple[int, int]
    context: int
    window: tuple[float, float]
    pixel_mm: float | None
    slice_mm: float | None
    model_cfg: Any
    sampling: SamplingConfig
    augment: AugmentConfig
    loss: LossConfig
    optim: dict[str, Any]
    val: dict[str, Any]
    seed: int
    batch_size: int
    epochs: int
    amp_dtype: Any
    init_from: str | None = None
    swa_start: int = 0  # optim.swa_start_epoch: 0 = no weight averaging
    swa_bn_batches: int = 16


def _init_weights_from(model: Any, path: Path, plan: RunPlan) -> None:
    """Start from the weights of another checkpoint (fine-tuning); its network and input sampling must match."""
    from resunet_trt.model import load_checkpoint

    source, meta = load_checkpoint(path)
    if source.config != plan.model_cfg:
        raise ValueError(f"init_from {path}: its network {source.config} differs from this run's {plan.model_cfg}")
    wanted = (plan.plane, plan.context, plan.window, plan.pixel_mm, plan.slice_mm)
    have = (tuple(meta.plane_size), meta.context, tuple(meta.window), meta.pixel_mm, meta.slice_mm)
    if have != wanted:
        raise ValueError(f"init_from {path}: it was fed {have} (plane, context, window, pixel_mm, slice_mm), "
                         f"this run feeds {wanted}")
    model.load_state_dict(source.state_dict())
    logger.info("weights initialised from %s", path)


@dataclass
class RunState:
    """What ``resume.pt`` restores: the model, its optimiser, schedule and scaler, and where the run stands."""

    model: Any
    net: Any
    optimizer: Any
    scheduler: Any
    scaler: Any
    start_epoch: int = 0
    best: float | None = None
    bad_evals: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    swa: Any = None  # AveragedModel of the unwrapped model's parameters (optim.swa_start_epoch > 0)


def _torch_device(device: str, threads: int) -> tuple[Any, str, DistInfo]:
    """(torch device, its type, the distributed setup) for ``device`` (``"auto"``, ``"cpu"``, ``"cuda[:N]"``)."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev_type = torch.device(device).type
    dist_info = init_distributed(dev_type)
    if dev_type == "cuda":
        dev = torch.device("cuda", dist_info.local_rank if dist_info.enabled else (torch.device(device).index or 0))
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if threads > 0:
        torch.set_num_threads(threads)
    return dev, dev_type, dist_info


def _run_plan(config: dict[str, Any], dev_type: str) -> RunPlan:
    """Read and check the configuration; the augmentation and loss values used are written back into it."""
    from resunet_trt.model import ResUNetConfig, check_plane_size

    pcfg = config["preprocess"]
    plane = (int(pcfg["plane_size"][0]), int(pcfg["plane_size"][1]))
    context = int(pcfg["context"])
    model_cfg = ResUNetConfig.from_dict({**config["model"], "in_channels": context, "num_classes": 3})
    check_plane_size(model_cfg, plane)
    sampling = SamplingConfig(**config["sampling"])
    if sampling.crop_size is not None:
        check_plane_size(model_cfg, sampling.crop_size)
    augment = AugmentConfig.from_dict(config["augment"])
    loss_cfg = LossConfig.from_dict(config["loss"])
    config["augment"], config["loss"] = _jsonable(asdict(augment)), _jsonable(asdict(loss_cfg))  # values used
    ocfg = config["optim"]
    swa_start, swa_bn_batches = _swa_settings(ocfg)
    return RunPlan(
        plane=plane,
        context=context,
        window=(float(pcfg["window"][0]), float(pcfg["window"][1])),
        pixel_mm=None if pcfg.get("pixel_mm") is None else float(pcfg["pixel_mm"]),
        slice_mm=None if pcfg.get("slice_mm") is None else float(pcfg["slice_mm"]),
        model_cfg=model_cfg,
        sampling=sampling,
        augment=augment,
        loss=loss_cfg,
        optim=ocfg,
        val=config["val"],
        seed=int(config["seed"]),
        batch_size=int(ocfg["batch_size"]),
        epochs=int(ocfg["epochs"]),
        amp_dtype=_amp_dtype(ocfg["amp"], dev_type),
        init_from=None if config.get("init_from") is None else str(config["init_from"]),
        swa_start=swa_start,
        swa_bn_batches=swa_bn_batches,
    )


def _swa_settings(ocfg: dict[str, Any]) -> tuple[int, int]:
    """(``optim.swa_start_epoch``, ``optim.swa_bn_batches``), checked.

    Raises:
        ValueError: the start is not an integer in [0, optim.epochs], or the batch count not an integer >= 1.
    """
    epochs = int(ocfg["epochs"])
    start, bn_batches = ocfg["swa_start_epoch"], ocfg["swa_bn_batches"]
    if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start <= epochs:
        raise ValueError(f"optim.swa_start_epoch must be an integer in [0, optim.epochs = {epochs}] "
                         f"(0 = no weight averaging), got {start!r}")
    if isinstance(bn_batches, bool) or not isinstance(bn_batches, int) or bn_batches < 1:
        raise ValueError(f"optim.swa_bn_batches must be an integer >= 1, got {bn_batches!r}")
    return start, bn_batches


def _prepare_data(config: dict[str, Any], plan: RunPlan) -> tuple[list[PreparedCase], list[PreparedCase]]:
    """(training cases, validation cases) as network input, every file checked before the first step."""
    t0 = time.perf_counter()
    train_cases, val_cases = _collect_cases(config)
    prep = Sampling(window=plan.window, plane_size=plan.plane, context=plan.context, pixel_mm=plan.pixel_mm,
                    slice_mm=plan.slice_mm, divisor=plan.model_cfg.divisor, dtype=config["data"]["cache_dtype"])
    train_prep = [prepare_case(c, prep) for c in train_cases]
    val_prep = [prepare_case(c, prep) for c in val_cases]
    if bool(plan.val["on_train_cases"]):  # an overfitting check: score the training cases themselves
        val_prep += [c for c in train_prep if not c.name.startswith("phantom-")]
    logger.info(
        "data: %d training cases (%s), %d validation cases (%s), prepared in %.1f s",
        len(train_prep), ", ".join(c.name for c in train_prep), len(val_prep),
        ", ".join(c.name for c in val_prep) or "none", time.perf_counter() - t0,
    )
    return train_prep, val_prep


def _build_state(
    plan: RunPlan, dev: Any, dist_info: DistInfo, *, total_steps: int, warmup_steps: int,
    resume_from: Path | None,
) -> RunState:
    """Model, optimiser, schedule and scaler, seeded; restored exactly from ``resume_from`` when given."""
    import torch
    from resunet_trt.model import ResUNet

    ocfg = plan.optim
    _seed_everything(epoch_seed(plan.seed, -1))
    model = ResUNet(plan.model_cfg).to(dev)
    if plan.init_from is not None and resume_from is None:
        _init_weights_from(model, Path(plan.init_from), plan)
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(ocfg["lr"]), weight_decay=float(ocfg["weight_decay"]))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(step, total=total_steps, warmup=warmup_steps, schedule=str(ocfg["schedule"]),
                               power=float(ocfg["poly_power"]), min_ratio=float(ocfg["min_lr_ratio"])),
    )
    scaler = torch.amp.GradScaler(dev.type, enabled=plan.amp_dtype == torch.float16)
    state = RunState(model=model, net=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler)
    saved: dict[str, Any] = {}
    if resume_from is not None:
        saved = torch.load(resume_from, map_location=dev, weights_only=True)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        _set_rng_state(saved["rng"])
        state.start_epoch, state.best, state.bad_evals = int(saved["epoch"]), saved["best"], int(saved["bad_evals"])
        state.history = json.loads(saved["history"])
        logger.info("resumed from %s at epoch %d", resume_from, state.start_epoch)
        if state.start_epoch >= plan.epochs and dist_info.is_main:
            logger.warning("the run in %s has already finished (%d of %d epochs): nothing to train; to train "
                           "longer, resume with --override optim.epochs=N (N > %d)", resume_from.parent,
                           state.start_epoch, plan.epochs, plan.epochs)
    if plan.swa_start > 0:
        from torch.optim.swa_utils import AveragedModel

        # parameters only: BatchNorm statistics of averaged weights are recomputed at the end (_finish_swa)
        state.swa = AveragedModel(model, use_buffers=False)
        if "swa" in saved:
            state.swa.load_state_dict(saved["swa"])
        elif resume_from is not None and state.start_epoch >= plan.swa_start and dist_info.is_main:
            logger.warning("%s holds no weight average (written before SWA was on): averaging starts "
                           "empty at epoch %d although optim.swa_start_epoch is %d", resume_from,
                           state.start_epoch + 1, plan.swa_start)
    if dist_info.enabled:
        state.net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None
        )
    return state


def _train_epoch(
    state: RunState, loader: Any, plan: RunPlan, dev: Any, *, steps: int, bar_label: str | None,
) -> tuple[int, dict[str, float]]:
    """One epoch of optimiser steps (at most ``steps``); returns the steps taken and the summed loss parts."""
    import torch

    from training.losses import segmentation_loss

    ocfg, amp_dtype = plan.optim, plan.amp_dtype
    state.model.train()
    sums: dict[str, float] = {}
    n_steps = 0
    bar = progress_bar(loader, enabled=bar_label is not None, desc=bar_label, total=steps, leave=False,
                       dynamic_ncols=True)
    for x, y, liver_only in bar:
        x, y, liver_only = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True), liver_only.to(dev)
        state.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = state.net(x)
        loss, parts = segmentation_loss(logits, y, liver_only, plan.loss)
        state.scaler.scale(loss).backward()
        if float(ocfg["grad_clip"]) > 0:
            state.scaler.unscale_(state.optimizer)
            torch.nn.utils.clip_grad_norm_(state.model.parameters(), float(ocfg["grad_clip"]))
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.scheduler.step()
        n_steps += 1
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v
        if bar_label is not None and hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{parts['loss']:.3f}", lr=f"{state.scheduler.get_last_lr()[0]:.2e}")
        if n_steps >= steps:
            break
    return n_steps, sums


def _validate_epoch(
    state: RunState, record: dict[str, Any], val_prep: list[PreparedCase], plan: RunPlan, dev: Any,
    dist_info: DistInfo,
) -> tuple[dict[str, Any] | None, bool, bool]:
    """Score the validation cases (on the main rank); returns (scores, improved, stop early)."""
    vcfg = plan.val
    scores, improved, stop = None, False, False
    if dist_info.is_main:
        scores = validate(state.model, val_prep, device=dev, batch_size=int(vcfg["batch_size"]),
                          amp_dtype=plan.amp_dtype)
        record["val"] = _jsonable(scores)
        score = scores["mean_dice"]
        improved = state.best is None or score > state.best or not bool(vcfg["select_best"])
        if improved:
            state.best, state.bad_evals = score, 0
        else:
            state.bad_evals += 1
        patience = int(vcfg["early_stop_patience"])
        stop = patience > 0 and state.bad_evals >= patience
        logger.info("epoch %d: loss %.4f, val mean Dice %.4f (liver %.4f, tumor %s)%s", record["epoch"],
                    record.get("train_loss", float("nan")), score, scores.get("liver_dice", float("nan")),
                    f"{scores['tumor_dice']:.4f}" if "tumor_dice" in scores else "n/a",
                    " *" if improved else "")
    return scores, improved, _broadcast_flag(stop, dist_info)


def _save_resume_state(state: RunState, path: Path, epoch: int) -> None:
    """Everything :func:`_build_state` needs to continue exactly after ``epoch``, written atomically."""
    _atomic_torch_save(
        {
            "model": state.model.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "scheduler": state.scheduler.state_dict(),
            "scaler": state.scaler.state_dict(),
            "rng": _rng_state(),
            "epoch": epoch,
            "best": state.best,
            "bad_evals": state.bad_evals,
            "history": json.dumps(state.history),
            **({"swa": state.swa.state_dict()} if state.swa is not None else {}),
        },
        path,
    )


def _swa_bn_batches(dataset: SliceDataset, plan: RunPlan, *, first_draw: int, workers: int,
                    pin_memory: bool) -> Iterator[Any]:
    """The first ``plan.swa_bn_batches`` input batches (N, K, h, w) of the training pipeline after the run.

    They come from the sample draws of the epochs that would follow (0-based epoch indices ``first_draw``,
    ``first_draw + 1``, ...), in order, ``plan.batch_size`` samples each, augmented as in training: a pure
    function of the seed, so a resumed run recomputes the same statistics.
    """
    import torch
    from torch.utils.data import DataLoader

    given, draw = 0, first_draw
    while given < plan.swa_bn_batches:
        _seed_everything(epoch_seed(plan.seed, draw))
        dataset.set_epoch(draw)
        loader: Any = DataLoader(cast(Any, dataset), batch_size=plan.batch_size, shuffle=False,
                                 drop_last=True, num_workers=workers, pin_memory=pin_memory,
                                 worker_init_fn=_worker_init if workers > 0 else None,
                                 generator=torch.Generator().manual_seed(epoch_seed(plan.seed, draw)))
        if len(loader) == 0:
            logger.warning("an epoch's draw holds no full batch: BatchNorm statistics from %d batches", given)
            return
        for x, _, _ in loader:
            yield x
            given += 1
            if given >= plan.swa_bn_batches:
                return
        draw += 1


def _finish_swa(state: RunState, dataset: SliceDataset, plan: RunPlan, dev: Any, *, epochs_done: int,
                workers: int) -> Any:
    """The averaged network, its BatchNorm running statistics recomputed; None when nothing was averaged.

    The statistics are reset and accumulated with equal weight per batch (momentum None) over
    :func:`_swa_bn_batches`, forward in train mode without gradients, under the run's autocast.
    """
    import torch
    from torch.optim.swa_utils import update_bn

    assert state.swa is not None  # noqa: S101 - checked by the caller
    if int(state.swa.n_averaged) == 0:
        logger.warning("no weights were averaged (optim.swa_start_epoch %d, %d epochs done): no swa.pt",
                       plan.swa_start, epochs_done)
        return None
    averaged = state.swa.module
    batches = _swa_bn_batches(dataset, plan, first_draw=epochs_done, workers=workers,
                              pin_memory=dev.type == "cuda")
    with torch.autocast(dev.type, dtype=plan.amp_dtype, enabled=plan.amp_dtype is not None):
        update_bn(batches, averaged, device=dev)
    return averaged


def train(
    config: dict[str, Any],
    *,
    resume: bool = False,
    command: str | None = None,
    device: str = "auto",
    stop_after: int | None = None,
) -> TrainResult:
    """Run (or resume) a training described by ``config`` (see DEFAULT_CONFIG and training/configs/default.yaml).

    The steps: the device, the plan the configuration fixes (:class:`RunPlan`), the data (every file checked
    before the first step), the model state (:class:`RunState`, restored exactly on resume), then per epoch:
    optimiser steps, validation and the choice of the best checkpoint, and the checkpoints.

    Args:
        config: the full configuration.
        resume: continue from ``run_dir/resume.pt`` (exactly: model, optimizer, scheduler, scaler, RNG, epoch).
        command: the command line, recorded in the checkpoints.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:N]"``.
        stop_after: run at most this many epochs in this call (the schedule still spans ``optim.epochs``);
            continue later with ``resume=True``. For time-boxed jobs.

    Returns:
        :class:`TrainResult`.
    """
    import torch
    from resunet_trt.metadata import ModelMetadata
    from resunet_trt.model import count_parameters, save_checkpoint
    from torch.utils.data import DataLoader, DistributedSampler

    config = json.loads(json.dumps(config, default=str))  # paths -> str: the config is written as YAML and JSON
    dev, dev_type, dist_info = _torch_device(device, int(config.get("threads", 0)))
    run_dir = Path(config["run_dir"])
    state_path = run_dir / "resume.pt"
    if resume and not state_path.is_file():
        raise ValueError(f"--resume: no resume state at {state_path}")
    if dist_info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    plan = _run_plan(config, dev_type)
    epochs, batch_size = plan.epochs, plan.batch_size

    train_prep, val_prep = _prepare_data(config, plan)
    tumors = TumorConfig.from_dict(config.get("synthetic_tumors") or {"probability": 0.0})
    dataset = SliceDataset(train_prep, plan.sampling, plan.augment, plan.seed, tumors=tumors, window=plan.window)
    steps_per_epoch = max(1, plan.sampling.samples_per_epoch // dist_info.world_size // batch_size)
    state = _build_state(plan, dev, dist_info, total_steps=steps_per_epoch * epochs,
                         warmup_steps=round(float(plan.optim["warmup_epochs"]) * steps_per_epoch),
                         resume_from=state_path if resume else None)
    model, history = state.model, state.history

    metadata = ModelMetadata(plane_size=plan.plane, context=plan.context, window=plan.window,
                             model_config=plan.model_cfg.to_dict(), pixel_mm=plan.pixel_mm, slice_mm=plan.slice_mm)
    summary_base = {
        "command": command or "",
        "config": json.loads(json.dumps(config)),
        "train_cases": [c.name for c in train_prep],
        "val_cases": [c.name for c in val_prep],
        "parameters": count_parameters(model),
        "world_size": dist_info.world_size,
        "device": str(dev),
    }
    if dist_info.is_main:
        import yaml

        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
        if command:
            record_command(run_dir / "command.txt", command)
        logger.info("model: %s, %d parameters; %d epochs x %d steps of %d slices%s", plan.model_cfg.widths,
                    count_parameters(model), epochs, steps_per_epoch, batch_size,
                    f" x {dist_info.world_size} ranks" if dist_info.enabled else "")

    def save_inference(path: Path, epoch: int, val: dict[str, Any] | None, *, net: Any = None,
                       swa: dict[str, int] | None = None) -> None:
        extra: dict[str, Any] = {
            "training": {**summary_base, "epochs_done": epoch, "history_tail": history[-3:]},
            "metrics": _jsonable(val) if val else {},
        }
        if swa is not None:
            extra["swa"] = swa
        save_checkpoint(path, model if net is None else net, metadata, extra=extra)

    progress = bool(config.get("progress", True)) and dist_info.is_main
    workers = int(config["loader"]["workers"])
    last_val: dict[str, Any] | None = None
    start_epoch = state.start_epoch
    epochs_done, ended = start_epoch, False  # ended: the schedule ran out or early stopping (not stop_after)
    for epoch in range(start_epoch, epochs):
        ep_seed = epoch_seed(plan.seed, epoch)
        _seed_everything(ep_seed)
        dataset.set_epoch(epoch)
        sampler = (
            DistributedSampler(dataset, num_replicas=dist_info.world_size, rank=dist_info.rank, shuffle=False,
                               drop_last=True)
            if dist_info.enabled else None
        )
        loader = DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, shuffle=False, drop_last=True, num_workers=workers,
            worker_init_fn=_worker_init if workers > 0 else None, pin_memory=dev_type == "cuda",
            generator=torch.Generator().manual_seed(ep_seed),
        )
        t_ep = time.perf_counter()
        n_steps, sums = _train_epoch(state, loader, plan, dev, steps=steps_per_epoch,
                                     bar_label=f"epoch {epoch + 1}/{epochs}" if progress else None)
        elapsed = time.perf_counter() - t_ep
        epochs_done, ended = epoch + 1, epoch + 1 == epochs
        if state.swa is not None and epoch + 1 >= plan.swa_start:
            state.swa.update_parameters(state.model)  # on every rank: the result's weights agree across ranks
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "lr": state.scheduler.get_last_lr()[0],
            "seconds": round(elapsed, 3),
            "slices_per_s": round(n_steps * batch_size * dist_info.world_size / max(elapsed, 1e-9), 2),
            **{f"train_{k}": v / max(1, n_steps) for k, v in sums.items()},
        }

        every = int(plan.val["every"])
        stop = False
        if val_prep and every > 0 and ((epoch + 1) % every == 0 or epoch + 1 == epochs):
            scores, improved, stop = _validate_epoch(state, record, val_prep, plan, dev, dist_info)
            last_val = scores if scores is not None else last_val
            history.append(record)
            if dist_info.is_main and improved:
                save_inference(run_dir / "best.pt", epoch + 1, last_val)
        else:
            history.append(record)
            if dist_info.is_main:
                logger.info("epoch %d: loss %.4f (%.1f slices/s)", epoch + 1, record.get("train_loss", float("nan")),
                            record["slices_per_s"])
        if dist_info.is_main:
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            save_inference(run_dir / "last.pt", epoch + 1, last_val)
            _save_resume_state(state, state_path, epoch + 1)
        if dist_info.enabled:
            import torch.distributed as dist

            dist.barrier()
        if stop_after is not None and epoch + 1 - start_epoch >= stop_after and epoch + 1 < epochs:
            logger.info("stopping after epoch %d as asked; continue with --resume", epoch + 1)
            break
        if stop:
            logger.info("early stopping after epoch %d (no improvement in %d validations)", epoch + 1,
                        state.bad_evals)
            ended = True
            break

    averaged = None
    if state.swa is not None and ended:
        averaged = _finish_swa(state, dataset, plan, dev, epochs_done=epochs_done, workers=workers)
    if averaged is not None and dist_info.is_main:
        swa_info = {"start_epoch": plan.swa_start, "epochs_averaged": int(state.swa.n_averaged),
                    "bn_batches": plan.swa_bn_batches}
        swa_val = None
        if val_prep and int(plan.val["every"]) > 0:
            swa_val = validate(averaged, val_prep, device=dev, batch_size=int(plan.val["batch_size"]),
                               amp_dtype=plan.amp_dtype)
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"epoch": epochs_done, "swa": True, **swa_info, "val": _jsonable(swa_val)})
                        + "\n")
        logger.info("weight average of %d epochs (from epoch %d), BatchNorm statistics from %d batches%s",
                    swa_info["epochs_averaged"], plan.swa_start, plan.swa_bn_batches,
                    f": val mean Dice {swa_val['mean_dice']:.4f}" if swa_val is not None else "")
        for name in ("swa.pt", "last.pt"):
            save_inference(run_dir / name, epochs_done, swa_val, net=averaged, swa=swa_info)

    if dist_info.is_main and not val_prep:
        save_inference(run_dir / "best.pt", len(history), None)
    summary = ""
    if dist_info.is_main:
        summary = describe_best(history, best_path=run_dir / "best.pt", select_best=bool(plan.val["select_best"]),
                                n_val=len(val_prep), epochs=epochs)
    final = model if averaged is None else averaged
    final.eval()
    return TrainResult(model=final, run_dir=run_dir, best_metric=state.best, history=history, best_summary=summary)


def _broadcast_flag(flag: bool, dist_info: DistInfo) -> bool:
    if not dist_info.enabled:
        return flag
    import torch
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.broadcast(t, src=0)
    return bool(t.item())


def _jsonable(obj: Any) -> Any:
    """Plain JSON types only (checkpoints must load with weights_only=True)."""
    return json.loads(json.dumps(obj, default=float))


# ---- CLI ----------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python training/train.py",
        description="Train the resunet-trt ResUNet (liver and tumor segmentation of CT).",
    )
    p.add_argument("--config", type=Path,
                   help="YAML config; only the keys it sets change the defaults (default: "
                        "training/configs/default.yaml)")
    p.add_argument("--data", action="append", default=[], metavar="DIR_OR_CSV",
                   help="data source with liver+tumor labels (LiTS folder, MSD Task03 folder, case folder or "
                        "image,label[,kind] CSV); repeatable")
    p.add_argument("--liver-only-data", action="append", default=[], metavar="DIR_OR_CSV",
                   help="data source whose labels mark the liver only (tumor not annotated); repeatable")
    p.add_argument("--val-data", action="append", default=[], metavar="DIR_OR_CSV",
                   help="data source used only for validation (held out); repeatable")
    p.add_argument("--run-dir", type=Path, help="output folder (config: run_dir)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir exactly")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="set a config value, e.g. optim.lr=1e-3 (value parsed as YAML); repeatable")
    p.add_argument("--stop-after", type=int, metavar="N",
                   help="run at most N epochs now (the schedule still spans optim.epochs); continue with --resume")
    p.add_argument("--device", default="auto",
                   help="auto, cpu, cuda or cuda:N (torchrun sets the local GPU; default: %(default)s)")
    p.add_argument("--export", type=Path, metavar="PT",
                   help="after training, copy the best checkpoint to this path (e.g. the bundled default model)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = list(args.override)
    if args.resume:
        if args.run_dir is None:
            raise SystemExit("--resume needs --run-dir")
        config = load_run_config(args.run_dir, overrides)
    else:
        config = load_config(args.config, overrides)
    data = config["data"]
    data["sources"] = list(data["sources"]) + [str(d) for d in args.data]
    data["liver_only_sources"] = list(data["liver_only_sources"]) + [str(d) for d in args.liver_only_data]
    data["val_sources"] = list(data["val_sources"]) + [str(d) for d in args.val_data]
    if args.resume:  # sources are already in the snapshot; CLI repeats must not duplicate them
        for key in ("sources", "liver_only_sources", "val_sources"):
            data[key] = list(dict.fromkeys(data[key]))
    if args.run_dir is not None:
        config["run_dir"] = str(args.run_dir)
    if args.no_progress:
        config["progress"] = False
    command = " ".join(shlex.quote(a) for a in ["python", "training/train.py", *(sys.argv[1:] if argv is None else argv)])
    try:
        result = train(config, resume=args.resume, command=command, device=args.device,
                       stop_after=args.stop_after)
    except ValueError as exc:
        logging.getLogger("resunet_trt.train").error("%s", exc)
        return 2
    if args.export is not None and int(os.environ.get("RANK", "0")) == 0:
        import shutil

        args.export.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(args.export) as tmp:
            shutil.copyfile(result.run_dir / "best.pt", tmp)
        print(f"exported {result.run_dir / 'best.pt'} -> {args.export}")
    if result.best_summary:
        print(result.best_summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
