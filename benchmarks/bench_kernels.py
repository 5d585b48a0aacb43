"""Kernel benchmarks: every compiled op on a LiTS-size phantom against a baseline timed in the same run.

- preprocess (int16 (D, H, W) -> float16 (D, 3, 256, 256)) vs numpy clip/scale + torch interpolate + stacking;
- logits_to_labels (float32 and float16 (D, 3, 256, 256) -> uint8 (D, H, W)) vs torch interpolate + argmax;
- connected components / postprocess: rows from ``benchmarks/bench_components.py`` when that file exists
  (it exposes ``run(ct, labels, repeats) -> list[dict]``).

Each timing is the median of ``--repeats`` runs after one warm-up (baselines: median of
``--baseline-repeats``, no warm-up beyond the first repeat). Throughput is Mvox/s of the op's full-size
side: input voxels for preprocess, output voxels for logits_to_labels.

With ``--device cuda`` the image ops run on the GPU (CuPy arrays, CUDA events on one stream) and
preprocess is also reported as a fraction of the device's copy bandwidth (a device-to-device copy of
the same number of bytes as the op reads plus writes).

Examples::

    nice -n 10 python benchmarks/bench_kernels.py                       # 400 x 512 x 512, CPU
    python benchmarks/bench_kernels.py --shape 64,512,512 --repeats 3   # quick look
    python benchmarks/bench_kernels.py --device cuda                    # GPU, results/kernels_cuda.json

Results go to benchmarks/results/kernels_<device>.json (machine, versions and build flags included).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
PLANE = (256, 256)
CONTEXT = 3
CLASSES = 3
GOALS = {"preprocess": 3.0, "logits_to_labels": 5.0}  # speed-up over the baseline on the 2-core CPU
GPU_COPY_FRACTION_GOAL = 0.70

log = logging.getLogger("bench_kernels")


def _shape(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in text.replace("x", ",").split(",") if p.strip()]
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"--shape must be D,H,W with positive integers, got {text!r}")
    return parts[0], parts[1], parts[2]


def _time_cpu(fn: Callable[[], Any], repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(statistics.median(times))


def _time_gpu(fn: Callable[[], Any], repeats: int) -> float:
    import cupy as cp

    fn()
    cp.cuda.get_current_stream().synchronize()
    times = []
    for _ in range(repeats):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop) / 1e3)
    return float(statistics.median(times))


def make_volume(shape: tuple[int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(ct int16, labels uint8, source): the phantom, or random HU when the phantom module is missing."""
    try:
        from resunet_trt.phantom import make_phantom
    except ImportError:
        log.warning("resunet_trt.phantom is not available: falling back to a random-HU volume")
        rng = np.random.default_rng(seed)
        ct = rng.integers(-1024, 1500, size=shape, dtype=np.int16)
        labels = np.zeros(shape, np.uint8)
        return ct, labels, "random-hu"
    ct, labels = make_phantom(shape, seed=seed)
    return ct, labels, "phantom"


def make_logits(labels: np.ndarray, seed: int) -> np.ndarray:
    """float32 (D, 3, 256, 256) logits shaped like a network's: one-hot of the downsampled labels + noise."""
    d, h, w = labels.shape
    rows = (np.arange(PLANE[0]) * h) // PLANE[0]
    cols = (np.arange(PLANE[1]) * w) // PLANE[1]
    small = labels[:, rows][:, :, cols]
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((d, CLASSES) + PLANE, dtype=np.float32)
    for c in range(CLASSES):
        logits[:, c] += 4.0 * (small == c)
    return logits


def baseline_preprocess(ct: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """numpy clip/scale + torch interpolate (bilinear, align_corners=False) + 2.5D stacking, float16."""
    import torch

    lo, hi = window
    norm = (np.clip(ct.astype(np.float32), lo, hi) - np.float32(lo)) / np.float32(hi - lo)
    planes = torch.nn.functional.interpolate(
        torch.from_numpy(norm)[:, None], size=PLANE, mode="bilinear", align_corners=False
    )[:, 0]
    d = ct.shape[0]
    idx = torch.clamp(torch.arange(d)[:, None] + torch.arange(CONTEXT)[None, :] - CONTEXT // 2, 0, d - 1)
    return planes[idx].half().numpy()


def baseline_logits_to_labels(logits: np.ndarray, out_size: tuple[int, int]) -> np.ndarray:
    """torch interpolate (bilinear, align_corners=False) in float32 + argmax, uint8."""
    import torch

    x = torch.from_numpy(logits).float()
    up = torch.nn.functional.interpolate(x, size=out_size, mode="bilinear", align_corners=False)
    return up.argmax(dim=1).to(torch.uint8).numpy()


def _row(op: str, impl: str, seconds: float, mvox: float, baseline_s: float | None, **extra: Any) -> dict:
    row = {"op": op, "impl": impl, "seconds": seconds, "mvox_per_s": mvox / seconds}
    if baseline_s is not None:
        row["baseline_seconds"] = baseline_s
        row["speedup"] = baseline_s / seconds
    row.update(extra)
    return row


def bench_cpu(ct: np.ndarray, labels: np.ndarray, args: argparse.Namespace) -> list[dict]:
    from resunet_trt.kernels import logits_to_labels, preprocess

    window = (-200.0, 250.0)
    d, h, w = ct.shape
    rows = []

    mvox_in = ct.size / 1e6
    ours = _time_cpu(lambda: preprocess(ct, window=window, out_size=PLANE, context=CONTEXT), args.repeats, 1)
    base = _time_cpu(lambda: baseline_preprocess(ct, window), args.baseline_repeats, 0)
    diff = np.abs(
        preprocess(ct, window=window, out_size=PLANE, context=CONTEXT).astype(np.float32)
        - baseline_preprocess(ct, window).astype(np.float32)
    ).max()
    rows.append(
        _row(
            "preprocess",
            "cpu int16->fp16",
            ours,
            mvox_in,
            base,
            baseline="numpy clip/scale + torch interpolate",
            goal_speedup=GOALS["preprocess"],
            max_abs_diff_vs_baseline=float(diff),
        )
    )

    logits32 = make_logits(labels, args.seed)
    mvox_out = d * h * w / 1e6
    base = _time_cpu(lambda: baseline_logits_to_labels(logits32, (h, w)), args.baseline_repeats, 0)
    reference = baseline_logits_to_labels(logits32, (h, w))
    for name, logits in (("fp32", logits32), ("fp16", logits32.astype(np.float16))):
        ours = _time_cpu(functools.partial(logits_to_labels, logits, out_size=(h, w)), args.repeats, 1)
        agree = float((logits_to_labels(logits, out_size=(h, w)) == reference).mean())
        rows.append(
            _row(
                "logits_to_labels",
                f"cpu {name}->uint8",
                ours,
                mvox_out,
                base,
                baseline="torch interpolate (fp32) + argmax",
                goal_speedup=GOALS["logits_to_labels"],
                label_agreement_vs_baseline=agree,
            )
        )
    return rows


def bench_cuda(ct: np.ndarray, labels: np.ndarray, args: argparse.Namespace) -> list[dict]:
    import cupy as cp
    from resunet_trt.kernels import logits_to_labels, preprocess

    d, h, w = ct.shape
    rows = []
    ct_gpu = cp.asarray(ct)
    out_bytes = d * CONTEXT * PLANE[0] * PLANE[1] * 2
    moved = ct_gpu.nbytes + out_bytes
    src = cp.empty(moved // 2, dtype=cp.uint8)
    dst = cp.empty_like(src)
    # A copy of n bytes reads n and writes n: copying moved/2 bytes moves as many bytes as preprocess.
    copy_s = _time_gpu(lambda: dst.__setitem__(slice(None), src), args.repeats)
    copy_gbs = moved / copy_s / 1e9
    ours = _time_gpu(lambda: preprocess(ct_gpu, out_size=PLANE, context=CONTEXT), args.repeats)
    gbs = moved / ours / 1e9
    rows.append(
        _row(
            "preprocess",
            "cuda int16->fp16",
            ours,
            ct.size / 1e6,
            None,
            gb_per_s=gbs,
            copy_gb_per_s=copy_gbs,
            fraction_of_copy=gbs / copy_gbs,
            goal_fraction_of_copy=GPU_COPY_FRACTION_GOAL,
        )
    )
    logits32 = cp.asarray(make_logits(labels, args.seed))
    for name, logits in (("fp32", logits32), ("fp16", logits32.astype(cp.float16))):
        ours = _time_gpu(functools.partial(logits_to_labels, logits, out_size=(h, w)), args.repeats)
        rows.append(_row("logits_to_labels", f"cuda {name}->uint8", ours, d * h * w / 1e6, None))
    return rows


def component_rows(ct: np.ndarray, labels: np.ndarray, args: argparse.Namespace) -> list[dict]:
    """Rows from benchmarks/bench_components.py (``run`` on the CPU, ``run_cuda`` on the GPU), if it exists."""
    path = HERE / "bench_components.py"
    if not path.exists():
        log.warning("benchmarks/bench_components.py not found: no connected-components rows")
        return []
    spec = importlib.util.spec_from_file_location("bench_components", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if args.device == "cuda":
        if not hasattr(module, "run_cuda"):
            log.warning("bench_components.py has no run_cuda: no GPU connected-components rows")
            return []
        return list(module.run_cuda(labels, args.repeats))
    return list(module.run(ct, labels, args.repeats))


def format_row(row: dict) -> str:
    """One printed line; component rows use ``median_s``/``input``/``speedup_vs_<impl>`` keys."""
    seconds = row.get("seconds", row.get("median_s", float("nan")))
    name = " ".join(str(row[k]) for k in ("impl", "input", "device") if k in row)
    line = f"{row['op']:<22} {name:<30} {seconds * 1e3:10.1f} ms {row.get('mvox_per_s', float('nan')):9.1f} Mvox/s"
    if "speedup" in row:
        line += f"   baseline {row['baseline_seconds'] * 1e3:9.1f} ms   x{row['speedup']:.1f}"
        if "goal_speedup" in row:
            line += f" (goal x{row['goal_speedup']:.0f})"
    for key, value in row.items():
        if key.startswith("speedup_vs_"):
            line += f"   x{value:.2f} vs {key[len('speedup_vs_') :]}"
    if "fraction_of_copy" in row:
        line += f"   {row['gb_per_s']:.0f} GB/s = {100 * row['fraction_of_copy']:.0f}% of copy"
    return line


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes it private; results are meant to be shared
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=_shape, default=(400, 512, 512), help="D,H,W of the phantom")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of our kernels (median)")
    parser.add_argument(
        "--baseline-repeats", type=int, default=3, help="timed runs of the baselines (median)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--no-components", action="store_true", help="skip benchmarks/bench_components.py")
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON path (default results/kernels_<device>.json)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from resunet_trt import config

    t0 = time.perf_counter()
    ct, labels, source = make_volume(args.shape, args.seed)
    print(f"volume: {source} {ct.shape} {ct.dtype} in {time.perf_counter() - t0:.1f} s")

    rows = bench_cpu(ct, labels, args) if args.device == "cpu" else bench_cuda(ct, labels, args)
    if not args.no_components:
        rows += component_rows(ct, labels, args)

    build = config.build_info()
    print(f"machine: {config.machine_info()}  openmp threads: {build['openmp_threads']}")
    for row in rows:
        print(format_row(row))

    payload = {
        "benchmark": "kernels",
        "device": args.device,
        "volume": {"source": source, "shape": list(ct.shape), "dtype": str(ct.dtype), "seed": args.seed},
        "repeats": args.repeats,
        "baseline_repeats": args.baseline_repeats,
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "rows": rows,
        "machine": config.machine_info(),
        "versions": config.versions(),
        "build": build,
    }
    out = args.out or HERE / "results" / f"kernels_{args.device}.json"
    write_json(out, payload)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
