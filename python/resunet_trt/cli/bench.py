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
from pathlib import Path
from typing import Any

import numpy as np

from .._progress import progress as progress_bar
from ..engine import tensorrt_available  # noqa: F401 - importable from here, as before
from ..results import STAGES

# What to run and what to report have modules of their own; their names stay importable from here.
from .bench_inputs import (  # noqa: F401
    BUNDLED,
    BUNDLED_PRECISION,
    SUFFIX_BACKEND,
    TENSORRT_HELP,
    BenchInput,
    UsageError,
    Variant,
    load_inputs,
    parse_shape,
    parse_spacing,
    parse_variant,
    select_variants,
)
from .bench_report import DISTURBED_OTHER_CPU, device_description, ratios, render

logger = logging.getLogger("resunet_trt.bench")

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
