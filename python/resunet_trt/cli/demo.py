"""``resunet-demo``: the main job on the bundled sample CT, with no download.

Segments the bundled LiTS-derived case with the bundled default model, writes the mask, the lesion report and an
overlay, and prints liver and tumor Dice against the case's expert label, saying whether the model saw that case
in training.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from .. import samples


def _training_cases(metadata) -> list[str] | None:
    """Case names the model was trained on, when its metadata records them."""
    training = metadata.extra.get("training", {}) if isinstance(metadata.extra, dict) else {}
    for key in ("train_cases", "cases"):
        cases = training.get(key) if isinstance(training, dict) else None
        if isinstance(cases, list):
            return [str(c) for c in cases]
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resunet-demo",
        description="Segment the bundled sample CT and score it against its expert label.",
    )
    parser.add_argument(
        "-o", "--out", default="resunet-demo-out", help="output folder (default: %(default)s)"
    )
    parser.add_argument(
        "--model", default=None, help="model file (.pt, .onnx, .plan); default: the bundled model"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: %(default)s)")
    parser.add_argument(
        "--backend", default="auto", help="auto, openvino, onnxruntime, torch or tensorrt (default: %(default)s)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from ..io import load_label
    from ..metrics import evaluate_case
    from ..segmenter import Segmenter

    ct_path = samples.sample_ct_path()
    t0 = time.perf_counter()
    with Segmenter(model=args.model, device=args.device, backend=args.backend) as seg:
        outcome = seg.segment_files([ct_path], args.out, overlay=True, report=True)[0]
        metadata = seg.metadata
        backend, device, precision = seg.backend.name, seg.device, seg.backend.precision
    if not outcome.ok or outcome.result is None:
        print(f"resunet-demo: segmentation failed: {outcome.error}", file=sys.stderr)
        return 1
    result = outcome.result
    reference = load_label(samples.sample_label_path(), like=result.volume)
    scores = evaluate_case(result.labels, reference, result.volume.spacing, surface=False)
    elapsed = time.perf_counter() - t0

    print(
        f"sample   {ct_path.name}  {tuple(result.volume.hu.shape)} (D, H, W), spacing {result.volume.spacing} mm"
    )
    print(f"model    {precision} via {backend} on {device}")
    for kind, path in outcome.outputs.items():
        print(f"wrote    {kind:8s} {Path(path)}")
    print(
        f"liver    {result.liver_volume_ml:8.1f} mL   tumor {result.tumor_volume_ml:7.1f} mL   "
        f"burden {100 * result.tumor_burden:.1f}%   lesions {len(result.lesions)}"
    )
    print(
        f"Dice     liver {scores['liver']['dice']:.3f}   tumor {scores['tumor']['dice']:.3f}   (against the expert label)"
    )
    cases = _training_cases(metadata)
    if cases is None:
        print("training the model's metadata does not list its training cases")
    else:
        seen = any("lits_small64" in c for c in cases)
        print(
            f"training this case was {'USED' if seen else 'NOT used'} to train the model (held out: {not seen})"
        )
    print(f"time     {elapsed:.1f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
