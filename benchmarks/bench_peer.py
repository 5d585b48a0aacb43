"""The whole job, CT file in -> mask file out, against a MONAI pipeline that runs the same weights.

The peer is what a competent MONAI user would write for this model, reading everything from the model's own
metadata (HU window, plane size, K context slices, and ``pixel_mm``/``slice_mm`` when a model sets them):

    LoadImage (+ channel first) -> Orientation to the model's training axes -> ScaleIntensityRange (window, clip)
    -> [Spacing to pixel_mm when set] -> per-slice Resize to the plane -> 2.5D stack of K neighbouring slices
    -> the network in batches (PyTorch under torch.inference_mode, or ONNX Runtime) -> Resize the logits back
    -> argmax (``max(0).indices``, torch's fastest reduction here) -> KeepLargestConnectedComponent over liver and
    tumor -> tumor components under the Segmenter's ``min_lesion_mm3`` become liver -> SaveImage (NIfTI, uint8).

"Per-slice Resize" is one MONAI ``Resize`` to ``(h, w, -1)`` with trilinear weights: the slice axis keeps its size,
so its weights are exactly 1 and every slice is resized bilinearly on its own (the same numbers as a loop over
slices, in one call). Ours is :class:`resunet_trt.Segmenter` (``segment_files``: read, segment, write the mask) in
the same process, and the ``resunet-seg`` command as a user runs it (a fresh process: its wall time includes
Python start-up and imports, which the in-process sides do not pay).

Order of work: first both sides segment the case once and their mask files are compared in world space (voxel
agreement, liver and tumor Dice); then each side runs ``--warmup`` untimed and ``--repeats`` timed passes,
interleaved (ours, peer, ours, peer...) so that load from other processes falls on both; the CPU seconds of
the process per run are recorded beside the wall time (the work done, which other processes barely change). Threads: ours uses
``--threads`` OpenMP threads for its kernels and the same number for the network (torch.set_num_threads, ONNX
Runtime intra-op threads); the peer gets the same. Each timed run records the load average before and after it
and the share of the CPU other processes used meanwhile (``disturbed`` above 10 %).

Examples::

    python benchmarks/bench_peer.py --data /path/to/dicom_series_folder --repeats 3
    python benchmarks/bench_peer.py --data case.nii.gz --runtimes onnxruntime --threads 1

Results go to benchmarks/results/peer_<case>.json (machine, versions, threads, load and command included).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
RUNTIMES = {"torch": "pt", "onnxruntime": "onnx"}
#: The canonical (D, H, W) axes of resunet-trt are (S, P, L); MONAI keeps the slice axis last: (P, L, S).
PEER_AXCODES = "PLS"
AGREEMENT_GOAL = 0.995
SPEEDUP_GOAL = 2.0

log = logging.getLogger("bench_peer")


# ----------------------------------------------------------------------------------------- the MONAI peer


class MonaiPeer:
    """The MONAI pipeline around the same model file: ``run(path, out_dir)`` -> (mask path, stage seconds).

    Args:
        model: a .pt checkpoint (run with PyTorch) or a .onnx file (run with ONNX Runtime).
        threads: CPU threads of the network.
        batch_size: slices per network batch.
        min_lesion_mm3: tumor components smaller than this volume become liver (the floor in voxels follows
            from each case's voxel size, as the Segmenter's does).
    """

    def __init__(self, model: Path, *, threads: int, batch_size: int, min_lesion_mm3: float = 65.0) -> None:
        import torch
        from monai.transforms import KeepLargestConnectedComponent, Orientation, ScaleIntensityRange

        self.model = Path(model)
        self.batch_size = batch_size
        self.min_lesion_mm3 = float(min_lesion_mm3)
        torch.set_num_threads(threads)
        if self.model.suffix == ".onnx":
            import onnxruntime as ort
            from resunet_trt.backends.onnxruntime import session_options
            from resunet_trt.export import read_onnx_metadata

            self.metadata = read_onnx_metadata(self.model)
            session = ort.InferenceSession(
                str(self.model), session_options(threads), providers=["CPUExecutionProvider"]
            )
            name = session.get_inputs()[0].name
            self._net: Callable[[Any], Any] = lambda x: torch.from_numpy(
                session.run(None, {name: x.numpy()})[0]
            )
            self.runtime = "onnxruntime"
        else:
            from resunet_trt.model import load_checkpoint

            network, self.metadata = load_checkpoint(self.model, map_location="cpu")
            network.eval()
            self._net = network
            self.runtime = "torch"
        meta = self.metadata
        self.window = (float(meta.window[0]), float(meta.window[1]))
        self.plane = (int(meta.plane_size[0]), int(meta.plane_size[1]))
        self.context = int(meta.context)
        self.pixel_mm = getattr(meta, "pixel_mm", None)
        self.slice_mm = getattr(meta, "slice_mm", None)
        self.divisor = int(getattr(meta, "plane_divisor", 32))
        self.orient = Orientation(axcodes=PEER_AXCODES)
        self.scale = ScaleIntensityRange(
            a_min=self.window[0], a_max=self.window[1], b_min=0.0, b_max=1.0, clip=True
        )
        self.keep_largest = KeepLargestConnectedComponent(
            applied_labels=[1, 2], is_onehot=False, independent=False, connectivity=3
        )

    def _loader(self, path: Path) -> Any:
        from monai.transforms import LoadImage

        reader = "PydicomReader" if path.is_dir() else "NibabelReader"
        return LoadImage(image_only=True, ensure_channel_first=True, reader=reader)

    def _context_index(self, depth: int, spacing_z: float) -> tuple[Any, Any, Any]:
        """Neighbour indices (D, K) below/above and blend weights for the 2.5D stack (slice_mm when set)."""
        import torch

        offsets = torch.arange(self.context, dtype=torch.float64) - self.context // 2
        if self.slice_mm is not None:
            offsets = offsets * (float(self.slice_mm) / spacing_z)
        pos = (torch.arange(depth, dtype=torch.float64)[:, None] + offsets[None, :]).clamp(0, depth - 1)
        lo = pos.floor().long()
        hi = (lo + 1).clamp(max=depth - 1)
        return lo, hi, (pos - lo).float()

    def run(self, path: Path, out_dir: Path) -> tuple[Path, dict[str, float]]:
        """Segment one CT file (NIfTI or DICOM folder) and save ``<name>_mask.nii.gz`` into ``out_dir``."""
        import torch
        from monai.data import MetaTensor
        from monai.transforms import CenterSpatialCrop, DivisiblePad, Resize, SaveImage, Spacing, SpatialPad
        from skimage.morphology import remove_small_objects

        times: dict[str, float] = {}
        t0 = time.perf_counter()
        image = self.orient(self._loader(path)(str(path)))  # (1, X, Y, Z) float32, planes (X, Y), slices Z
        t1 = time.perf_counter()
        times["read"] = t1 - t0

        _, size_x, size_y, depth = image.shape
        spacing_z = float(np.linalg.norm(np.asarray(image.affine)[:3, 2]))
        x = self.scale(image)
        unpad = None
        if self.pixel_mm is not None:
            # The model's pixel size, then padded (centred) to at least its plane and to a multiple of 2**depth, as
            # the network needs; the logits are cropped back before resizing to the scan's grid.
            x = Spacing(pixdim=(self.pixel_mm, self.pixel_mm, -1), mode="bilinear")(x)
            unpad = CenterSpatialCrop(roi_size=(int(x.shape[1]), int(x.shape[2]), -1))
            x = SpatialPad(spatial_size=(*self.plane, -1))(x)
            x = DivisiblePad(k=(self.divisor, self.divisor, 1))(x)
        else:
            x = Resize(spatial_size=(*self.plane, -1), mode="trilinear", align_corners=False)(x)
        planes = x.as_tensor()[0].permute(2, 0, 1).contiguous()  # (D, h, w)
        lo, hi, weight = self._context_index(depth, spacing_z)
        t2 = time.perf_counter()
        times["preprocess"] = t2 - t1
        times["infer"] = times["decode"] = 0.0

        back = Resize(spatial_size=(size_x, size_y, -1), mode="trilinear", align_corners=False)
        labels = torch.empty((size_x, size_y, depth), dtype=torch.uint8)
        with torch.inference_mode():
            for start in range(0, depth, self.batch_size):
                stop = min(start + self.batch_size, depth)
                ta = time.perf_counter()
                w = weight[start:stop, :, None, None]
                batch = planes[lo[start:stop]] * (1 - w) + planes[hi[start:stop]] * w  # (B, K, h, w)
                tb = time.perf_counter()
                logits = self._net(batch)  # (B, C, h, w)
                tc = time.perf_counter()
                logits = logits.permute(1, 2, 3, 0)  # (C, h, w, B)
                full = back(unpad(logits) if unpad is not None else logits)  # (C, X, Y, B)
                labels[:, :, start:stop] = full.as_tensor().max(dim=0).indices.to(torch.uint8)
                td = time.perf_counter()
                times["preprocess"] += tb - ta
                times["infer"] += tc - tb
                times["decode"] += td - tc

        t3 = time.perf_counter()
        mask = MetaTensor(labels[None], meta=image.meta)
        mask = self.keep_largest(mask)
        arr = mask.as_tensor()[0].numpy()
        tumor = arr == 2
        voxel_mm3 = float(np.prod(np.asarray(image.pixdim, dtype=np.float64)[:3]))
        floor = int(np.ceil(self.min_lesion_mm3 / voxel_mm3 - 1e-9))
        if floor > 1:
            kept = remove_small_objects(tumor, max_size=floor - 1, connectivity=3)
            arr[tumor & ~kept] = 1
        t4 = time.perf_counter()
        times["postprocess"] = t4 - t3

        saver = SaveImage(
            output_dir=str(out_dir),
            output_postfix="mask",
            output_ext=".nii.gz",
            output_dtype=np.uint8,
            resample=False,
            separate_folder=False,
            print_log=False,
        )
        saver(MetaTensor(torch.from_numpy(arr)[None], meta=image.meta))
        times["write"] = time.perf_counter() - t4
        times["total"] = time.perf_counter() - t0
        (written,) = list(Path(out_dir).glob("*_mask.nii.gz"))
        return written, times


# ----------------------------------------------------------------------------------------- ours


def run_ours(segmenter: Any, path: Path, out_dir: Path) -> tuple[Path, dict[str, float]]:
    """:meth:`Segmenter.segment_files` on one case, a NIfTI mask only (as the peer writes): the mask path and its
    stage seconds."""
    t0 = time.perf_counter()
    (outcome,) = segmenter.segment_files([path], out_dir, report=False, mask_format="nifti")
    total = time.perf_counter() - t0
    if not outcome.ok:
        raise RuntimeError(f"resunet-trt failed on {path}: {outcome.error}")
    times = {k: float(v) for k, v in outcome.result.timings.items() if k != "total"}
    times["total"] = total
    return Path(outcome.outputs["mask"]), times


def run_cli(path: Path, out_dir: Path, backend: str, model: Path, threads: int) -> float | None:
    """Wall seconds of ``resunet-seg`` in a fresh process (start-up and imports included); None if it failed.

    Its kernels get ``threads`` OpenMP threads; its network runs on the library's default (one per core).
    """
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "resunet_trt.cli.seg", str(path), "-o", str(out_dir)]
    cmd += ["--model", str(model), "--backend", backend, "--device", "cpu", "--no-report", "--no-progress"]
    cmd += ["--format", "nifti"]  # the peer writes a NIfTI mask only
    t0 = time.perf_counter()
    done = subprocess.run(cmd, check=False, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        log.error("resunet-seg failed (exit %d): %s", done.returncode, done.stderr.strip()[-500:])
        return None
    return wall


# ----------------------------------------------------------------------------------------- comparing masks


def mask_in_canonical(path: Path, volume: Any) -> np.ndarray:
    """A mask file in ``volume``'s canonical (D, H, W) grid, after checking both sit on the same world grid."""
    import nibabel as nib
    from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform
    from resunet_trt.io import CANONICAL_AXCODES

    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj)
    ornt = ornt_transform(io_orientation(img.affine), axcodes2ornt(CANONICAL_AXCODES))
    out = apply_orientation(data, ornt)
    affine = img.affine @ nib.orientations.inv_ornt_aff(ornt, data.shape)
    if out.shape != volume.hu.shape or not np.allclose(affine, volume.affine, atol=1e-2):
        raise ValueError(
            f"{path}: mask grid {out.shape} / affine\n{np.round(affine, 3)}\nis not the CT's "
            f"{volume.hu.shape} /\n{np.round(volume.affine, 3)}"
        )
    return np.ascontiguousarray(out).astype(np.uint8)


def agreement(ours: np.ndarray, peer: np.ndarray) -> dict[str, float]:
    """Voxel agreement (all voxels, and over voxels either side calls liver or tumor) and per-class Dice."""

    def dice(a: np.ndarray, b: np.ndarray) -> float:
        total = int(a.sum()) + int(b.sum())
        return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total

    fg = (ours > 0) | (peer > 0)
    return {
        "voxel_agreement": float((ours == peer).mean()),
        "foreground_agreement": float((ours[fg] == peer[fg]).mean()) if fg.any() else 1.0,
        "liver_dice": dice(ours >= 1, peer >= 1),
        "tumor_dice": dice(ours == 2, peer == 2),
        "ours_liver_voxels": int((ours >= 1).sum()),
        "peer_liver_voxels": int((peer >= 1).sum()),
        "ours_tumor_voxels": int((ours == 2).sum()),
        "peer_tumor_voxels": int((peer == 2).sum()),
    }


# ----------------------------------------------------------------------------------------- timing


def _process_cpu_seconds() -> float:
    """CPU seconds of this process, all threads: the work done, which other processes' load barely changes."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _median_stages(runs: list[dict[str, float]]) -> dict[str, float]:
    keys = [k for k in runs[0] if all(k in r for r in runs)]
    return {k: float(statistics.median(r[k] for r in runs)) for k in keys}


def bench_runtime(
    runtime: str, path: Path, volume: Any, args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    """Mask equality, then interleaved timed runs of ours and the peer on one runtime."""
    from resunet_trt import Segmenter
    from resunet_trt.backends import default_model_path
    from resunet_trt.cli.bench import LoadProbe

    model = Path(args.model_dir) / default_model_path(RUNTIMES[runtime]).name if args.model_dir else None
    model = model or default_model_path(RUNTIMES[runtime])
    seg = Segmenter(
        model=model, device="cpu", backend=runtime, batch_size=args.batch_size, num_threads=args.threads
    )
    peer = MonaiPeer(model, threads=args.threads, batch_size=args.batch_size, min_lesion_mm3=seg.min_lesion_mm3)
    try:
        ours_mask, _ = run_ours(seg, path, work / f"{runtime}_check_ours")
        peer_mask, _ = peer.run(path, work / f"{runtime}_check_peer")
        agree = agreement(mask_in_canonical(ours_mask, volume), mask_in_canonical(peer_mask, volume))
        print(
            f"[{runtime}] masks: {100 * agree['voxel_agreement']:.4f} % of voxels agree "
            f"({100 * agree['foreground_agreement']:.2f} % of foreground), liver Dice {agree['liver_dice']:.4f}, "
            f"tumor Dice {agree['tumor_dice']:.4f}"
        )
        sides: dict[str, list[dict[str, Any]]] = {"ours": [], "peer": []}
        for i in range(args.warmup + args.repeats):
            for side in ("ours", "peer"):
                out = work / f"{runtime}_{side}_{i}"
                probe = LoadProbe()
                probe.start()
                cpu0 = _process_cpu_seconds()
                if side == "ours":
                    _, times = run_ours(seg, path, out)
                else:
                    _, times = peer.run(path, out)
                times["cpu_seconds"] = _process_cpu_seconds() - cpu0
                load = probe.stop()
                shutil.rmtree(out, ignore_errors=True)
                if i >= args.warmup:
                    sides[side].append({"times": times, **load})
        cli = [run_cli(path, work / f"{runtime}_cli_{i}", runtime, model, args.threads) for i in range(args.cli_repeats)]
        cli_ok = [c for c in cli if c is not None]
    finally:
        seg.close()

    shown = Path(model).resolve()
    root = Path(__file__).resolve().parents[1]
    result: dict[str, Any] = {"runtime": runtime, "agreement": agree,
                              "model": str(shown.relative_to(root)) if shown.is_relative_to(root) else shown.name}
    for side, runs in sides.items():
        result[side] = {
            "stages_median_s": _median_stages([r["times"] for r in runs]),
            "total_s": [r["times"]["total"] for r in runs],
            "runs": runs,
            "disturbed_runs": sum(bool(r["disturbed"]) for r in runs),
        }
    ours_t = result["ours"]["stages_median_s"]["total"]
    peer_t = result["peer"]["stages_median_s"]["total"]
    result["speedup_total"] = peer_t / ours_t
    result["speedup_without_infer"] = (peer_t - result["peer"]["stages_median_s"]["infer"]) / (
        ours_t - result["ours"]["stages_median_s"]["infer"]
    )
    result["cpu_seconds_ratio"] = (
        result["peer"]["stages_median_s"]["cpu_seconds"] / result["ours"]["stages_median_s"]["cpu_seconds"]
    )
    result["speedup_goal"] = SPEEDUP_GOAL
    result["resunet_seg_cli_wall_s"] = cli
    if cli_ok:
        result["speedup_cli_vs_peer_in_process"] = peer_t / statistics.median(cli_ok)
    return result


def render(res: dict[str, Any]) -> str:
    lines = [f"[{res['runtime']}] median seconds per stage (ours | MONAI peer)"]
    ours, peer = res["ours"]["stages_median_s"], res["peer"]["stages_median_s"]
    for stage in ("read", "preprocess", "infer", "decode", "postprocess", "write", "total"):
        a, b = ours.get(stage, float("nan")), peer.get(stage, float("nan"))
        ratio = b / a if a > 0 else float("nan")
        lines.append(f"  {stage:<12} {a:8.3f} | {b:8.3f}   x{ratio:.2f}")
    lines.append(
        f"  whole job: x{res['speedup_total']:.2f} (goal x{SPEEDUP_GOAL:.0f}); without the network's own time "
        f"x{res['speedup_without_infer']:.2f}; CPU seconds {ours['cpu_seconds']:.1f} | {peer['cpu_seconds']:.1f} "
        f"(x{res['cpu_seconds_ratio']:.2f})"
    )
    cli = [c for c in res["resunet_seg_cli_wall_s"] if c is not None]
    if cli:
        lines.append(
            f"  resunet-seg in a fresh process: {statistics.median(cli):.2f} s (start-up and imports included)"
        )
    for side in ("ours", "peer"):
        if res[side]["disturbed_runs"]:
            lines.append(f"  WARNING: {res[side]['disturbed_runs']} {side} run(s) shared the CPU with other processes")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="CT: a NIfTI file or a DICOM series folder")
    parser.add_argument("--runtimes", default="torch,onnxruntime", help="comma-separated: torch, onnxruntime")
    parser.add_argument("--model-dir", default=None, help="folder with resunet_default.{pt,onnx} (default: bundled)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads of each side")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cli-repeats", type=int, default=1, help="timed resunet-seg runs (0: none)")
    parser.add_argument("--out", type=Path, default=None, help="JSON (default results/peer_<case>.json)")
    args = parser.parse_args(argv)
    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    bad = [r for r in runtimes if r not in RUNTIMES]
    if bad or not runtimes:
        parser.error(f"--runtimes must name torch and/or onnxruntime, got {args.runtimes!r}")
    if args.threads < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error("--threads and --repeats must be >= 1, --warmup >= 0")
    # Our kernels read OMP_NUM_THREADS when the compiled module loads: set it before importing resunet_trt.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # MONAI's notices about optional GPU decoders and a changed default do not concern this CPU pipeline.
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*(nvImageCodec|Orientation.__init__:labels).*")

    import monai
    import torch
    from resunet_trt import config
    from resunet_trt.cli.bench import LoadProbe
    from resunet_trt.cli.eval import write_json_atomic
    from resunet_trt.io import load_ct

    torch.set_num_threads(args.threads)
    volume = load_ct(args.data)
    build = config.build_info()
    threads = {
        "ours_openmp": build["openmp_threads"],
        "ours_network": args.threads,
        "peer_torch": torch.get_num_threads(),
        "peer_onnxruntime": args.threads,
    }
    print(f"case: {args.data} {volume.hu.shape} spacing {tuple(round(s, 3) for s in volume.spacing)} mm")
    print(f"threads: {threads}; load before: {LoadProbe.load_average()}")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_peer_") as tmp:
        for runtime in runtimes:
            res = bench_runtime(runtime, args.data, volume, args, Path(tmp))
            print(render(res))
            results.append(res)
    load_after = LoadProbe.load_average()
    print(f"load after: {load_after}")
    below = [r["runtime"] for r in results if r["speedup_total"] < SPEEDUP_GOAL]
    disagree = [r["runtime"] for r in results if r["agreement"]["voxel_agreement"] < AGREEMENT_GOAL]
    case = args.data.name.split(".")[0]
    payload = {
        "benchmark": "peer",
        "case": {"path": str(args.data), "shape_dhw": list(volume.hu.shape), "spacing_mm": list(volume.spacing)},
        "threads": threads,
        "batch_size": args.batch_size,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "results": results,
        "below_speedup_goal": below,
        "masks_disagree": disagree,
        "machine": config.machine_info(),
        "versions": {**config.versions(), "monai": monai.__version__},
        "build": build,
    }
    out = args.out or HERE / "results" / f"peer_{case}.json"
    write_json_atomic(out, payload)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
