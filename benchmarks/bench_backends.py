"""CPU (and, where present, GPU) backends on the same real-CT slices in one run: slices/s and ratios.

    PYTHONPATH=python python benchmarks/bench_backends.py                      # the bundled ONNX files
    PYTHONPATH=python python benchmarks/bench_backends.py --checkpoint model.pt --slices 64 --repeats 7

With the bundled default model its own fp32, FP16 and INT8 ONNX files are timed (what users run); with
``--checkpoint`` the model is exported to fp32, FP16 and INT8 (Q/DQ, percentile calibration on the CT cases
other than the one timed) in a temporary folder. CPU runs: PyTorch fp32, ONNX Runtime fp32/INT8/FP16 and, when
installed, OpenVINO fp32, bf16 (where the CPU has it) and INT8. Every backend runs the same preprocessed slices of
tests/data/lits117_roi128 in batches of ``--batch``. All backends are opened first and the repeats are
interleaved (repeat r times every backend once, in turn), so that a change of load on a shared machine touches
all of them alike; the median over repeats is reported, with the ratio to ONNX Runtime fp32 and to PyTorch fp32
of the same run. Label agreement with PyTorch fp32 over the body (pixels above air) is printed beside the speed
so a fast but wrong variant is visible. Without a checkpoint and without the bundled default model, an untrained
network of the default configuration is timed (speed does not depend on the weights; agreement then means
little, and the JSON says so).

Writes benchmarks/results/backends_cpu.json (machine, versions, build flags, load average, settings, results).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
try:  # an installed package (or PYTHONPATH) wins; else run from the source tree
    import resunet_trt  # noqa: F401
except ImportError:
    sys.path.insert(0, str(ROOT / "python"))

from resunet_trt import kernels
from resunet_trt.config import build_info, machine_info, versions


def _load_hu(path: Path) -> np.ndarray:
    from resunet_trt.io import load_ct

    return load_ct(path).hu


def _checkpoint(args: argparse.Namespace, tmp: Path) -> tuple[Path, str]:
    if args.checkpoint:
        return Path(args.checkpoint), f"checkpoint {args.checkpoint}"
    from resunet_trt.backends import default_model_path

    try:
        return default_model_path("pt"), "bundled default model"
    except FileNotFoundError:
        pass
    import torch
    from resunet_trt.metadata import ModelMetadata
    from resunet_trt.model import ResUNet, ResUNetConfig, save_checkpoint

    torch.manual_seed(0)
    config = ResUNetConfig()
    model = ResUNet(config).eval()
    path = tmp / "untrained_default.pt"
    save_checkpoint(path, model, ModelMetadata(plane_size=(256, 256), context=config.in_channels))
    return path, "untrained network of the default configuration (no bundled model found)"


def _pass(fn, x: np.ndarray, batch: int) -> tuple[float, np.ndarray]:
    """Seconds for one pass over all of ``x`` in batches, and the logits."""
    t0 = time.perf_counter()
    outs = [np.asarray(fn(x[i : i + batch])) for i in range(0, len(x), batch)]
    return time.perf_counter() - t0, np.concatenate(outs)


def _time(fn, x: np.ndarray, batch: int, repeats: int) -> tuple[float, list[float], np.ndarray]:
    """Median seconds over ``repeats`` passes over all of ``x``, the per-repeat times, and the last logits."""
    out = None
    fn(x[:batch])  # warm-up: allocations, lazy initialisation, kernel selection
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        outs = [fn(x[i : i + batch]) for i in range(0, len(x), batch)]
        times.append(time.perf_counter() - t0)
        out = outs
    assert out is not None
    return statistics.median(times), times, np.concatenate([np.asarray(o) for o in out])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", help=".pt checkpoint (default: bundled default model, else untrained)")
    p.add_argument("--data", default=str(ROOT / "tests" / "data"), help="folder with the test CT cases")
    p.add_argument("--slices", type=int, default=32, help="slices timed per repeat (default 32)")
    p.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats, median reported (default 5)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads for torch and ONNX Runtime")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "backends_cpu.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import importlib.util

    import torch
    from resunet_trt.backends import default_model_path
    from resunet_trt.backends.onnxruntime import OnnxRuntimeBackend, cuda_provider_available
    from resunet_trt.backends.torch import TorchBackend
    from resunet_trt.export import convert_fp16, export_onnx, quantize_int8, read_onnx_metadata

    data = Path(args.data)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-backends-") as tmpdir:
        tmp = Path(tmpdir)
        ckpt, model_source = _checkpoint(args, tmp)
        t0 = time.perf_counter()
        if model_source == "bundled default model":
            fp32, fp16, int8 = (default_model_path(k) for k in ("onnx", "fp16", "int8"))
            model_source += " (its bundled fp32, FP16 and INT8 ONNX files)"
        else:
            fp32 = export_onnx(ckpt, tmp / "m.onnx")
            fp16 = convert_fp16(fp32, tmp / "m.fp16.onnx")
            calib = [
                _load_hu(data / "lits_small64" / "ct.nii.gz"),
                _load_hu(data / "totalseg_abdomen3mm" / "ct.nii.gz"),
            ]
            int8 = quantize_int8(fp32, tmp / "m.int8.onnx", volumes=calib, method="percentile", max_slices=32)
        export_s = time.perf_counter() - t0
        meta = read_onnx_metadata(fp32)

        hu = _load_hu(data / "lits117_roi128" / "ct.nii.gz")
        mid = hu.shape[0] // 2
        start = max(0, mid - args.slices // 2)
        stop = min(hu.shape[0], start + args.slices)
        x = np.ascontiguousarray(
            np.asarray(
                kernels.preprocess(
                    hu,
                    window=meta.window,
                    out_size=meta.plane_size,
                    context=meta.context,
                    dtype="float32",
                    start=start,
                    stop=stop,
                ),
                dtype=np.float32,
            )
        )
        # The body: pixels of the middle context slice above air (air sits at the window's floor).
        mid_channel = x[:, meta.context // 2]
        body = mid_channel > mid_channel.min() + 1e-3

        torch.set_num_threads(args.threads)
        runs = [
            ("pytorch_fp32", lambda: TorchBackend(ckpt, device="cpu", threads=args.threads)),
            ("onnxruntime_fp32", lambda: OnnxRuntimeBackend(fp32, device="cpu", threads=args.threads)),
            ("onnxruntime_int8", lambda: OnnxRuntimeBackend(int8, device="cpu", threads=args.threads)),
            ("onnxruntime_fp16", lambda: OnnxRuntimeBackend(fp16, device="cpu", threads=args.threads)),
        ]
        openvino_notes: dict[str, str] = {}
        if importlib.util.find_spec("openvino") is not None:
            from resunet_trt.backends.openvino import OpenVinoBackend, bf16_supported

            def ov(path: Path, precision: str):
                return lambda: OpenVinoBackend(path, threads=args.threads, precision=precision)

            runs += [("openvino_fp32", ov(fp32, "fp32"))]
            if bf16_supported():
                runs += [("openvino_bf16", ov(fp32, "bf16"))]
            else:
                openvino_notes["openvino_bf16"] = "skipped: this CPU has no bf16 (AVX-512 BF16/AMX)"
            runs += [("openvino_int8", ov(int8, "int8"))]
        else:
            openvino_notes["openvino"] = "skipped: openvino is not installed"

        opened = {name: make() for name, make in runs}
        logits_of: dict[str, np.ndarray] = {}
        times_of: dict[str, list[float]] = {name: [] for name in opened}
        for name, backend in opened.items():  # warm-up: allocations, lazy initialisation, kernel selection
            backend.infer(x[: args.batch])
        for _ in range(args.repeats):
            for name, backend in opened.items():
                seconds, logits_of[name] = _pass(backend.infer, x, args.batch)
                times_of[name].append(seconds)
        for backend in opened.values():
            backend.close()
        results: dict[str, dict] = {}
        ref_labels = logits_of["pytorch_fp32"].argmax(1)
        for name in opened:
            med = statistics.median(times_of[name])
            labels = logits_of[name].argmax(1)
            results[name] = {
                "slices_per_s": len(x) / med,
                "median_s": med,
                "times_s": times_of[name],
                "label_agreement_vs_pytorch_fp32": float((labels == ref_labels)[body].mean()),
            }
        base = results["pytorch_fp32"]["slices_per_s"]
        base_ort = results["onnxruntime_fp32"]["slices_per_s"]
        for r in results.values():
            r["ratio_vs_pytorch_fp32"] = r["slices_per_s"] / base
            r["ratio_vs_onnxruntime_fp32"] = r["slices_per_s"] / base_ort

        gpu: dict[str, dict] = {}
        if torch.cuda.is_available():
            import cupy as cp

            xg = cp.asarray(x)
            gpu_runs = [
                ("pytorch_fp16_autocast", lambda: TorchBackend(ckpt, device="cuda:0", fp16=True)),
                ("pytorch_fp32", lambda: TorchBackend(ckpt, device="cuda:0", fp16=False)),
            ]
            if cuda_provider_available():
                gpu_runs.append(("onnxruntime_cuda_fp32", lambda: OnnxRuntimeBackend(fp32, device="cuda:0")))
                gpu_runs.append(("onnxruntime_cuda_fp16", lambda: OnnxRuntimeBackend(fp16, device="cuda:0")))
            for name, make in gpu_runs:
                with make() as backend:
                    xin = xg.astype(backend.input_dtype)

                    def run(batch, backend=backend):
                        out = backend.infer(batch)
                        cp.cuda.get_current_stream().synchronize()
                        return cp.asnumpy(out)

                    med, times, _ = _time(run, xin, args.batch, args.repeats)
                gpu[name] = {"slices_per_s": len(x) / med, "median_s": med, "times_s": times}
            gpu_base = gpu["pytorch_fp32"]["slices_per_s"]
            for r in gpu.values():
                r["ratio_vs_pytorch_fp32_gpu"] = r["slices_per_s"] / gpu_base
            gpu_name = torch.cuda.get_device_name(0)
        else:
            gpu_name = None

    report = {
        "benchmark": "bench_backends",
        "command": "python benchmarks/bench_backends.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": model_source,
        "model_config": meta.model_config,
        "plane_size": list(meta.plane_size),
        "context": meta.context,
        "slices": len(x),
        "slice_range": [int(start), int(stop)],
        "case": "tests/data/lits117_roi128",
        "batch": args.batch,
        "repeats": args.repeats,
        "threads": args.threads,
        "export_seconds": export_s,
        "cpu": results,
        "cpu_notes": openvino_notes,
        "agreement_mask": "body: pixels of the middle context slice above the window floor (air)",
        "timing": "backends opened together, repeats interleaved across backends, median per backend",
        "gpu": {"device": gpu_name, "results": gpu} if gpu else None,
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
        "machine": machine_info(),
        "versions": versions(),
        "build": build_info(),
    }
    from resunet_trt.io import atomic_write_bytes

    out = atomic_write_bytes(Path(args.out), (json.dumps(report, indent=2) + "\n").encode())

    print(
        f"{len(x)} slices of {meta.plane_size[0]}x{meta.plane_size[1]}, context {meta.context}, batch {args.batch}, "
        f"{args.threads} threads, median of {args.repeats} ({model_source})"
    )
    print(f"{'backend':<22}{'slices/s':>10}{'vs torch':>9}{'vs ORT':>8}{'agree':>9}")
    for name, r in results.items():
        print(
            f"{name:<22}{r['slices_per_s']:>10.2f}{r['ratio_vs_pytorch_fp32']:>9.2f}"
            f"{r['ratio_vs_onnxruntime_fp32']:>8.2f}{r['label_agreement_vs_pytorch_fp32']:>9.4f}"
        )
    for name, note in openvino_notes.items():
        print(f"{name}: {note}")
    for name, r in gpu.items():
        print(
            f"{'gpu ' + name:<30}{r['slices_per_s']:>10.1f}{r['ratio_vs_pytorch_fp32_gpu']:>8.2f}  ({gpu_name})"
        )
    print(f"load average before/after: {load_before[0]:.1f} / {os.getloadavg()[0]:.1f}; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
