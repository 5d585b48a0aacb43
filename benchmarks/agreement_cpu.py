"""Every CPU backend and precision against PyTorch fp32 on real CT: label agreement over the body and Dice.

    nice -n 10 python benchmarks/agreement_cpu.py                     # tests/data cases + ../shared DICOM if there
    python benchmarks/agreement_cpu.py --case path/ct.nii.gz:path/label.nii.gz --case dicom_dir/

Each case goes through :class:`resunet_trt.Segmenter` (the whole pipeline, postprocessing included) with the
bundled model on PyTorch fp32 (the reference), ONNX Runtime fp32 and INT8, and OpenVINO fp32, bf16 and INT8.
Reported per case and variant: the share of body voxels (HU > -500) whose label equals the reference's, and,
where the case has an expert label, the Dice of liver (labels >= 1) and tumor (label 2) against it and the
difference to the reference's Dice. Pass criteria (issue 11): agreement >= 99.5 %, |delta Dice| <= 0.005 (liver)
and <= 0.01 (tumor). Results go to benchmarks/results/agreement_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
try:
    import resunet_trt  # noqa: F401
except ImportError:
    sys.path.insert(0, str(ROOT / "python"))

VARIANTS = ("torch", "onnx", "int8", "openvino", "openvino-bf16", "openvino-int8")
LIMITS = {"agreement": 0.995, "liver": 0.005, "tumor": 0.01}


def _default_cases() -> list[tuple[str, Path, Path | None]]:
    data = ROOT / "tests" / "data"
    sample = ROOT / "python" / "resunet_trt" / "samples"
    cases = [
        ("lits117_roi128", data / "lits117_roi128" / "ct.nii.gz", data / "lits117_roi128" / "label.nii.gz"),
        # the bundled copy: its header carries the true 5.3 mm pixels (tests/data keeps the stale 0.66 mm of its
        # source, which a model with physical sampling takes at its word)
        ("lits_small64", sample / "lits_small64_ct.nii.gz", sample / "lits_small64_label.nii.gz"),
        ("totalseg_abdomen3mm", data / "totalseg_abdomen3mm" / "ct.nii.gz", None),
    ]
    crlm = ROOT.parent / "shared" / "data" / "crlm_dicom" / "CRLM-CT-1006"
    if crlm.is_dir():
        cases.append(("crlm_dicom_1006", crlm, None))
    return cases


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    den = int(a.sum()) + int(b.sum())
    return 1.0 if den == 0 else 2.0 * int((a & b).sum()) / den


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--case", action="append", help="CT[:label] (NIfTI file or DICOM folder); repeatable")
    p.add_argument("--variants", default=",".join(VARIANTS), help="first is the reference (default torch)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "agreement_cpu.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from resunet_trt import Segmenter
    from resunet_trt.cli.bench import parse_variant
    from resunet_trt.config import machine_info, versions
    from resunet_trt.io import atomic_write_bytes, load_ct, load_label

    if args.case:
        cases = []
        for item in args.case:
            ct, _, label = item.partition(":")
            cases.append((Path(ct).name, Path(ct), Path(label) if label else None))
    else:
        cases = _default_cases()
    variants = [parse_variant(v) for v in args.variants.split(",")]
    segs = {
        v.label: Segmenter(
            model=v.model, device="cpu", backend=v.backend, precision=v.precision, num_threads=args.threads
        )
        for v in variants
    }
    ref_name = variants[0].label
    report: dict[str, dict] = {}
    ok = True
    for name, ct_path, label_path in cases:
        volume = load_ct(ct_path)
        gt = load_label(label_path, like=volume) if label_path else None
        body = volume.hu > -500
        out: dict[str, dict] = {}
        labels_of = {}
        for label, seg in segs.items():
            t0 = time.perf_counter()
            labels_of[label] = seg.segment(volume).labels
            out[label] = {"backend": seg.backend.name, "precision": seg.backend.precision,
                          "seconds": time.perf_counter() - t0}
        ref = labels_of[ref_name]
        for label, r in out.items():
            r["agreement_body"] = float((labels_of[label] == ref)[body].mean())
            r["pass_agreement"] = r["agreement_body"] >= LIMITS["agreement"]
            ok &= r["pass_agreement"]
            if gt is not None:
                for cls, mask in (("liver", lambda x: x >= 1), ("tumor", lambda x: x == 2)):
                    d = _dice(mask(labels_of[label]), mask(gt))
                    d_ref = _dice(mask(ref), mask(gt))
                    r[f"dice_{cls}"] = d
                    r[f"delta_dice_{cls}"] = d - d_ref
                    r[f"pass_{cls}"] = abs(d - d_ref) <= LIMITS[cls]
                    ok &= r[f"pass_{cls}"]
        report[name] = {"source": os.path.relpath(ct_path, ROOT), "shape": list(volume.hu.shape), "variants": out}
        print(f"{name} {tuple(volume.hu.shape)}")
        for label, r in out.items():
            dice = (
                f"  liver {r['dice_liver']:.4f} ({r['delta_dice_liver']:+.4f})"
                f"  tumor {r['dice_tumor']:.4f} ({r['delta_dice_tumor']:+.4f})"
                if "dice_liver" in r
                else ""
            )
            print(f"  {label:<15}{r['backend']:<12}{r['precision']:<6}agree {100 * r['agreement_body']:.2f} %{dice}")
    for seg in segs.values():
        seg.close()
    record = {
        "benchmark": "agreement_cpu",
        "reference": ref_name,
        "limits": LIMITS,
        "all_pass": bool(ok),
        "cases": report,
        "machine": machine_info(),
        "versions": versions(),
        "command": "python benchmarks/agreement_cpu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    out_path = atomic_write_bytes(Path(args.out), (json.dumps(record, indent=2) + "\n").encode())
    print(f"all pass: {ok}; wrote {out_path}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
