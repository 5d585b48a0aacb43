"""Kernel benchmarks: every compiled op on a LiTS-size phantom against a baseline timed in the same run.

- preprocess (int16 (D, H, W) -> float16 (D, 3, 256, 256)) vs the faster of two baselines measured in the
  run: numpy clip in int16 + one float32 conversion + in-place scale + torch interpolate of the whole volume, or
  the same in torch slab by slab; both gather the 2.5D context by index;
- logits_to_labels (float32 and float16 (D, 3, 256, 256) -> uint8 (D, H, W)) vs torch interpolate +
  ``max(dim=1).indices`` in slabs, plain and through ``torch.compile`` (compiled during the warm-up; the
  faster counts; ``--no-torch-compile`` skips it);
- connected components / postprocess: rows from ``benchmarks/bench_components.py`` when that file exists
  (it exposes ``run(ct, labels, repeats) -> list[dict]``; baselines cc3d with uint8 input, with
  ``binary_image=True``, ``cc3d.largest_k`` + ``cc3d.dust``; ours also on one thread).

Every side, ours and each baseline, gets one warm-up and the median of ``--repeats`` runs. torch gets as
many threads as our OpenMP kernels (``threads_ours``/``threads_baseline`` in each row). Throughput is Mvox/s
of the op's full-size side: input voxels for preprocess, output voxels for logits_to_labels. ``--data`` runs
on a real CT with the bundled model's own logits and raw labels instead of the phantom. The JSON records the
load average before and after and the CPU share of other processes (``load``).

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
import statistics
import sys
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


def real_inputs(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(ct int16 (D, H, W), raw labels uint8, logits float32 (D, 3, h, w), source) of a real CT: the logits
    are the bundled model's (ONNX Runtime) on the Segmenter's own network input, the labels their argmax before
    any clean-up, so the component ops see a network's real speckle."""
    from resunet_trt.backends import open_backend
    from resunet_trt.io import load_ct
    from resunet_trt.kernels import logits_to_labels, preprocess

    volume = load_ct(path)
    ct = volume.hu
    with open_backend(None, backend="onnxruntime", device="cpu") as net:
        meta = net.metadata
        if tuple(meta.plane_size) != PLANE or meta.context != CONTEXT:
            raise ValueError(f"the bundled model takes {meta.plane_size} x {meta.context}, this benchmark {PLANE} x {CONTEXT}")
        parts = []
        for s in range(0, ct.shape[0], 16):
            x = preprocess(ct, window=tuple(meta.window), out_size=PLANE, context=CONTEXT, dtype="float32",
                           start=s, stop=min(s + 16, ct.shape[0]))
            parts.append(np.asarray(net.infer(x), dtype=np.float32))
    logits = np.ascontiguousarray(np.concatenate(parts))
    labels = logits_to_labels(logits, out_size=ct.shape[1:])
    return ct, labels, logits, f"real CT {path} + bundled model's raw output"


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


SLAB = 16  # slices per slab of the torch baselines (the Segmenter's default batch)


def _context_index(depth: int) -> Any:
    import torch

    return torch.clamp(torch.arange(depth)[:, None] + torch.arange(CONTEXT)[None, :] - CONTEXT // 2, 0, depth - 1)


def baseline_preprocess_volume(ct: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """numpy clip in int16 (half the bytes of float32), one float32 conversion, in-place scale, torch
    interpolate of the whole volume (bilinear, align_corners=False), 2.5D gather, float16."""
    import torch

    lo, hi = window
    norm = np.clip(ct, int(np.ceil(lo)), int(np.floor(hi))).astype(np.float32)
    norm -= np.float32(lo)
    norm *= np.float32(1.0 / (hi - lo))
    planes = torch.nn.functional.interpolate(
        torch.from_numpy(norm)[:, None], size=PLANE, mode="bilinear", align_corners=False
    )[:, 0]
    return planes[_context_index(ct.shape[0])].half().numpy()


def baseline_preprocess_slabs(ct: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """The same steps in torch, slab by slab (cache-sized pieces), writing into one float16 output."""
    import torch

    lo, hi = window
    d = ct.shape[0]
    src = torch.from_numpy(ct)
    planes = torch.empty((d, *PLANE), dtype=torch.float32)
    for s in range(0, d, SLAB):
        x = src[s : s + SLAB].clamp(int(np.ceil(lo)), int(np.floor(hi))).float()
        x.sub_(lo).mul_(1.0 / (hi - lo))
        planes[s : s + SLAB] = torch.nn.functional.interpolate(
            x[:, None], size=PLANE, mode="bilinear", align_corners=False
        )[:, 0]
    return planes[_context_index(d)].half().numpy()


def baseline_logits_to_labels(logits: np.ndarray, out_size: tuple[int, int]) -> np.ndarray:
    """torch, slab by slab: interpolate (bilinear, align_corners=False) in float32, then ``max(dim=1).indices``
    (on this CPU several times faster than ``argmax(dim=1)`` over 3 channels), uint8."""
    import torch

    src = torch.from_numpy(logits)
    out = torch.empty((logits.shape[0], *out_size), dtype=torch.uint8)
    for s in range(0, logits.shape[0], SLAB):
        up = torch.nn.functional.interpolate(
            src[s : s + SLAB].float(), size=out_size, mode="bilinear", align_corners=False
        )
        out[s : s + SLAB] = up.max(dim=1).indices
    return out.numpy()


def _compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``torch.compile`` of a baseline's per-slab core (inductor, CPU)."""
    import torch

    return torch.compile(fn, dynamic=False)


def baseline_logits_to_labels_compiled(out_size: tuple[int, int]) -> Callable[[np.ndarray], np.ndarray]:
    """:func:`baseline_logits_to_labels` with the per-slab interpolate + max compiled by ``torch.compile``."""
    import torch

    def core(x: Any) -> Any:
        up = torch.nn.functional.interpolate(x.float(), size=out_size, mode="bilinear", align_corners=False)
        return up.max(dim=1).indices.to(torch.uint8)

    step = _compiled(core)

    def run(logits: np.ndarray) -> np.ndarray:
        src = torch.from_numpy(logits)
        out = torch.empty((logits.shape[0], *out_size), dtype=torch.uint8)
        for s in range(0, logits.shape[0], SLAB):
            out[s : s + SLAB] = step(src[s : s + SLAB])
        return out.numpy()

    return run


def _row(op: str, impl: str, seconds: float, mvox: float, baseline_s: float | None, **extra: Any) -> dict:
    row = {"op": op, "impl": impl, "seconds": seconds, "mvox_per_s": mvox / seconds}
    if baseline_s is not None:
        row["baseline_seconds"] = baseline_s
        row["speedup"] = baseline_s / seconds
    row.update(extra)
    return row


def _best(candidates: dict[str, Callable[[], Any]], repeats: int) -> tuple[str, float, dict[str, float]]:
    """Times every baseline candidate (one warm-up, then ``repeats``); returns the fastest and all medians."""
    times = {name: _time_cpu(fn, repeats, 1) for name, fn in candidates.items()}
    name = min(times, key=times.__getitem__)
    return name, times[name], times


def bench_cpu(ct: np.ndarray, labels: np.ndarray, logits32: np.ndarray, args: argparse.Namespace) -> list[dict]:
    import torch
    from resunet_trt import config
    from resunet_trt.kernels import logits_to_labels, preprocess

    threads = int(config.build_info()["openmp_threads"])
    torch.set_num_threads(threads)  # the baselines get as many threads as our kernels
    side = {"threads_ours": threads, "threads_baseline": torch.get_num_threads()}
    window = (-200.0, 250.0)
    d, h, w = ct.shape
    rows = []
    reps = args.repeats

    mvox_in = ct.size / 1e6
    ours = _time_cpu(lambda: preprocess(ct, window=window, out_size=PLANE, context=CONTEXT), reps, 1)
    candidates = {
        "numpy int16 clip + torch interpolate (whole volume)": lambda: baseline_preprocess_volume(ct, window),
        f"torch clamp/scale/interpolate in slabs of {SLAB}": lambda: baseline_preprocess_slabs(ct, window),
    }
    name, base, all_times = _best(candidates, reps)
    reference = (baseline_preprocess_volume if "whole" in name else baseline_preprocess_slabs)(ct, window)
    diff = np.abs(
        preprocess(ct, window=window, out_size=PLANE, context=CONTEXT).astype(np.float32)
        - reference.astype(np.float32)
    ).max()
    rows.append(
        _row(
            "preprocess",
            "cpu int16->fp16",
            ours,
            mvox_in,
            base,
            baseline=name,
            baseline_candidates_s=all_times,
            goal_speedup=GOALS["preprocess"],
            max_abs_diff_vs_baseline=float(diff),
            **side,
        )
    )

    mvox_out = d * h * w / 1e6
    for prec, logits in (("fp32", logits32), ("fp16", logits32.astype(np.float16))):
        candidates = {
            f"torch interpolate (fp32) + max(1).indices in slabs of {SLAB}": functools.partial(
                baseline_logits_to_labels, logits, (h, w)
            )
        }
        if args.torch_compile:
            compiled = baseline_logits_to_labels_compiled((h, w))
            candidates[f"torch.compile(interpolate + max(1).indices) in slabs of {SLAB}"] = functools.partial(
                compiled, logits
            )
        name, base, all_times = _best(candidates, reps)
        reference = baseline_logits_to_labels(logits, (h, w))
        ours = _time_cpu(functools.partial(logits_to_labels, logits, out_size=(h, w)), reps, 1)
        agree = float((logits_to_labels(logits, out_size=(h, w)) == reference).mean())
        rows.append(
            _row(
                "logits_to_labels",
                f"cpu {prec}->uint8",
                ours,
                mvox_out,
                base,
                baseline=name,
                baseline_candidates_s=all_times,
                goal_speedup=GOALS["logits_to_labels"],
                label_agreement_vs_baseline=agree,
                **side,
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
        if "threads_ours" in row:
            line += f"   threads {row['threads_ours']} vs {row['threads_baseline']}"
    if "threads" in row:
        line += f"   {row['threads']} thread(s)"
    for key, value in row.items():
        if key.startswith("speedup_vs_"):
            line += f"   x{value:.2f} vs {key[len('speedup_vs_') :]}"
    if "fraction_of_copy" in row:
        line += f"   {row['gb_per_s']:.0f} GB/s = {100 * row['fraction_of_copy']:.0f}% of copy"
    return line


def write_json(path: Path, payload: dict) -> None:
    """The result JSON, through the package's one atomic writer."""
    from resunet_trt.files import atomic_write_text

    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=_shape, default=(400, 512, 512), help="D,H,W of the phantom")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each side (median)")
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="a real CT (NIfTI file or DICOM folder) instead of the phantom: logits and labels are the bundled "
        "model's own output on it",
    )
    parser.add_argument(
        "--no-torch-compile",
        dest="torch_compile",
        action="store_false",
        help="skip the torch.compile'd logits_to_labels baseline (it needs a C++ compiler)",
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

    from resunet_trt.cli.bench import LoadProbe

    load_before = LoadProbe.load_average()
    t0 = time.perf_counter()
    if args.data is not None:
        ct, labels, logits32, source = real_inputs(args.data)
    else:
        ct, labels, source = make_volume(args.shape, args.seed)
        logits32 = make_logits(labels, args.seed)
    print(f"volume: {source} {ct.shape} {ct.dtype} in {time.perf_counter() - t0:.1f} s")

    probe = LoadProbe()
    probe.start()
    rows = bench_cpu(ct, labels, logits32, args) if args.device == "cpu" else bench_cuda(ct, labels, args)
    if not args.no_components:
        rows += component_rows(ct, labels, args)
    load = probe.stop()
    load["load_before"] = list(load_before)

    build = config.build_info()
    print(f"machine: {config.machine_info()}  openmp threads: {build['openmp_threads']}")
    print(
        f"load average before {load['load_before']}, after {load['load_after']}; other processes' CPU share "
        f"{load['other_cpu_fraction']}{'  DISTURBED' if load['disturbed'] else ''}"
    )
    for row in rows:
        print(format_row(row))

    payload = {
        "benchmark": "kernels",
        "device": args.device,
        "volume": {"source": source, "shape": list(ct.shape), "dtype": str(ct.dtype), "seed": args.seed},
        "data": "real CT" if args.data is not None else "phantom",
        "repeats": args.repeats,
        "load": load,
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
