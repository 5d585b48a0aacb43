"""Benchmark of connected_components, postprocess and lesion_stats against cc3d and scipy.ndimage.

The input is a synthetic abdominal CT phantom (default 400 x 512 x 512, LiTS size) from
:func:`resunet_trt.phantom.make_phantom`; when that module is missing, the bundled LiTS ROI labels are tiled to
the same shape. Each op runs once to warm up, then ``--repeats`` times; the median is reported in Mvox/s with
its ratio to a baseline measured in the same run:

- connected_components (26-connectivity) on the liver (label >= 1) and tumor (label == 2) masks, against
  ``cc3d.connected_components`` given the mask as uint8 (its fastest input type), the same with
  ``binary_image=True``, and ``scipy.ndimage.label`` (CPU), or ``cupyx.scipy.ndimage.label`` (CUDA);
- postprocess against ``cc3d.largest_k(k=1, binary_image=True)`` for the liver and ``cc3d.dust`` for the tiny
  lesions (the library's own clean-up calls; the output is checked equal to ours);
- lesion_stats against ``cc3d.connected_components(binary_image=True)`` + ``cc3d.statistics`` (CPU only).

Threads: cc3d and scipy run on one thread; ours on the OpenMP threads of this process (``threads`` in each
row). Every CPU row of ours is measured a second time in a child process with ``OMP_NUM_THREADS=1`` (impl
``resunet_trt 1 thread``), on the same labels, so a per-thread ratio is measured, not computed. Both sides get
the same warm-up (one run) and the same ``--repeats``.

Goals (issue 2, 16): CPU >= 1.0x the fastest cc3d call per thread on both masks; CUDA >= 3x
cupyx.scipy.ndimage.label.

Examples::

    nice -n 10 python benchmarks/bench_components.py
    python benchmarks/bench_components.py --device cuda --repeats 20
    python benchmarks/bench_components.py --shape 64,256,256 --repeats 3   # quick look

Results go to benchmarks/results/components_<device>.json with machine, versions and build flags.
``run(ct, labels, repeats)`` returns the CPU rows for benchmarks/bench_kernels.py (the one-thread rows
included).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"


def _median_seconds(fn: Callable[[], Any], repeats: int, sync: Callable[[], None] | None = None) -> float:
    fn()  # warm-up
    if sync is not None:
        sync()
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        times.append(time.perf_counter() - t0)
    return float(statistics.median(times))


def _row(
    op: str, inp: str, impl: str, device: str, seconds: float, voxels: int, threads: int = 1
) -> dict[str, Any]:
    return {
        "op": op,
        "input": inp,
        "impl": impl,
        "device": device,
        "threads": threads,
        "median_s": seconds,
        "mvox_per_s": voxels / seconds / 1e6,
    }


OURS = "resunet_trt"
OURS_1T = "resunet_trt 1 thread"


def _with_ratios(rows: list[dict[str, Any]], ours: str) -> list[dict[str, Any]]:
    """Adds ``speedup_vs_<impl>`` = baseline median / our median to our rows of each (op, input), and
    ``speedup_per_thread_vs_<impl>`` = that ratio x baseline threads / our threads where the thread counts
    differ. ``speedup_vs_best_baseline`` names the fastest baseline (``best_baseline``)."""
    for row in rows:
        if not row["impl"].startswith(ours):
            continue
        baselines = [
            o for o in rows if o["op"] == row["op"] and o["input"] == row["input"] and not o["impl"].startswith(ours)
        ]
        for other in baselines:
            ratio = other["median_s"] / row["median_s"]
            row[f"speedup_vs_{other['impl']}"] = ratio
            if other["threads"] != row["threads"]:
                row[f"speedup_per_thread_vs_{other['impl']}"] = ratio * other["threads"] / row["threads"]
        if baselines:
            best = min(baselines, key=lambda o: o["median_s"])
            row["best_baseline"] = best["impl"]
            row["speedup_vs_best_baseline"] = best["median_s"] / row["median_s"]
            row["speedup_per_thread_vs_best_baseline"] = (
                row["speedup_vs_best_baseline"] * best["threads"] / row["threads"]
            )
    return rows


def _postprocess_cc3d(labels: np.ndarray, min_lesion_voxels: int = 10) -> np.ndarray:
    """The postprocess steps with cc3d's own clean-up calls: the baseline.

    ``largest_k(k=1)`` keeps the largest foreground component, ``dust`` drops tumor components under
    ``min_lesion_voxels``, which become liver.
    """
    import cc3d

    fg = (labels >= 1).view(np.uint8)
    keep = cc3d.largest_k(fg, k=1, connectivity=26, binary_image=True)
    out = labels * keep.astype(bool)
    tumor = (out == 2).view(np.uint8)
    big = cc3d.dust(tumor, threshold=min_lesion_voxels, connectivity=26, in_place=False, binary_image=True)
    out[(tumor != 0) & (big == 0)] = 1
    return out


def _lesion_stats_cc3d(labels: np.ndarray) -> Any:
    import cc3d

    tumor = (labels == 2).view(np.uint8)
    return cc3d.statistics(cc3d.connected_components(tumor, connectivity=26, binary_image=True))


def our_rows(labels: np.ndarray, repeats: int) -> list[dict[str, Any]]:
    """Our CPU ops alone, on the OpenMP threads of this process."""
    from resunet_trt import config, kernels

    threads = int(config.build_info()["openmp_threads"])
    n = int(labels.size)
    rows = []
    for name, mask in (("liver", labels >= 1), ("tumor", labels == 2)):
        t = _median_seconds(lambda m=mask: kernels.connected_components(m, connectivity=26), repeats)
        rows.append(_row("connected_components", name, OURS, "cpu", t, n, threads))
    t = _median_seconds(lambda: kernels.postprocess(labels), repeats)
    rows.append(_row("postprocess", "labels", OURS, "cpu", t, n, threads))
    t = _median_seconds(lambda: kernels.lesion_stats(labels), repeats)
    rows.append(_row("lesion_stats", "labels", OURS, "cpu", t, n, threads))
    return rows


def our_rows_one_thread(labels: np.ndarray, repeats: int) -> list[dict[str, Any]]:
    """:func:`our_rows` in a child process with ``OMP_NUM_THREADS=1``, on the same labels."""
    with tempfile.TemporaryDirectory(prefix="bench_components_") as tmp:
        npy, out = Path(tmp) / "labels.npy", Path(tmp) / "rows.json"
        np.save(npy, labels)
        cmd = [sys.executable, __file__, "--labels-npy", str(npy), "--ours-only", "--repeats", str(repeats)]
        subprocess.run([*cmd, "--out", str(out)], check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
        rows = json.loads(out.read_text())["rows"]
    for row in rows:
        if row["threads"] != 1:
            raise RuntimeError(f"the one-thread child ran on {row['threads']} OpenMP threads")
        row["impl"] = OURS_1T
    return rows


def run(ct: np.ndarray, labels: np.ndarray, repeats: int, one_thread: bool = True) -> list[dict[str, Any]]:
    """CPU rows: our ops against cc3d and scipy on the liver and tumor masks of ``labels``.

    Args:
        ct: (D, H, W) int16 CT (unused by these ops; kept so every kernel benchmark takes the same inputs).
        labels: (D, H, W) uint8 0/1/2.
        repeats: timed runs per measurement (median reported), after one warm-up, for every side.
        one_thread: also measure ours with one OpenMP thread (in a child process).

    Returns:
        One dict per (op, input, impl): ``threads``, ``median_s``, ``mvox_per_s``, and on our rows
        ``speedup_vs_<impl>``, ``speedup_per_thread_vs_<impl>`` and ``speedup_vs_best_baseline``.
    """
    import cc3d
    from scipy import ndimage

    del ct
    labels = np.ascontiguousarray(labels, dtype=np.uint8)
    n = int(labels.size)
    ours = our_rows(labels, repeats)
    if one_thread:
        ours += our_rows_one_thread(labels, repeats)
    struct = ndimage.generate_binary_structure(3, 3)
    baselines: list[dict[str, Any]] = []
    for name, mask in (("liver", labels >= 1), ("tumor", labels == 2)):
        u8 = mask.view(np.uint8)
        cc = "connected_components"
        t = _median_seconds(lambda m=u8: cc3d.connected_components(m, connectivity=26), repeats)
        baselines.append(_row(cc, name, "cc3d uint8", "cpu", t, n))
        t = _median_seconds(
            lambda m=u8: cc3d.connected_components(m, connectivity=26, binary_image=True), repeats
        )
        baselines.append(_row(cc, name, "cc3d binary_image", "cpu", t, n))
        t = _median_seconds(lambda m=mask: ndimage.label(m, structure=struct), repeats)
        baselines.append(_row(cc, name, "scipy", "cpu", t, n))
    t = _median_seconds(lambda: _postprocess_cc3d(labels), repeats)
    baselines.append(_row("postprocess", "labels", "cc3d largest_k+dust", "cpu", t, n))
    t = _median_seconds(lambda: _lesion_stats_cc3d(labels), repeats)
    baselines.append(_row("lesion_stats", "labels", "cc3d cc+statistics", "cpu", t, n))

    from resunet_trt import kernels

    same = bool(np.array_equal(kernels.postprocess(labels), _postprocess_cc3d(labels)))
    rows = []
    for key in dict.fromkeys((r["op"], r["input"]) for r in baselines):
        group = [r for r in ours + baselines if (r["op"], r["input"]) == key]
        rows += _with_ratios(group, OURS)
    for row in rows:
        if row["op"] == "postprocess" and row["impl"] == OURS:
            row["same_output_as_baseline"] = same
    return rows


def run_cuda(labels: np.ndarray, repeats: int) -> list[dict[str, Any]]:
    """CUDA rows: our kernels against cupyx.scipy.ndimage.label (device-resident input, stream synchronised)."""
    import cupy as cp
    from cupyx.scipy import ndimage as cndimage
    from resunet_trt import kernels

    n = int(labels.size)
    sync = cp.cuda.get_current_stream().synchronize
    struct = cp.ones((3, 3, 3), dtype=bool)
    dev = cp.asarray(labels)
    rows: list[dict[str, Any]] = []
    for name, mask in (("liver", dev >= 1), ("tumor", dev == 2)):
        group = [
            _row(
                "connected_components",
                name,
                "resunet_trt",
                "cuda",
                _median_seconds(
                    lambda m=mask: kernels.connected_components(m, connectivity=26), repeats, sync
                ),
                n,
            ),
            _row(
                "connected_components",
                name,
                "cupyx",
                "cuda",
                _median_seconds(lambda m=mask: cndimage.label(m, structure=struct), repeats, sync),
                n,
            ),
        ]
        rows += _with_ratios(group, "resunet_trt")
    rows.append(
        _row(
            "postprocess",
            "labels",
            "resunet_trt",
            "cuda",
            _median_seconds(lambda: kernels.postprocess(dev), repeats, sync),
            n,
        )
    )
    rows.append(
        _row(
            "lesion_stats",
            "labels",
            "resunet_trt",
            "cuda",
            _median_seconds(lambda: kernels.lesion_stats(dev), repeats, sync),
            n,
        )
    )
    return rows


def load_volume(shape: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """(ct int16, labels uint8, source): the phantom, or the bundled LiTS ROI tiled to ``shape``."""
    try:
        from resunet_trt.phantom import make_phantom
    except ImportError:
        import nibabel as nib

        case = ROOT / "tests" / "data" / "lits117_roi128"
        ct = np.asanyarray(nib.load(case / "ct.nii.gz").dataobj).astype(np.int16).transpose(2, 1, 0)
        lab = (
            np.rint(np.asanyarray(nib.load(case / "label.nii.gz").dataobj))
            .astype(np.uint8)
            .transpose(2, 1, 0)
        )
        reps = [-(-s // c) for s, c in zip(shape, lab.shape)]
        crop = tuple(slice(0, s) for s in shape)
        return (
            np.ascontiguousarray(np.tile(ct, reps)[crop]),
            np.ascontiguousarray(np.tile(lab, reps)[crop]),
            "lits117_roi128 tiled",
        )
    ct, labels = make_phantom(shape=shape, seed=seed)
    return ct, labels, f"make_phantom(shape={shape}, seed={seed})"


def _write_json(path: Path, payload: dict) -> None:
    """The result JSON, through the package's one atomic writer."""
    from resunet_trt.files import atomic_write_text

    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


def _shape(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in text.replace("x", ",").split(",") if p.strip()]
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"--shape must be D,H,W with positive integers, got {text!r}")
    return parts[0], parts[1], parts[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=_shape, default=(400, 512, 512), help="D,H,W (default 400,512,512)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median reported)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON path (default results/components_<device>.json)"
    )
    parser.add_argument("--labels-npy", type=Path, default=None, help="labels (D, H, W) uint8 from a .npy file")
    parser.add_argument("--ours-only", action="store_true", help="time only our ops (no baselines)")
    parser.add_argument("--no-one-thread", action="store_true", help="skip the one-thread rows of ours")
    args = parser.parse_args(argv)

    from resunet_trt.config import build_info, machine_info, versions

    if args.labels_npy is not None:
        labels = np.load(args.labels_npy)
        ct, source = np.zeros(labels.shape, np.int16), str(args.labels_npy)
    else:
        ct, labels, source = load_volume(args.shape)
    if args.ours_only:
        rows = our_rows(labels, args.repeats)
    elif args.device == "cpu":
        rows = run(ct, labels, args.repeats, one_thread=not args.no_one_thread)
    else:
        rows = run_cuda(labels, args.repeats)
    print(
        f"input: {source}, shape {labels.shape}, liver {int((labels >= 1).sum())} vox, tumor {int((labels == 2).sum())} vox"
    )
    print(f"{'op':<22}{'input':<8}{'impl':<22}{'threads':>8}{'median ms':>11}{'Mvox/s':>10}  speedup")
    for r in rows:
        ratios = ", ".join(
            f"{k[len('speedup_vs_') :]} {v:.2f}x" for k, v in r.items() if k.startswith("speedup_vs_")
        )
        print(
            f"{r['op']:<22}{r['input']:<8}{r['impl']:<22}{r['threads']:>8}{r['median_s'] * 1e3:>11.1f}"
            f"{r['mvox_per_s']:>10.0f}  {ratios}"
        )
    payload = {
        "benchmark": "components",
        "device": args.device,
        "input": source,
        "shape": list(labels.shape),
        "repeats": args.repeats,
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "rows": rows,
        "machine": machine_info(),
        "versions": versions(),
        "build": build_info(),
    }
    out = args.out or RESULTS / f"components_{args.device}.json"
    _write_json(out, payload)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
