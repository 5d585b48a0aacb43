"""``resunet-cohort``: segment a cohort on Ray (one machine or a cluster), every case in one run manifest.

Examples::

    resunet-cohort cases.csv -o out/ --local                  # this machine, no cluster needed
    resunet-cohort 'data/*.nii.gz' dicom_root/ -o out/        # RAY_ADDRESS, else a local Ray instance
    resunet-cohort cases.csv -o /shared/out --address auto    # the cluster of `ray start --head`

Inputs are what ``resunet-seg`` takes (NIfTI files, DICOM series folders, folders of NIfTI, globs) and CSV
case lists (a ``path`` column, else the first; relative paths are relative to the CSV). Outputs are those of
``resunet-seg`` plus ``cohort_manifest.csv`` and ``cohort_manifest.parquet``, one row per case. Rerunning into
the same output folder skips the cases already done with the same input and model (``--no-resume`` redoes them).
Exit code: 0 all ok, 1 a case failed, 2 bad arguments or no input, 130 interrupted (rerun to resume).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from .options import (
    add_backend_option,
    add_output_options,
    add_progress_options,
    run_main,
    runnable_output,
)
from .seg import expand_inputs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resunet-cohort",
        description="Segment many CT series on Ray; a manifest records every case; interrupted runs resume.",
    )
    parser.add_argument("inputs", nargs="+", help="CSV case lists, NIfTI files, DICOM folders, globs")
    parser.add_argument("-o", "--out", "--output", dest="out", required=True, help="output folder")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--address", default=None, help="Ray cluster to join ('auto': the one `ray start` began on this node)"
    )
    where.add_argument("--local", action="store_true", help="start a Ray instance on this machine only")
    parser.add_argument("--num-cpus", type=int, default=None, help="with --local: CPUs Ray may use")
    parser.add_argument(
        "--workers", type=int, default=None, help="workers (default: one per GPU, else by --cpus-per-worker)"
    )
    parser.add_argument("--cpus-per-worker", type=float, default=None, help="CPUs each worker reserves")
    parser.add_argument("--queue-depth", type=int, default=2, help="cases held per worker (default: 2)")
    parser.add_argument("--model", default=None, help="model file (.pt, .onnx, .plan); default: the bundled model")
    parser.add_argument("--device", default="auto",
                        help="auto (GPUs when the cluster has them), cpu or cuda (default: %(default)s)")
    add_backend_option(parser)
    parser.add_argument(
        "--batch-size", type=int, default=None, help="slices per network batch (default: the Segmenter's, 16)"
    )
    parser.add_argument(
        "--min-lesion-mm3",
        type=float,
        default=None,
        help="tumor components smaller than this become liver (default: the Segmenter's, 65 mm3)",
    )
    add_output_options(
        parser, format_help="mask format (as resunet-seg; default auto: a DICOM-SEG too for DICOM input)"
    )
    parser.add_argument("--no-resume", action="store_true", help="redo cases an earlier run already did")
    add_progress_options(parser)
    return parser


def collect_cases(specs: Sequence[str]) -> tuple[list[Path], list[str]]:
    """CSV case lists and what ``resunet-seg`` accepts -> (cases without duplicates, specs matching nothing).

    Raises:
        FileNotFoundError/ValueError: a CSV case list that cannot be used.
    """
    from ..cohort import read_case_list

    listed: list[str] = []
    for spec in specs:
        if spec.lower().endswith(".csv") and Path(spec).is_file():
            listed.extend(str(p) for p in read_case_list(spec))
        else:
            listed.append(spec)
    # expand_inputs turns listed folders of NIfTI into their files and drops repeated inputs.
    return expand_inputs(listed)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 all ok, 1 a case failed, 2 bad usage, 130 Ctrl-C)."""
    return run_main(build_parser, _run, argv, "resunet-cohort: interrupted; rerun the same command to resume")


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    # The cohort's own lines (workers, skipped cases, progress without tqdm) are worth seeing on a long run.
    logging.getLogger("resunet_trt.cohort").setLevel(logging.INFO)
    for flag, value, low in (
        ("--batch-size", args.batch_size, 1),
        ("--min-lesion-mm3", args.min_lesion_mm3, 0),
        ("--queue-depth", args.queue_depth, 1),
        ("--workers", args.workers, 1),
        ("--num-cpus", args.num_cpus, 1),
    ):
        if value is not None and value < low:
            parser.error(f"{flag} must be >= {low}, got {value}")
    if args.num_cpus is not None and not args.local:
        parser.error("--num-cpus is for --local (a cluster's nodes say their own CPUs)")
    try:
        cases, missing = collect_cases(args.inputs)
    except (OSError, ValueError) as exc:
        print(f"resunet-cohort: {exc}", file=sys.stderr)
        return 2
    out = runnable_output("resunet-cohort", cases, missing, args.out)
    if out is None:
        return 2

    try:
        import ray
    except ImportError:
        print("resunet-cohort: needs Ray: pip install 'resunet-trt[cohort]'", file=sys.stderr)
        return 2
    from ..cohort import run_cohort

    started = not ray.is_initialized()  # a caller that embeds main() may have connected already
    if started and args.local:
        ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False)
    elif started:
        ray.init(address=args.address, include_dashboard=False)
    try:
        summary = run_cohort(
            cases,
            out,
            model=args.model,
            device=args.device,
            backend=args.backend,
            segmenter_options={
                k: v
                for k, v in (("batch_size", args.batch_size), ("min_lesion_mm3", args.min_lesion_mm3))
                if v is not None
            },
            overlay=args.overlay,
            report=args.report,
            mask_format=args.mask_format,
            num_workers=args.workers,
            cpus_per_worker=args.cpus_per_worker,
            queue_depth=args.queue_depth,
            resume=not args.no_resume,
            progress=not args.no_progress,
        )
    except (ValueError, TypeError, RuntimeError, OSError, ImportError) as exc:
        print(f"resunet-cohort: {exc}", file=sys.stderr)
        return 2
    finally:
        if started:
            ray.shutdown()
    for row in summary.rows:
        if row["status"] != "ok":
            print(f"FAILED {row['input']}: {row['error']}")
    print(
        f"{summary.done} segmented, {summary.failed} failed, {summary.skipped} already done; "
        f"{summary.cases_per_minute:.1f} cases/min over {summary.seconds:.1f} s; "
        f"{summary.workers_replaced} workers replaced; manifest in {out}"
    )
    return 1 if missing or summary.failed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
