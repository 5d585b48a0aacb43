"""``resunet-eval``: score predicted masks against reference labels, LiTS style.

Examples::

    resunet-eval --pred out/ --gt labels/ -o eval/          # masks already written (e.g. by resunet-seg)
    resunet-eval --model model.onnx --data LiTS/ -o eval/    # segment every CT of a labelled folder, then score
    resunet-eval --data tests/data -o eval/ --device cpu     # the bundled default model

Scores per case and class (liver = labels >= 1, tumor = labels == 2): Dice, IoU, precision, recall, VOE, RVD,
ASSD, MSD, HD95 (mm) as in :mod:`resunet_trt.metrics`, and lesion detection (precision, recall, F1 by size
bucket, tumor-burden error) as in :mod:`resunet_trt.lesions`. Aggregates: Dice per case (mean) and Dice global
(pooled voxels) per class, summaries of every score, pooled lesion detection.

**How files become cases**: by the rules of :mod:`resunet_trt.datasets` (:func:`~resunet_trt.datasets.discover`).
``--pred``/``--gt`` use the label and unclassified files of each folder; ``--data`` pairs each case's image (an
image file, else the unclassified one) with its label. Files that match nothing on the other side are listed
and skipped (with ``--strict`` a reference case without prediction is a failure).

**Geometry.** Each label file is read with :func:`resunet_trt.io.load_label` in the canonical orientation
(D inferior -> superior, so "axial" means what it should for the lesion diameters), the prediction checked
against the reference's grid; the spacing (dz, dy, dx) comes from the reference file's header.

**Outputs** (``-o DIR``, written atomically): ``metrics_per_case.csv`` (one row per case), ``metrics_aggregate.csv``
(one row per class and score), ``metrics.json`` (everything: arguments, per-case scores and lesion lists,
aggregates, failures, versions). In the JSON, an undefined score (NaN) is ``null`` and an infinite one the
string ``"inf"``. Exit code: 0 when every matched case was scored, 1 when a case failed, 2 when nothing
matched or the arguments are wrong.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from .._progress import progress as progress_bar
# case_key, discover and file_kind stay importable from here, as before they moved to resunet_trt.datasets.
from ..datasets import case_key, data_cases, discover, file_kind, label_files, natural_key  # noqa: F401
from ..evaluation import (  # json_safe and write_json_atomic stay importable from here
    CaseOutcome,
    json_safe,  # noqa: F401
    load_pair,
    render_table,
    score_case,
    summarise,
    write_json_atomic,  # noqa: F401
    write_outputs,
)

logger = logging.getLogger("resunet_trt.eval")


# ----------------------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resunet-eval",
        description="Score liver/tumor masks against reference labels (LiTS metrics, lesion detection).",
        epilog="Case matching rules and output files: see the module documentation (python -m pydoc "
        "resunet_trt.cli.eval).",
    )
    parser.add_argument("--pred", help="folder of predicted masks (e.g. resunet-seg output)")
    parser.add_argument("--gt", help="folder of reference label files")
    parser.add_argument("--data", help="labelled data folder: segment each CT with --model, then score")
    parser.add_argument(
        "--model", help="model file (.pt, .onnx, .plan) for --data; default: the bundled model"
    )
    parser.add_argument(
        "--device", default="auto", help="auto, cpu, cuda or cuda:N (for --data; default auto)"
    )
    parser.add_argument("--backend", default="auto",
                        help="auto, tensorrt, onnxruntime or torch (for --data; default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="slices per inference batch (for --data; default: %(default)s)")
    parser.add_argument(
        "--save-masks", action="store_true", help="with --data: write <case>_mask.nii.gz into -o"
    )
    parser.add_argument("-o", "--out", "--output", dest="out", help="folder for the CSV and JSON files")
    parser.add_argument(
        "--criterion",
        choices=("iou", "overlap"),
        default="iou",
        help="lesion detection rule: iou, IoU > 0.5 (LiTS), or overlap, any overlap (default: %(default)s)",
    )
    parser.add_argument(
        "--connectivity", type=int, choices=(6, 18, 26), default=26,
        help="lesion connectivity (default: %(default)s)",
    )
    parser.add_argument("--no-surface", action="store_true", help="skip surface distances (ASSD, MSD, HD95)")
    parser.add_argument(
        "--strict", action="store_true", help="a reference case without prediction is a failure"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("-q", "--quiet", action="store_true", help="no table on screen")
    return parser


def _pairs_from_folders(args: argparse.Namespace) -> tuple[list[tuple[str, Path | None, Path]], list[str]]:
    preds, notes = label_files(args.pred)
    gts, gt_notes = label_files(args.gt)
    notes += gt_notes
    pairs: list[tuple[str, Path | None, Path]] = []
    for key in sorted(gts, key=natural_key):
        if key in preds:
            pairs.append((key, preds[key], gts[key]))
        elif args.strict:
            pairs.append((key, None, gts[key]))
        else:
            notes.append(f"case {key!r}: reference {gts[key]} has no prediction; skipped")
    for key in sorted(set(preds) - set(gts), key=natural_key):
        notes.append(f"case {key!r}: prediction {preds[key]} has no reference; skipped")
    return pairs, notes


def _scores(args: argparse.Namespace, pred: Any, gt: Any, spacing: Any) -> dict[str, Any]:
    """:func:`resunet_trt.evaluation.score_case` with the command line's scoring options."""
    return score_case(
        pred, gt, spacing, criterion=args.criterion, surface=not args.no_surface, connectivity=args.connectivity
    )


def _run_case(outcome: CaseOutcome, work: Callable[[], dict[str, Any]]) -> CaseOutcome:
    """Fill ``outcome`` with what ``work()`` scores, or with the error it raised, and the seconds it took."""
    t0 = time.perf_counter()
    try:
        outcome.scores = work()
        outcome.ok = True
    except Exception as exc:  # noqa: BLE001 - one bad case is reported, the others go on
        outcome.error = f"{type(exc).__name__}: {exc}"
        logger.error("case %s: %s", outcome.case, outcome.error)
    outcome.seconds = time.perf_counter() - t0
    return outcome


def _evaluate_folders(
    args: argparse.Namespace, pairs: Sequence[tuple[str, Path | None, Path]]
) -> list[CaseOutcome]:
    def score(pred_path: Path | None, gt_path: Path) -> dict[str, Any]:
        if pred_path is None:
            raise FileNotFoundError(f"no prediction for reference {gt_path}")
        return _scores(args, *load_pair(pred_path, gt_path))

    return [
        _run_case(
            CaseOutcome(case=key, pred=str(pred_path) if pred_path else None, gt=str(gt_path)),
            partial(score, pred_path, gt_path),
        )
        for key, pred_path, gt_path in progress_bar(pairs, enabled=not args.no_progress, desc="eval", unit="case")
    ]


def _evaluate_model(args: argparse.Namespace, cases: Mapping[str, tuple[Path, Path]]) -> list[CaseOutcome]:
    from resunet_trt import Segmenter
    from resunet_trt.io import load_label, save_mask

    try:
        segmenter = Segmenter(
            model=args.model,
            device=args.device,
            backend=args.backend,
            batch_size=args.batch_size,
            connectivity=args.connectivity,
        )
    except (OSError, ValueError, TypeError, RuntimeError, ImportError) as exc:
        raise ModelError(f"cannot open the model {args.model or '(bundled default)'}: {exc}") from exc

    def segment_and_score(seg: Any, key: str, image: Path, label: Path, outcome: CaseOutcome) -> dict[str, Any]:
        result = seg.segment(image)
        gt = load_label(label, like=result.volume)
        if args.save_masks and args.out:
            mask_path = Path(args.out) / "masks" / f"{_safe_name(key)}_mask.nii.gz"
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            save_mask(mask_path, result.labels, like=result.volume)
            outcome.pred = str(mask_path)
        scores = _scores(args, result.labels, gt, tuple(float(s) for s in result.volume.spacing))
        scores["timings"] = dict(result.timings)
        return scores

    outcomes = []
    with segmenter as seg:
        keys = sorted(cases, key=natural_key)
        for key in progress_bar(keys, enabled=not args.no_progress, desc="segment+eval", unit="case"):
            image, label = cases[key]
            o = CaseOutcome(case=key, pred=None, gt=str(label), image=str(image))
            outcomes.append(_run_case(o, partial(segment_and_score, seg, key, image, label, o)))
    return outcomes


class ModelError(Exception):
    """The model could not be opened: reported with exit code 2."""


def _safe_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``resunet-eval``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    folders = args.pred is not None or args.gt is not None
    if folders and args.data is not None:
        parser.print_usage(sys.stderr)
        print(
            "resunet-eval: error: use either --pred/--gt or --data (with --model), not both", file=sys.stderr
        )
        return 2
    if folders and (args.pred is None or args.gt is None):
        parser.print_usage(sys.stderr)
        print("resunet-eval: error: --pred and --gt go together", file=sys.stderr)
        return 2
    if not folders and args.data is None:
        parser.print_usage(sys.stderr)
        print("resunet-eval: error: give --pred DIR --gt DIR, or --data DIR [--model M]", file=sys.stderr)
        return 2
    if args.save_masks and (args.data is None or args.out is None):
        print("resunet-eval: error: --save-masks needs --data and -o", file=sys.stderr)
        return 2
    if args.batch_size < 1:
        print(f"resunet-eval: error: --batch-size must be >= 1, got {args.batch_size}", file=sys.stderr)
        return 2

    try:
        if folders:
            pairs, notes = _pairs_from_folders(args)
            n_matched = len(pairs)
        else:
            cases, notes = data_cases(args.data)
            n_matched = len(cases)
    except ValueError as exc:
        print(f"resunet-eval: error: {exc}", file=sys.stderr)
        return 2
    for note in notes:
        logger.warning("%s", note)
    if n_matched == 0:
        where = f"--pred {args.pred} and --gt {args.gt}" if folders else f"--data {args.data}"
        print(
            f"resunet-eval: error: no case matched in {where} (see the case naming rules in --help)",
            file=sys.stderr,
        )
        return 2

    t0 = time.perf_counter()
    try:
        outcomes = _evaluate_folders(args, pairs) if folders else _evaluate_model(args, cases)
    except ModelError as exc:
        print(f"resunet-eval: error: {exc}", file=sys.stderr)
        return 2
    summary = summarise(outcomes)
    if not args.quiet:
        print(render_table(outcomes, summary))
    if args.out:
        meta = {
            "tool": "resunet-eval",
            "mode": "folders" if folders else "model",
            "arguments": {k: v for k, v in vars(args).items()},
            "notes": notes,
            "seconds": time.perf_counter() - t0,
        }
        paths = write_outputs(Path(args.out), outcomes, summary, meta)
        if not args.quiet:
            print("wrote " + ", ".join(str(p) for p in paths.values()))
    failed = [o.case for o in outcomes if not o.ok]
    if failed:
        print(
            f"resunet-eval: {len(failed)} of {len(outcomes)} case(s) failed: {', '.join(failed)}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
