"""Cohort throughput: ``run_cohort`` on a local Ray instance against a plain ``Segmenter.segment_files`` loop.

The same cases (the real CT of tests/data, each copied ``--copies`` times into its own folder), the same model
and the same outputs (mask, report; a DICOM-SEG for the DICOM series) go through both paths, alternately,
``--repeats`` times. Each timing includes loading the model once (the loop's Segmenter, the Ray worker) and
writing every output; the Ray instance is started once beforehand and its start is reported apart. The Ray
overhead per case is (median Ray time - median loop time) / cases, and again without the one-off starts (model
load; Ray worker process start). Both paths write the same masks (checked; same inference threads).

Examples::

    nice -n 10 python benchmarks/bench_cohort.py                     # bundled model, CPU, 2 copies, 3 repeats
    python benchmarks/bench_cohort.py --copies 4 --workers 2 --cpus-per-worker 4

Results go to benchmarks/results/cohort_<device>.json, with the machine, its load before and after, versions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
CASES = (
    DATA / "lits117_roi128" / "ct.nii.gz",
    DATA / "totalseg_abdomen3mm" / "ct.nii.gz",
    DATA / "lits_small64" / "ct.nii.gz",
    DATA / "dicom_ct3slice" / "series",
)


def _copy_cases(root: Path, copies: int) -> list[Path]:
    cases = []
    for k in range(copies):
        for i, src in enumerate(CASES):
            dst = root / f"c{k}_{i}" / src.name
            dst.parent.mkdir(parents=True)
            if src.is_dir():
                shutil.copytree(src, dst)
            else:
                shutil.copyfile(src, dst)
            cases.append(dst)
    return cases


def _masks(out: Path) -> dict[str, np.ndarray]:
    import nibabel as nib

    return {p.name: np.asarray(nib.load(p).dataobj) for p in sorted(out.glob("*_mask.nii.gz"))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model file (default: the bundled model)")
    parser.add_argument("--device", default="cpu", help="cpu (GPU runs: cuda, on a machine with one)")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--copies", type=int, default=2, help="copies of the 4 test cases (2: 8 cases)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray instance")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument(
        "--cpus-per-worker",
        type=int,
        default=None,
        help="default: all CPUs (one worker, as many threads as the loop)",
    )
    parser.add_argument("--out", default=None, help="result JSON (default results/cohort_<device>.json)")
    args = parser.parse_args(argv)

    import ray
    from resunet_trt import __version__
    from resunet_trt.cohort import run_cohort
    from resunet_trt.segmenter import Segmenter

    load_before = os.getloadavg()
    t0 = time.perf_counter()
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    ray_init_s = time.perf_counter() - t0
    threads = args.cpus_per_worker or args.num_cpus
    seg_kwargs = {"model": args.model, "device": args.device, "backend": args.backend}
    startup_s: list[float] = []
    load_s: list[float] = []
    loop_s: list[float] = []
    ray_s: list[float] = []
    workers = None
    with tempfile.TemporaryDirectory(prefix="bench_cohort_") as tmp:
        root = Path(tmp)
        cases = _copy_cases(root / "in", args.copies)
        n = len(cases)
        masks_equal = True
        for r in range(args.repeats):
            # Alternate which path goes first, so that a drift in the machine's load hits both alike.
            for path in ("loop", "ray") if r % 2 == 0 else ("ray", "loop"):
                out = root / f"{path}_{r}"
                t = time.perf_counter()
                if path == "loop":
                    # The same inference threads as a Ray worker: CPU backends are not bit-identical across
                    # thread counts, and the masks of the two paths are compared.
                    with Segmenter(**seg_kwargs, num_threads=threads) as seg:
                        load_s.append(time.perf_counter() - t)
                        outcomes = seg.segment_files(cases, out, keep_results=False)
                    ok = sum(o.ok for o in outcomes)
                    for o in outcomes:
                        if not o.ok:
                            print(f"loop: {o.path}: {o.error}", file=sys.stderr)
                    loop_s.append(time.perf_counter() - t)
                else:
                    summary = run_cohort(
                        cases,
                        out,
                        **seg_kwargs,
                        num_workers=args.workers,
                        cpus_per_worker=threads,
                        resume=False,
                        progress=False,
                    )
                    ok = summary.done
                    for row in summary.rows:
                        if row["status"] != "ok":
                            print(f"ray: {row['input']}: {row['error']}", file=sys.stderr)
                    workers = summary.workers
                    startup_s.append(summary.startup_s)
                    ray_s.append(time.perf_counter() - t)
                if ok != n:
                    print(f"{path}: only {ok} of {n} cases succeeded", file=sys.stderr)
                    return 1
                took = (loop_s if path == "loop" else ray_s)[-1]
                print(f"repeat {r} {path}: {n} cases in {took:.1f} s", flush=True)
            a, b = _masks(root / f"loop_{r}"), _masks(root / f"ray_{r}")
            masks_equal &= a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    ray.shutdown()
    load_after = os.getloadavg()

    loop_med, ray_med = statistics.median(loop_s), statistics.median(ray_s)
    result = {
        "benchmark": "cohort",
        "cases": n,
        "case_files": [str(c.relative_to(DATA.parent.parent)) for c in CASES],
        "copies": args.copies,
        "model": args.model or "bundled default",
        "device": args.device,
        "repeats": args.repeats,
        "loop_s": loop_s,
        "ray_s": ray_s,
        "median_loop_s": loop_med,
        "median_ray_s": ray_med,
        "loop_cases_per_min": 60.0 * n / loop_med,
        "ray_cases_per_min": 60.0 * n / ray_med,
        "ray_overhead_per_case_s": (ray_med - loop_med) / n,
        # Each repeat's Ray run against its own loop run (they ran back to back, under the same load).
        "paired_overhead_per_case_s": statistics.median((r - lp) / n for r, lp in zip(ray_s, loop_s)),
        "ray_init_s": ray_init_s,
        "ray_worker_startup_s": startup_s,
        "loop_model_load_s": load_s,
        # Without the one-off starts (the loop's model load, the Ray workers' process start and model load):
        "ray_overhead_per_case_after_startup_s": (
            (ray_med - statistics.median(startup_s)) - (loop_med - statistics.median(load_s))
        )
        / n,
        "threads": threads,
        "ray_workers": workers,
        "masks_identical": bool(masks_equal),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_before": load_before,
            "loadavg_after": load_after,
        },
        "versions": {"resunet_trt": __version__, "ray": ray.__version__},
        "note": "timings include model load and output writes; ray_init_s is separate",
    }
    default_out = Path(__file__).parent / "results" / f"cohort_{args.device}.json"
    out_path = Path(args.out) if args.out else default_out
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"loop {loop_med:.1f} s ({result['loop_cases_per_min']:.1f} cases/min), ray {ray_med:.1f} s "
        f"({result['ray_cases_per_min']:.1f} cases/min): "
        f"Ray overhead {result['ray_overhead_per_case_s']:+.2f} s "
        f"(paired {result['paired_overhead_per_case_s']:+.2f} s) "
        f"per case ({result['ray_overhead_per_case_after_startup_s']:+.2f} s after the workers' start of "
        f"{statistics.median(startup_s):.1f} s); ray.init {ray_init_s:.1f} s; "
        f"masks identical: {masks_equal}; "
        f"load {load_before} -> {load_after}"
    )
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
