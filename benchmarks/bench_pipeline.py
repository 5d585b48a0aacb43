"""Whole-pipeline benchmark: int16 CT volume in memory -> labels + lesion report in memory, per stage.

A synthetic abdominal phantom (default 400 x 512 x 512, LiTS size) goes through :class:`resunet_trt.Segmenter`
``--repeats`` times after one warm-up; the median of each stage (upload, preprocess, infer, decode,
postprocess, download) and of the in-memory total is reported with slices/s. Reading the CT from a .nii.gz
and writing the mask are measured separately (they depend on the disk and the gzip codec, not on the
pipeline), with nibabel's own gzip and, when ``resunet_trt.io`` offers one, its fast codec.

Goals (issue 5): 2-core CPU with ONNX Runtime INT8 <= 60 s in memory; H100/H200 with PyTorch fp16 <= 1 s with
pre- and postprocessing <= 10% of it.

With ``--compare`` several models run on the same phantom in one process, interleaved (repeat r runs every
model once, in turn, so a change of load on a shared machine touches all alike), and each one's median is given
as a ratio to the first (list ONNX Runtime fp32, ``onnx``, first). Names are those of ``resunet-bench
--compare``: ``onnx``, ``int8``, ``torch``, ``openvino``, ``openvino-bf16``, ``openvino-int8`` or model files.
The load average before and after is stored with the results.

Examples::

    nice -n 10 python benchmarks/bench_pipeline.py --device cpu --model python/resunet_trt/models/default/model.int8.onnx
    python benchmarks/bench_pipeline.py --device cuda --backend torch --repeats 5
    python benchmarks/bench_pipeline.py --device cpu --shape 64,256,256 --repeats 1   # quick look
    nice -n 10 python benchmarks/bench_pipeline.py --device cpu --compare onnx,openvino-int8,openvino-bf16 \
        --threads 2 --repeats 5 --out benchmarks/results/pipeline_cpu_compare.json

Results go to benchmarks/results/pipeline_<device>.json (with machine, versions and build flags).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

DEVICE_STAGES = ("upload", "preprocess", "infer", "decode", "postprocess", "download")
GOALS_S = {"cpu": 60.0, "cuda": 1.0}


def _shape(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in text.replace("x", ",").split(",") if p.strip()]
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"--shape must be D,H,W with positive integers, got {text!r}")
    return parts[0], parts[1], parts[2]


def _spacing(text: str) -> tuple[float, float, float]:
    parts = [float(p) for p in text.split(",") if p.strip()]
    if len(parts) != 3 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"--spacing must be dz,dy,dx in mm, got {text!r}")
    return parts[0], parts[1], parts[2]


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def _gpu_name() -> str | None:
    try:
        import cupy as cp

        props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
        name = props["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # noqa: BLE001 - no GPU, no name
        return None


def bench_files(volume: Any, labels: np.ndarray, workdir: Path) -> dict[str, Any]:
    """Time reading the CT from .nii.gz and writing the mask, with nibabel's gzip and io's fast codec if any."""
    import nibabel as nib
    from resunet_trt import io

    out: dict[str, Any] = {}
    ct_path = workdir / "phantom_ct.nii.gz"
    # The phantom as a file: (D, H, W) -> NIfTI (x, y, z) = (W, H, D) reversed, RAS affine from the volume.
    t0 = time.perf_counter()
    nib.save(nib.Nifti1Image(np.ascontiguousarray(volume.hu.transpose(2, 1, 0)), _xyz_affine(volume)), ct_path)
    out["ct_write_nibabel_s"] = time.perf_counter() - t0
    out["ct_file_mb"] = ct_path.stat().st_size / 1e6

    t0 = time.perf_counter()
    loaded = io.load_ct(ct_path)
    out["read_s"] = time.perf_counter() - t0
    if loaded.hu.shape != volume.hu.shape:
        raise RuntimeError(f"read back {loaded.hu.shape}, wrote {volume.hu.shape}")

    out["read_codec"] = "isal igzip" if importlib.util.find_spec("isal") is not None else "zlib"

    # Baseline: nibabel's own reader (Python's zlib gzip) on the same file.
    t0 = time.perf_counter()
    np.asanyarray(nib.load(ct_path).dataobj)  # type: ignore[attr-defined]
    out["read_nibabel_zlib_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    io.save_mask(workdir / "phantom_mask.nii.gz", labels, like=loaded)
    out["write_s"] = time.perf_counter() - t0
    out["mask_file_mb"] = (workdir / "phantom_mask.nii.gz").stat().st_size / 1e6
    return out


def _xyz_affine(volume: Any) -> np.ndarray:
    """Affine of the (x, y, z) = (w, h, d) array from the volume's (d, h, w) affine."""
    a = np.asarray(volume.affine, dtype=np.float64)
    return a[:, [2, 1, 0, 3]]


def compare(args: argparse.Namespace, ct: np.ndarray, volume: Any, argv: list[str] | None) -> int:
    """Several models on one phantom, repeats interleaved; medians and ratios to the first model."""
    from resunet_trt.cli.bench import UsageError, parse_variant
    from resunet_trt.config import build_info, machine_info, versions
    from resunet_trt.io import CTVolume, atomic_write_bytes
    from resunet_trt.segmenter import Segmenter

    try:
        variants = [parse_variant(item) for item in args.compare.split(",")]
    except UsageError as exc:
        raise SystemExit(f"--compare: {exc}") from exc
    depth = volume.hu.shape[0]
    load_before = os.getloadavg()
    segs = {}
    for v in variants:
        t0 = time.perf_counter()
        segs[v.label] = Segmenter(
            model=v.model,
            device=args.device,
            backend=v.backend,
            batch_size=args.batch_size,
            num_threads=args.threads,
            precision=v.precision,
        )
        print(f"{v.label}: {segs[v.label]!r}, precision {segs[v.label].backend.precision}, "
              f"opened in {time.perf_counter() - t0:.2f} s")
    warm = CTVolume.from_array(ct[: min(depth, 2 * args.batch_size)], spacing=args.spacing)
    for seg in segs.values():
        seg.segment(warm)
    runs: dict[str, list[dict[str, float]]] = {label: [] for label in segs}
    labels_of: dict[str, np.ndarray] = {}
    for i in range(args.repeats):
        for label, seg in segs.items():
            t0 = time.perf_counter()
            result = seg.segment(volume)
            report = result.to_report()
            total = time.perf_counter() - t0
            stages = {k: float(result.timings.get(k, 0.0)) for k in (*DEVICE_STAGES, "slabs_wall")}
            stages["total_in_memory"] = total
            runs[label].append(stages)
            labels_of[label] = result.labels
            print(f"run {i + 1}/{args.repeats} {label}: {total:.2f} s, infer {stages['infer']:.2f} s, "
                  f"{report['lesion_count']} lesions")
    load_after = os.getloadavg()
    first = variants[0].label
    ref = labels_of[first]
    body = volume.hu > -500
    results = {}
    for label, seg in segs.items():
        median = {k: _median([r[k] for r in runs[label]]) for k in runs[label][0]}
        results[label] = {
            "backend": seg.backend.name,
            "precision": seg.backend.precision,
            "median_s": median,
            "runs": runs[label],
            "slices_per_s": depth / median["total_in_memory"],
            "label_agreement_vs_first_body": float((labels_of[label] == ref)[body].mean()),
        }
    base = results[first]["median_s"]["total_in_memory"]
    print(f"{'model':<16}{'total s':>9}{'infer s':>9}{'slices/s':>10}{'speed-up':>10}{'agree':>8}")
    for label, r in results.items():
        r["speedup_vs_first"] = base / r["median_s"]["total_in_memory"]
        print(f"{label:<16}{r['median_s']['total_in_memory']:>9.2f}{r['median_s']['infer']:>9.2f}"
              f"{r['slices_per_s']:>10.1f}{r['speedup_vs_first']:>10.2f}{r['label_agreement_vs_first_body']:>8.4f}")
    print(f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f}")
    record = {
        "benchmark": "pipeline_compare",
        "shape_dhw": list(volume.hu.shape),
        "spacing_mm": list(args.spacing),
        "what": "int16 volume in memory -> labels + lesion report (Segmenter.segment + Result.to_report)",
        "baseline": first,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "repeats": args.repeats,
        "timing": "models opened together, repeats interleaved across models, median per model",
        "results": results,
        "load_average_before": list(load_before),
        "load_average_after": list(load_after),
        "machine": machine_info(),
        "versions": versions(),
        "build": build_info(),
        "note": args.note,
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
    }
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / "pipeline_cpu_compare.json"
    atomic_write_bytes(out, (json.dumps(record, indent=2, default=str) + "\n").encode())
    print(f"wrote {out}")
    for seg in segs.values():
        seg.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--backend", default="auto", help="auto, tensorrt, openvino, onnxruntime or torch")
    parser.add_argument("--model", default=None, help="model file; default: the bundled model")
    parser.add_argument("--shape", type=_shape, default=(400, 512, 512), help="phantom D,H,W (default 400,512,512)")
    parser.add_argument("--spacing", type=_spacing, default=(2.5, 0.75, 0.75), help="dz,dy,dx mm")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-files", action="store_true", help="skip the .nii.gz read/write timing")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/pipeline_<device>.json)")
    parser.add_argument("--note", default="", help="free text stored with the results (model provenance, load)")
    parser.add_argument("--threads", type=int, default=None, help="CPU inference threads (default: the library's)")
    parser.add_argument(
        "--compare",
        default=None,
        help="comma-separated models (names as in resunet-bench --compare) run interleaved; ratios vs the first",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.batch_size < 1:
        parser.error("--repeats and --batch-size must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from resunet_trt.config import build_info, machine_info, versions
    from resunet_trt.io import CTVolume
    from resunet_trt.phantom import make_phantom
    from resunet_trt.segmenter import Segmenter

    t0 = time.perf_counter()
    ct, _ = make_phantom(shape=args.shape, spacing=args.spacing, seed=args.seed)
    t_phantom = time.perf_counter() - t0
    volume = CTVolume.from_array(ct, spacing=args.spacing)
    depth = volume.hu.shape[0]
    print(f"phantom {tuple(volume.hu.shape)} int16 at {args.spacing} mm in {t_phantom:.1f} s")
    if args.compare:
        return compare(args, ct, volume, argv)

    seg = Segmenter(
        model=args.model,
        device=args.device,
        backend=args.backend,
        batch_size=args.batch_size,
        num_threads=args.threads,
    )
    device_kind = "cuda" if seg.device.startswith("cuda") else "cpu"
    print(f"{seg!r}, precision {seg.metadata.precision}, plane {tuple(seg.metadata.plane_size)}")

    # Warm-up on a few slabs: session/engine initialisation, CUDA context, memory pools.
    warm = CTVolume.from_array(ct[: min(depth, 2 * args.batch_size)], spacing=args.spacing)

    runs: list[dict[str, float]] = []
    result = seg.segment(warm)
    for i in range(args.repeats):
        t0 = time.perf_counter()
        result = seg.segment(volume)
        report = result.to_report()
        total = time.perf_counter() - t0
        stages = {k: float(result.timings.get(k, 0.0)) for k in DEVICE_STAGES}
        stages["total_in_memory"] = total
        runs.append(stages)
        print(
            f"run {i + 1}/{args.repeats}: {total:.2f} s ({depth / total:.1f} slices/s), "
            + ", ".join(f"{k} {v:.2f}" for k, v in stages.items() if k != "total_in_memory")
            + f"; {report['lesion_count']} lesions"
        )
    median = {k: _median([r[k] for r in runs]) for k in runs[0]}
    total = median["total_in_memory"]
    pre_post = median["preprocess"] + median["decode"] + median["postprocess"]
    goal = GOALS_S[device_kind]

    files: dict[str, Any] = {}
    if not args.no_files:
        with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as tmp:
            files = bench_files(volume, result.labels, Path(tmp))
        print(
            f"files: read .nii.gz {files['read_s']:.2f} s with {files['read_codec']} "
            f"(nibabel + zlib {files['read_nibabel_zlib_s']:.2f} s, {files['ct_file_mb']:.0f} MB), "
            f"write mask {files['write_s']:.2f} s ({files['mask_file_mb']:.1f} MB)"
        )

    print(
        f"median in memory: {total:.2f} s = {depth / total:.1f} slices/s "
        f"(goal <= {goal:.0f} s on {device_kind}: {total / goal:.2f}x of the budget); "
        f"pre/decode/post {pre_post:.2f} s = {100 * pre_post / total:.1f}%"
    )

    record = {
        "benchmark": "pipeline",
        "shape_dhw": list(volume.hu.shape),
        "spacing_mm": list(args.spacing),
        "segmenter": {
            "backend": seg.backend.name,
            "device": seg.device,
            "model": args.model or "bundled default",
            "precision": seg.backend.precision,
            "plane_size": list(seg.metadata.plane_size),
            "batch_size": args.batch_size,
        },
        "repeats": args.repeats,
        "median_s": median,
        "runs": runs,
        "slices_per_s": depth / total,
        "pre_post_fraction": pre_post / total,
        "goal_s": goal,
        "goal_met": total <= goal,
        "files": files,
        "lesions_found": len(result.lesions),
        "gpu": _gpu_name() if device_kind == "cuda" else None,
        "machine": machine_info(),
        "versions": versions(),
        "build": build_info(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "note": args.note,
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
    }
    from resunet_trt.io import atomic_write_bytes

    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"pipeline_{device_kind}.json"
    atomic_write_bytes(out, (json.dumps(record, indent=2, default=str) + "\n").encode())
    print(f"wrote {out}")
    seg.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
