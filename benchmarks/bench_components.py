"""Benchmark of connected_components, postprocess and lesion_stats against cc3d and scipy.ndimage.

The input is a synthetic abdominal CT phantom (default 400 x 512 x 512, LiTS size) from
:func:`resunet_trt.phantom.make_phantom`; when that module is missing, the bundled LiTS ROI labels are tiled to
the same shape. Each op runs once to warm up, then ``--repeats`` times; the median is reported in Mvox/s with
its ratio to a baseline measured in the same run:

- connected_components (26-connectivity) on the liver (label >= 1) and tumor (label == 2) masks, against
  ``cc3d.connected_components`` and ``scipy.ndimage.label`` (CPU), or ``cupyx.scipy.ndimage.label`` (CUDA);
- postprocess against the same steps written with cc3d + numpy (CPU only);
- lesion_stats against ``cc3d.connected_components`` + ``cc3d.statistics`` (CPU only).

Goals (issue 2): CPU >= 1.0x cc3d on both masks; CUDA >= 3x cupyx.scipy.ndimage.label.

Examples::

    nice -n 10 python benchmarks/bench_components.py
    python benchmarks/bench_components.py --device cuda --repeats 20
    python benchmarks/bench_components.py --shape 64,256,256 --repeats 3   # quick look

Results go to benchmarks/results/components_<device>.json with machine, versions and build flags.
``run(ct, labels, repeats)`` returns the CPU rows for benchmarks/bench_kernels.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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


def _row(op: str, inp: str, impl: str, device: str, seconds: float, voxels: int) -> dict[str, Any]:
    return {
        "op": op,
        "input": inp,
        "impl": impl,
        "device": device,
        "median_s": seconds,
        "mvox_per_s": voxels / seconds / 1e6,
    }


def _with_ratios(rows: list[dict[str, Any]], ours: str) -> list[dict[str, Any]]:
    """Adds ``speedup_vs_<impl>`` = baseline median / our median to our row of each (op, input)."""
    for row in rows:
        if row["impl"] != ours:
            continue
        for other in rows:
            if other["op"] == row["op"] and other["input"] == row["input"] and other["impl"] != ours:
                row[f"speedup_vs_{other['impl']}"] = other["median_s"] / row["median_s"]
    return rows


def _postprocess_cc3d(labels: np.ndarray, min_lesion_voxels: int = 10) -> np.ndarray:
    """The postprocess steps with cc3d + numpy: the baseline."""
    import cc3d

    comp = cc3d.connected_components(labels >= 1, connectivity=26)
    sizes = np.bincount(comp.ravel())
    if sizes.size <= 1:
        return np.zeros_like(labels)
    sizes[0] = 0
    out = np.where(comp == np.argmax(sizes), labels, 0).astype(np.uint8)
    tumor = cc3d.connected_components(out == 2, connectivity=26)
    tsizes = np.bincount(tumor.ravel())
    small = tsizes < min_lesion_voxels
    small[0] = False
    out[small[tumor]] = 1
    return out


def _lesion_stats_cc3d(labels: np.ndarray) -> Any:
    import cc3d

    return cc3d.statistics(cc3d.connected_components(labels == 2, connectivity=26))


def run(ct: np.ndarray, labels: np.ndarray, repeats: int) -> list[dict[str, Any]]:
    """CPU rows: our ops against cc3d and scipy on the liver and tumor masks of ``labels``.

    Args:
        ct: (D, H, W) int16 CT (unused by these ops; kept so every kernel benchmark takes the same inputs).
        labels: (D, H, W) uint8 0/1/2.
        repeats: timed runs per measurement (median reported), after one warm-up.

    Returns:
        One dict per (op, input, impl): ``median_s``, ``mvox_per_s``, and on our rows ``speedup_vs_<impl>``.
    """
    import cc3d
    from resunet_trt import kernels
    from scipy import ndimage

    del ct
    n = int(labels.size)
    rows: list[dict[str, Any]] = []
    struct = ndimage.generate_binary_structure(3, 3)
    for name, mask in (("liver", labels >= 1), ("tumor", labels == 2)):
        group = [
            _row(
                "connected_components",
                name,
                "resunet_trt",
                "cpu",
                _median_seconds(lambda m=mask: kernels.connected_components(m, connectivity=26), repeats),
                n,
            ),
            _row(
                "connected_components",
                name,
                "cc3d",
                "cpu",
                _median_seconds(lambda m=mask: cc3d.connected_components(m, connectivity=26), repeats),
                n,
            ),
            _row(
                "connected_components",
                name,
                "scipy",
                "cpu",
                _median_seconds(lambda m=mask: ndimage.label(m, structure=struct), repeats),
                n,
            ),
        ]
        rows += _with_ratios(group, "resunet_trt")
    group = [
        _row(
            "postprocess",
            "labels",
            "resunet_trt",
            "cpu",
            _median_seconds(lambda: kernels.postprocess(labels), repeats),
            n,
        ),
        _row(
            "postprocess",
            "labels",
            "cc3d+numpy",
            "cpu",
            _median_seconds(lambda: _postprocess_cc3d(labels), repeats),
            n,
        ),
    ]
    rows += _with_ratios(group, "resunet_trt")
    group = [
        _row(
            "lesion_stats",
            "labels",
            "resunet_trt",
            "cpu",
            _median_seconds(lambda: kernels.lesion_stats(labels), repeats),
            n,
        ),
        _row(
            "lesion_stats",
            "labels",
            "cc3d",
            "cpu",
            _median_seconds(lambda: _lesion_stats_cc3d(labels), repeats),
            n,
        ),
    ]
    rows += _with_ratios(group, "resunet_trt")
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


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, path)


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
    args = parser.parse_args(argv)

    from resunet_trt.config import build_info, machine_info, versions

    ct, labels, source = load_volume(args.shape)
    rows = run(ct, labels, args.repeats) if args.device == "cpu" else run_cuda(labels, args.repeats)
    print(
        f"input: {source}, shape {labels.shape}, liver {int((labels >= 1).sum())} vox, tumor {int((labels == 2).sum())} vox"
    )
    print(f"{'op':<22}{'input':<8}{'impl':<14}{'median ms':>11}{'Mvox/s':>10}  speedup")
    for r in rows:
        ratios = ", ".join(
            f"{k[len('speedup_vs_') :]} {v:.2f}x" for k, v in r.items() if k.startswith("speedup_vs_")
        )
        print(
            f"{r['op']:<22}{r['input']:<8}{r['impl']:<14}{r['median_s'] * 1e3:>11.1f}{r['mvox_per_s']:>10.0f}  {ratios}"
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
