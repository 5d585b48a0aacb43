"""``resunet-bench``: speed (and, with labels, accuracy) of the whole pipeline for one or several models.

Examples::

    resunet-bench                                            # bundled default model, a 64x256x256 phantom
    resunet-bench --engine model.plan --synthetic 400,512,512 --device cuda --json bench.json
    resunet-bench --onnx model.int8.onnx --data LiTS/ --repeats 3
    resunet-bench --compare torch,onnx,int8 --synthetic 96,512,512      # the bundled variants side by side
    resunet-bench --compare model.pt,model.onnx,model.plan --data cases/ --json cmp.json

What is timed: :meth:`resunet_trt.Segmenter.segment` on a CT volume already in host memory, i.e. upload,
preprocess, infer, decode, postprocess and download, as reported per stage by ``Result.timings``; ``read``
(loading the case from disk, measured once per case) is reported beside it. Each model first runs ``--warmup``
times on the first input (not recorded), then ``--repeats`` times over all inputs. Reported per model: median
and p90 of every stage and of the wall time per volume, slices/s and volumes/s over the timed runs, the time to
open the model, the peak resident memory of the process (``ru_maxrss``: the peak *so far*, so in a
``--compare`` run it can only grow from one model to the next), and on a GPU the peak memory of PyTorch's
allocator, the size CuPy's memory pool reached, and the most device memory in use seen after a volume (this one
includes TensorRT's own allocations). With reference labels (``--data``, or the phantom's own labels with
``--synthetic``) the Dice and IoU of liver and tumor per case are reported beside the speed. ``--compare`` runs
every model on the same inputs in one process and prints each one's speed and Dice relative to the first.
Each timed run also records the load averages before and after it and the share of the CPU that other
processes used meanwhile; a run where that share exceeds 10 % is flagged ``disturbed`` (see :class:`LoadProbe`).

Models: ``--engine`` (TensorRT .plan), ``--onnx`` (ONNX Runtime), ``--checkpoint`` (PyTorch .pt), nothing (the
bundled default), or ``--compare`` with a comma-separated list whose items are files (the backend follows the
suffix: .plan/.engine TensorRT, .onnx ONNX Runtime, .pt/.pth PyTorch) or names of the bundled variants:
``torch`` (.pt), ``onnx`` (fp32 ONNX), ``fp16`` (FP16 ONNX), ``int8`` (INT8 ONNX) on ONNX Runtime or PyTorch, and
``openvino`` (fp32 ONNX in fp32), ``openvino-bf16`` (fp32 ONNX in bf16) and ``openvino-int8`` (INT8 ONNX) on
OpenVINO.

Exit code: 0 when every model ran, 1 when one failed (the others are still measured), 2 for bad arguments,
missing inputs, or TensorRT asked for where it is not installed.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import logging
import math
import os
import platform
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import backends
from .._progress import progress as progress_bar
from ..engine import tensorrt_available
from ..results import STAGES

logger = logging.getLogger("resunet_trt.bench")

BUNDLED = {
    "torch": ("pt", "torch"),
    "pt": ("pt", "torch"),
    "onnx": ("onnx", "onnxruntime"),
    "fp16": ("fp16", "onnxruntime"),
    "int8": ("int8", "onnxruntime"),
    "openvino": ("onnx", "openvino"),
    "openvino-bf16": ("onnx", "openvino"),
    "openvino-int8": ("int8", "openvino"),
}
#: The precision a bundled variant asks for (the others run in their file's).
BUNDLED_PRECISION = {"openvino": "fp32", "openvino-bf16": "bf16", "openvino-int8": "int8"}
#: The suffixes the backends accept (one table: a suffix they refuse must not be offered here).
SUFFIX_BACKEND = backends.SUFFIX_BACKEND
TENSORRT_HELP = (
    "TensorRT is not installed in this Python environment, so a .plan engine cannot be run. Install it on a "
    "machine with an NVIDIA GPU and driver: `pip install tensorrt` (it needs the matching CUDA runtime), then "
    "build an engine for that GPU with resunet-build. Meanwhile --onnx or --checkpoint run the same model."
)


class UsageError(Exception):
    """Bad arguments or inputs: reported on stderr with exit code 2."""


# ----------------------------------------------------------------------------------------- what to run


@dataclass(frozen=True)
class Variant:
    """One model to measure: a display label, a model file (None = bundled default), a backend, a precision."""

    label: str
    model: Path | None
    backend: str = "auto"
    precision: str | None = None


def _bundled(kind: str) -> Path:
    from resunet_trt.backends import default_model_path

    return Path(default_model_path(kind))


def parse_variant(item: str) -> Variant:
    """A ``--compare`` item: a bundled variant name (torch, onnx, int8, openvino-int8, ...) or a model file."""
    text = item.strip()
    if not text:
        raise UsageError("--compare has an empty item")
    if text.lower() in BUNDLED:
        kind, backend = BUNDLED[text.lower()]
        try:
            return Variant(
                label=text.lower(),
                model=_bundled(kind),
                backend=backend,
                precision=BUNDLED_PRECISION.get(text.lower()),
            )
        except FileNotFoundError as exc:
            raise UsageError(f"--compare {text}: {exc}") from exc
    path = Path(text)
    suffix_backend = SUFFIX_BACKEND.get(path.suffix.lower())
    if suffix_backend is None:
        raise UsageError(
            f"--compare item {text!r} is neither a bundled variant ({', '.join(sorted(BUNDLED))}) nor a model "
            f"file ending in {', '.join(sorted(SUFFIX_BACKEND))}"
        )
    return Variant(label=path.name, model=path, backend=suffix_backend)


def select_variants(args: argparse.Namespace) -> list[Variant]:
    """The models to measure, from the command line (see the module docstring)."""
    chosen = [flag for flag in ("engine", "onnx", "checkpoint", "compare") if getattr(args, flag)]
    if len(chosen) > 1:
        raise UsageError(f"give one of --engine, --onnx, --checkpoint, --compare; got {', '.join(chosen)}")
    if args.engine:
        variants = [Variant(label=Path(args.engine).name, model=Path(args.engine), backend="tensorrt")]
    elif args.onnx:
        variants = [Variant(label=Path(args.onnx).name, model=Path(args.onnx), backend="onnxruntime")]
    elif args.checkpoint:
        variants = [Variant(label=Path(args.checkpoint).name, model=Path(args.checkpoint), backend="torch")]
    elif args.compare:
        variants = [parse_variant(item) for item in args.compare.split(",")]
        if len(variants) < 2:
            raise UsageError(f"--compare needs at least two models, got {args.compare!r}")
    else:
        variants = [Variant(label="default", model=None, backend=args.backend)]
    if args.backend != "auto" and not args.compare:
        variants = [Variant(v.label, v.model, args.backend) for v in variants]
    if any(v.backend == "tensorrt" for v in variants) and not tensorrt_available():
        raise UsageError(TENSORRT_HELP)
    for v in variants:
        if v.model is not None and not v.model.exists():
            raise UsageError(f"model file not found: {v.model}")
    return variants


# ----------------------------------------------------------------------------------------- inputs


@dataclass
class BenchInput:
    """One CT volume in memory, with its reference labels when known."""

    name: str
    volume: Any  # resunet_trt.io.CTVolume
    labels: np.ndarray | None
    read_s: float | None
    source: str


def parse_shape(text: str) -> tuple[int, int, int]:
    """``"D,H,W"`` (or ``DxHxW``) -> three positive integers."""
    try:
        parts = [int(p) for p in text.replace("x", ",").split(",") if p.strip()]
    except ValueError:
        parts = []
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected D,H,W with three positive integers, got {text!r}")
    return parts[0], parts[1], parts[2]


def parse_spacing(text: str) -> tuple[float, float, float]:
    """``"dz,dy,dx"`` in mm -> three positive floats."""
    try:
        parts = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        parts = []
    if len(parts) != 3 or not all(math.isfinite(p) and p > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected dz,dy,dx with three positive numbers in mm, got {text!r}")
    return parts[0], parts[1], parts[2]


def load_inputs(args: argparse.Namespace) -> list[BenchInput]:
    """The volumes to run: the cases of ``--data`` (CT + label) or ``--cases`` phantoms of ``--synthetic``."""
    from resunet_trt.io import CTVolume, load_ct, load_label

    inputs: list[BenchInput] = []
    if args.data:
        from resunet_trt.datasets import data_cases, natural_key

        try:
            cases, notes = data_cases(args.data)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        for note in notes:
            logger.warning("%s", note)
        if not cases:
            raise UsageError(f"no case with a CT and a label file found in --data {args.data}")
        for key in sorted(cases, key=natural_key)[: args.cases]:
            image, label = cases[key]
            t0 = time.perf_counter()
            volume = load_ct(image)
            read_s = time.perf_counter() - t0
            inputs.append(BenchInput(key, volume, load_label(label, like=volume), read_s, str(image)))
        return inputs

    from resunet_trt.phantom import make_phantom

    shape = args.synthetic or (64, 256, 256)
    for i in range(args.cases or 1):
        ct, labels = make_phantom(shape, args.spacing, seed=args.seed + i)
        volume = CTVolume.from_array(ct, spacing=args.spacing)
        name = f"phantom_{'x'.join(map(str, shape))}_seed{args.seed + i}"
        inputs.append(BenchInput(name, volume, labels, None, "resunet_trt.phantom.make_phantom"))
    return inputs


# ----------------------------------------------------------------------------------------- measuring


def percentile_summary(values: Sequence[float]) -> dict[str, float]:
    """Median, p90, mean, min and max of ``values`` (NaN for an empty list)."""
    if not values:
        return dict.fromkeys(("median", "p90", "mean", "min", "max"), math.nan)
    arr = np.asarray(values, dtype=np.float64)
    return {
        "median": float(np.median(arr)),
        "p90": float(np.percentile(arr, 90)),
        "mean": float(arr.mean()),
        "min": float(arr.min()),
        "max": float(arr.max()),
    }


def peak_host_mib() -> float:
    """Peak resident set size of this process so far, in MiB (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0


#: A run is flagged ``disturbed`` when other processes used more than this share of the machine's CPU time.
DISTURBED_OTHER_CPU = 0.10


def _cpu_busy_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot (Linux ``/proc/stat``), or None elsewhere."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
        ticks = [int(v) for v in fields[1:]]
        hz = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    # user nice system idle iowait irq softirq steal...: idle and iowait are not busy.
    return (sum(ticks) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)) / hz


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class LoadProbe:
    """How busy the machine was around one timed run: load averages and the CPU time used by other processes.

    ``start()`` before the run, ``stop()`` after; ``stop`` returns ``load_before``/``load_after`` (the 1, 5 and
    15 minute load averages), ``other_cpu_fraction`` (CPU time of every other process during the run over
    wall time x cores, from ``/proc/stat``; None where that file does not exist) and ``disturbed``: True when
    that fraction exceeds :data:`DISTURBED_OTHER_CPU` or, without ``/proc/stat``, when the 1-minute load before
    the run was already above half the cores (this process was idle then, so the load was someone else's).
    """

    def __init__(self) -> None:
        self.cores = os.cpu_count() or 1
        self._t0 = 0.0
        self._busy0: float | None = None
        self._own0 = 0.0
        self._load0: tuple[float, float, float] = (math.nan, math.nan, math.nan)

    @staticmethod
    def load_average() -> tuple[float, float, float]:
        """(1, 5, 15) minute load averages; NaN where the platform has none."""
        try:
            one, five, fifteen = os.getloadavg()
        except (OSError, AttributeError):
            return (math.nan, math.nan, math.nan)
        return (float(one), float(five), float(fifteen))

    def start(self) -> None:
        self._load0 = self.load_average()
        self._busy0 = _cpu_busy_seconds()
        self._own0 = _own_cpu_seconds()
        self._t0 = time.perf_counter()

    def stop(self) -> dict[str, Any]:
        wall = time.perf_counter() - self._t0
        own = _own_cpu_seconds() - self._own0
        busy = _cpu_busy_seconds()
        other: float | None = None
        if self._busy0 is not None and busy is not None and wall > 0:
            other = max(0.0, (busy - self._busy0 - own) / (wall * self.cores))
        load1 = self.load_average()
        if other is not None:
            disturbed = other > DISTURBED_OTHER_CPU
        else:
            disturbed = bool(self._load0[0] > 0.5 * self.cores)
        return {
            "load_before": list(self._load0),
            "load_after": list(load1),
            "other_cpu_fraction": other,
            "disturbed": disturbed,
        }


class GpuMemory:
    """Peak GPU memory while a model runs: PyTorch's allocator, CuPy's pool, and device-wide use after each volume."""

    def __init__(self, device: str) -> None:
        self.on_gpu = device.startswith("cuda")
        self.device_used_max = 0
        if not self.on_gpu:
            return
        if "torch" in sys.modules:
            import torch

            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
        try:
            import cupy as cp

            cp.get_default_memory_pool().free_all_blocks()
        except ImportError:
            pass

    def sample(self) -> None:
        if not self.on_gpu:
            return
        try:
            import cupy as cp

            free, total = cp.cuda.runtime.memGetInfo()
            self.device_used_max = max(self.device_used_max, int(total - free))
        except Exception as exc:  # noqa: BLE001 - memory accounting must never fail a benchmark
            logger.debug("cudaMemGetInfo failed: %s", exc)

    def report(self) -> dict[str, Any] | None:
        if not self.on_gpu:
            return None
        out: dict[str, Any] = {"device_used_max_bytes": self.device_used_max}
        if "torch" in sys.modules:
            import torch

            if torch.cuda.is_available():
                out["torch_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
        try:
            import cupy as cp

            out["cupy_pool_bytes"] = int(cp.get_default_memory_pool().total_bytes())
        except ImportError:
            pass
        return out


def _accuracy(labels: np.ndarray, reference: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    from resunet_trt.metrics import evaluate_case

    scores = evaluate_case(labels, reference, spacing, surface=False)
    return {f"{cls}_{key}": float(scores[cls][key]) for cls in ("liver", "tumor") for key in ("dice", "iou")}


def run_variant(
    variant: Variant,
    inputs: Sequence[BenchInput],
    *,
    device: str,
    batch_size: int,
    warmup: int,
    repeats: int,
    progress: bool,
) -> dict[str, Any]:
    """Open one model and time it on every input; the only place that touches the Segmenter."""
    from resunet_trt import Segmenter

    t0 = time.perf_counter()
    seg = Segmenter(
        model=variant.model,
        device=device,
        backend=variant.backend,
        batch_size=batch_size,
        precision=variant.precision,
    )
    open_s = time.perf_counter() - t0
    gpu = GpuMemory(seg.device)
    try:
        for _ in range(warmup):
            seg.segment(inputs[0].volume)
            gpu.sample()
        runs: list[dict[str, Any]] = []
        accuracy: dict[str, dict[str, float]] = {}
        jobs = [(r, item) for r in range(repeats) for item in inputs]
        bar = progress_bar(jobs, enabled=progress, desc=variant.label, unit="vol")
        for r, item in bar:
            probe = LoadProbe()
            probe.start()
            t = time.perf_counter()
            result = seg.segment(item.volume)
            wall = time.perf_counter() - t
            load = probe.stop()
            gpu.sample()
            timings = {k: float(v) for k, v in result.timings.items()}
            if item.read_s is not None:
                timings["read"] = item.read_s
            runs.append(
                {
                    "input": item.name,
                    "repeat": r,
                    "wall_s": wall,
                    "slices": int(item.volume.shape[0]),
                    "timings": timings,
                    **load,
                }
            )
            if r == repeats - 1 and item.labels is not None:
                accuracy[item.name] = _accuracy(result.labels, item.labels, item.volume.spacing)
        info = {"backend": seg.backend.name, "device": seg.device, "precision": seg.backend.precision}
    finally:
        seg.close()

    total_wall = sum(run["wall_s"] for run in runs)
    total_slices = sum(run["slices"] for run in runs)
    stage_names = [s for s in STAGES if any(s in run["timings"] for run in runs)]
    stage_names += sorted({k for run in runs for k in run["timings"]} - set(STAGES))
    out: dict[str, Any] = {
        "label": variant.label,
        "model": str(variant.model) if variant.model else "bundled default",
        "requested_backend": variant.backend,
        **info,
        "ok": True,
        "error": None,
        "open_s": open_s,
        "n_runs": len(runs),
        "wall_s": percentile_summary([run["wall_s"] for run in runs]),
        "stages": {s: percentile_summary([run["timings"].get(s, 0.0) for run in runs]) for s in stage_names},
        "slices_per_s": total_slices / total_wall if total_wall > 0 else math.nan,
        "volumes_per_s": len(runs) / total_wall if total_wall > 0 else math.nan,
        "peak_host_mib": peak_host_mib(),
        "disturbed_runs": sum(bool(run["disturbed"]) for run in runs),
        "gpu_memory": gpu.report(),
        "accuracy": accuracy,
        "accuracy_mean": {
            key: float(np.mean([a[key] for a in accuracy.values()]))
            for key in next(iter(accuracy.values()), {})
        },
        "runs": runs,
    }
    return out


def ratios(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each model against the first: speed-up of the median wall time and of slices/s, Dice differences."""
    ok = [r for r in results if r["ok"]]
    if len(ok) < 2:
        return []
    base = ok[0]
    out = []
    for r in ok:
        row: dict[str, Any] = {
            "label": r["label"],
            "baseline": base["label"],
            "speedup_wall_median": base["wall_s"]["median"] / r["wall_s"]["median"]
            if r["wall_s"]["median"]
            else math.nan,
            "speedup_slices_per_s": r["slices_per_s"] / base["slices_per_s"]
            if base["slices_per_s"]
            else math.nan,
            "stage_speedup": {
                s: (base["stages"][s]["median"] / r["stages"][s]["median"])
                if r["stages"].get(s, {}).get("median")
                else None
                for s in base["stages"]
                if s in r["stages"]
            },
        }
        for key in ("liver_dice", "tumor_dice"):
            if key in r["accuracy_mean"] and key in base["accuracy_mean"]:
                row[f"{key}_minus_baseline"] = r["accuracy_mean"][key] - base["accuracy_mean"][key]
        out.append(row)
    return out


# ----------------------------------------------------------------------------------------- reporting


def device_description(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What ran the benchmark: the GPU's name and memory when a model ran on one, else the CPU."""
    desc: dict[str, Any] = {"cpu": platform.processor() or platform.machine()}
    if any(str(r.get("device", "")).startswith("cuda") for r in results):
        try:
            import cupy as cp

            index = cp.cuda.runtime.getDevice()
            props = cp.cuda.runtime.getDeviceProperties(index)
            name = props["name"]
            desc["gpu"] = name.decode() if isinstance(name, bytes) else str(name)
            desc["gpu_memory_bytes"] = int(props["totalGlobalMem"])
            desc["compute_capability"] = f"{props['major']}.{props['minor']}"
        except Exception as exc:  # noqa: BLE001 - a description must not fail the run
            desc["gpu"] = f"unknown ({exc})"
    return desc


def _fmt_s(v: float) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    return f"{v * 1000:.1f} ms" if v < 1 else f"{v:.2f} s"


def render(results: Sequence[dict[str, Any]], rel: Sequence[dict[str, Any]]) -> str:
    """The on-screen summary: per model the stage medians/p90, throughput and memory, then the ratios."""
    lines = []
    for r in results:
        if not r["ok"]:
            lines.append(f"[{r['label']}] FAILED: {r['error']}")
            continue
        lines.append(
            f"[{r['label']}] {r['backend']} on {r['device']} ({r['precision']}), {r['n_runs']} timed volume(s), "
            f"model opened in {_fmt_s(r['open_s'])}"
        )
        lines.append(f"  {'stage':<12} {'median':>10} {'p90':>10}")
        for stage, st in r["stages"].items():
            lines.append(f"  {stage:<12} {_fmt_s(st['median']):>10} {_fmt_s(st['p90']):>10}")
        lines.append(f"  {'wall':<12} {_fmt_s(r['wall_s']['median']):>10} {_fmt_s(r['wall_s']['p90']):>10}")
        lines.append(
            f"  {r['slices_per_s']:.1f} slices/s, {r['volumes_per_s']:.3f} volumes/s, "
            f"peak host memory {r['peak_host_mib']:.0f} MiB"
        )
        if r["disturbed_runs"]:
            lines.append(
                f"  WARNING: {r['disturbed_runs']} of {r['n_runs']} run(s) shared the CPU with other processes "
                f"(> {DISTURBED_OTHER_CPU:.0%} of its time): the times are slower than on an idle machine"
            )
        if r["gpu_memory"]:
            gm = r["gpu_memory"]
            parts = [f"{k.replace('_bytes', '')} {v / 2**20:.0f} MiB" for k, v in gm.items()]
            lines.append("  GPU memory: " + ", ".join(parts))
        if r["accuracy_mean"]:
            acc = r["accuracy_mean"]
            lines.append(
                f"  liver Dice {acc['liver_dice']:.4f} IoU {acc['liver_iou']:.4f}, "
                f"tumor Dice {acc['tumor_dice']:.4f} IoU {acc['tumor_iou']:.4f} (mean over {len(r['accuracy'])} case(s))"
            )
    if rel:
        lines.append(f"relative to {rel[0]['baseline']}:")
        for row in rel:
            extra = ""
            if "liver_dice_minus_baseline" in row:
                extra = (
                    f", liver Dice {row['liver_dice_minus_baseline']:+.4f}, "
                    f"tumor Dice {row.get('tumor_dice_minus_baseline', math.nan):+.4f}"
                )
            lines.append(f"  {row['label']:<24} x{row['speedup_wall_median']:.2f} wall (median){extra}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resunet-bench",
        description="Time the segmentation pipeline per stage (and score it when labels are known).",
    )
    models = parser.add_argument_group("model (one of; default: the bundled model)")
    models.add_argument("--engine", help="TensorRT engine (.plan); needs TensorRT and a GPU")
    models.add_argument("--onnx", help="ONNX model, run with ONNX Runtime")
    models.add_argument("--checkpoint", help="PyTorch checkpoint (.pt)")
    models.add_argument(
        "--compare",
        help="comma-separated models to run on the same inputs: files and/or torch, onnx, fp16, int8 "
        "(the bundled variants on ONNX Runtime/PyTorch), openvino, openvino-bf16, openvino-int8 (on OpenVINO); "
        "ratios are against the first",
    )
    inputs = parser.add_argument_group("inputs (default: one 64,256,256 phantom)")
    inputs.add_argument("--data", help="folder of cases with CT and label files (naming as in resunet-eval)")
    inputs.add_argument(
        "--synthetic", type=parse_shape, metavar="D,H,W", help="synthetic phantom(s) of this shape"
    )
    inputs.add_argument(
        "--spacing",
        type=parse_spacing,
        default=(2.5, 0.8, 0.8),
        metavar="DZ,DY,DX",
        help="phantom spacing in mm (default 2.5,0.8,0.8)",
    )
    inputs.add_argument(
        "--cases", type=int, default=None, help="phantoms to make (default 1) / most cases of --data"
    )
    inputs.add_argument("--seed", type=int, default=0,
                        help="seed of the first phantom (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--backend", default="auto",
                        help="force a backend for the single model (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16, help="slices per inference batch (default 16)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per model first (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the inputs (default 3)")
    parser.add_argument("--json", help="write everything to this JSON file (atomically)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``resunet-bench``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.data and args.synthetic:
            raise UsageError("give --data or --synthetic, not both")
        for name in ("batch_size", "repeats"):
            if getattr(args, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
        if args.warmup < 0:
            raise UsageError(f"--warmup must be >= 0, got {args.warmup}")
        if args.cases is not None and args.cases < 1:
            raise UsageError(f"--cases must be >= 1, got {args.cases}")
        variants = select_variants(args)
        inputs = load_inputs(args)
    except UsageError as exc:
        print(f"resunet-bench: error: {exc}", file=sys.stderr)
        return 2

    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    results = []
    for variant in variants:
        try:
            results.append(
                run_variant(
                    variant,
                    inputs,
                    device=args.device,
                    batch_size=args.batch_size,
                    warmup=args.warmup,
                    repeats=args.repeats,
                    progress=not args.no_progress,
                )
            )
        except Exception as exc:  # noqa: BLE001 - one model failing must not hide the others' numbers
            logger.error("%s: %s: %s", variant.label, type(exc).__name__, exc)
            results.append(
                {
                    "label": variant.label,
                    "model": str(variant.model) if variant.model else "bundled default",
                    "requested_backend": variant.backend,
                    "ok": False,
                    "error": f"{type(exc).__name__}: {exc}",
                }
            )
    rel = ratios(results)
    print(render(results, rel))

    if args.json:
        from resunet_trt.cli.eval import write_json_atomic
        from resunet_trt.config import build_info, machine_info, versions

        doc = {
            "tool": "resunet-bench",
            "started_utc": started,
            "arguments": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()},
            "machine": machine_info(),
            "device": device_description(results),
            "versions": versions(),
            "build": build_info(),
            "inputs": [
                {
                    "name": i.name,
                    "shape": list(i.volume.shape),
                    "spacing": list(i.volume.spacing),
                    "source": i.source,
                    "read_s": i.read_s,
                    "has_labels": i.labels is not None,
                }
                for i in inputs
            ],
            "results": results,
            "ratios": rel,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(args.json), doc)
        print(f"wrote {args.json}")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
