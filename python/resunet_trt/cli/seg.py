"""``resunet-seg``: segment CT files and folders, write masks, lesion reports and overlays.

Examples::

    resunet-seg case.nii.gz -o out/
    resunet-seg 'data/*.nii.gz' dicom_series_dir/ -o out/ --overlay --device cpu
    resunet-seg data/ -o out/ --model model.int8.onnx --batch-size 32

A folder holding NIfTI files is expanded to those files; any other folder is read as one DICOM series. For each
case ``<case>_mask.nii.gz`` (uint8 in the input's geometry), ``<case>_report.json`` and, with ``--overlay``,
``<case>_overlay.png`` are written into the output folder; for a DICOM series also ``<case>_seg.dcm``, a DICOM
Segmentation (liver, liver tumor) of the source series that files under its study (``--format`` chooses:
``auto`` writes both masks for DICOM input and the NIfTI otherwise). A case that fails is reported and skipped; the exit
code is 1 when any case failed, 2 for bad arguments, an unusable output folder or when no input was found, and
130 when interrupted (Ctrl-C; no partial file is left).
"""

from __future__ import annotations

import argparse
import glob
import math
import os
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

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def expand_inputs(specs: Sequence[str]) -> tuple[list[Path], list[str]]:
    """Turn files, folders and glob patterns into the list of cases.

    A folder with NIfTI files gives its NIfTI files (sorted); a folder without gives itself (a DICOM series).
    A glob gives its matches, expanded the same way. A name that matches nothing is returned as missing.

    Returns:
        (cases in the order given, without duplicates; specs that matched nothing).
    """
    cases: list[Path] = []
    missing: list[str] = []
    seen: set[str] = set()

    def add(p: Path) -> None:
        key = os.path.abspath(p)
        if key not in seen:
            seen.add(key)
            cases.append(p)

    for spec in specs:
        if glob.has_magic(spec):
            matches = sorted(glob.glob(spec, recursive=True))
            if not matches:
                missing.append(spec)
            paths = [Path(m) for m in matches]
        else:
            paths = [Path(spec)]
        for p in paths:
            if p.is_dir():
                niftis = sorted(c for c in p.iterdir() if c.is_file() and _is_nifti(c))
                for c in niftis or [p]:
                    add(c)
            else:
                # A missing file stays a case, so that it is reported as failed beside the others.
                add(p)
    return cases, missing


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resunet-seg",
        description="Liver and liver-tumor segmentation of CT volumes (NIfTI files, DICOM series folders).",
    )
    parser.add_argument("inputs", nargs="+", help="NIfTI files, DICOM series folders, folders of NIfTI, globs")
    parser.add_argument("-o", "--out", "--output", dest="out", required=True, help="output folder")
    parser.add_argument("--model", default=None, help="model file (.pt, .onnx, .plan); default: the bundled model")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    add_backend_option(parser)
    parser.add_argument(
        "--precision",
        default=None,
        choices=("fp32", "bf16", "int8"),
        help="network precision (default: the model file's, or the fastest for the bundled model)",
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU inference threads (default: one per core)")
    parser.add_argument("--batch-size", type=int, default=16, help="slices per network batch (default: 16)")
    parser.add_argument("--min-lesion-mm3", type=float, default=65.0,
                        help="tumor components smaller than this volume become liver, whatever the voxel size "
                        "(default: %(default)s mm³, a 5 mm sphere)")
    parser.add_argument("--min-lesion-voxels", type=int, default=None,
                        help="the floor in voxels instead of --min-lesion-mm3 (overrides it)")
    parser.add_argument("--min-lesion-confidence", type=float, default=0.95,
                        help="a lesion is kept only where the network's tumor probability reaches this somewhere in "
                        "it, else it becomes liver; 0 keeps every lesion (default: %(default)s)")
    add_output_options(
        parser,
        format_help="mask format: <case>_mask.nii.gz (nifti), <case>_seg.dcm (dicom-seg, DICOM input only), both; "
        "auto (default): both for DICOM input, nifti otherwise",
    )
    parser.add_argument(
        "--series-uid",
        default=None,
        metavar="UID",
        help="SeriesInstanceUID to read from DICOM folders that hold several series (the error lists them)",
    )
    add_progress_options(parser)
    return parser


def _summary(outcomes: list, out: Path) -> str:
    """A plain-text table: one line per case."""
    rows = [("case", "status", "liver mL", "tumor mL", "lesions", "seconds", "detail")]
    for o in outcomes:
        if o.ok and o.summary is not None:
            r, t = o.summary, o.summary["timings_s"]
            rows.append(
                (
                    str(o.path),
                    "ok",
                    f"{r['liver_volume_ml']:.1f}",
                    f"{r['tumor_volume_ml']:.1f}",
                    str(r["lesion_count"]),
                    f"{t.get('total', 0.0) + t.get('write', 0.0):.2f}",
                    ", ".join(o.outputs[k].name for k in ("mask", "dicom_seg") if k in o.outputs),
                )
            )
        else:
            rows.append((str(o.path), "FAILED", "-", "-", "-", "-", (o.error or "").replace("\n", " ")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
    failed = sum(not o.ok for o in outcomes)
    lines.append(f"{len(outcomes) - failed} of {len(outcomes)} cases segmented, {failed} failed; outputs in {out}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 all ok, 1 a case failed, 2 bad usage, 130 Ctrl-C)."""
    # Every output is written atomically and a case's outputs are removed when it is cut short, so what
    # remains in the output folder is whole after Ctrl-C; only the traceback is worth sparing.
    return run_main(build_parser, _run, argv, "resunet-seg: interrupted")


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.min_lesion_voxels is not None and args.min_lesion_voxels < 0:
        parser.error(f"--min-lesion-voxels must be >= 0, got {args.min_lesion_voxels}")
    if not 0.0 <= args.min_lesion_confidence < 1.0:
        parser.error(f"--min-lesion-confidence must be in [0, 1), got {args.min_lesion_confidence}")
    if not (math.isfinite(args.min_lesion_mm3) and args.min_lesion_mm3 >= 0):
        parser.error(f"--min-lesion-mm3 must be a finite number >= 0, got {args.min_lesion_mm3}")
    cases, missing = expand_inputs(args.inputs)
    out = runnable_output("resunet-seg", cases, missing, args.out)
    if out is None:
        return 2

    from ..segmenter import Segmenter

    try:
        segmenter = Segmenter(
            model=args.model,
            device=args.device,
            backend=args.backend,
            batch_size=args.batch_size,
            min_lesion_mm3=args.min_lesion_mm3,
            min_lesion_voxels=args.min_lesion_voxels,
            min_lesion_confidence=args.min_lesion_confidence,
            progress=not args.no_progress,
            num_threads=args.threads,
            precision=args.precision,
        )
    except (ValueError, TypeError, RuntimeError, OSError, ImportError) as exc:
        print(f"resunet-seg: {exc}", file=sys.stderr)
        return 2
    with segmenter:
        outcomes = segmenter.segment_files(
            cases,
            out,
            overlay=args.overlay,
            report=args.report,
            keep_results=False,
            series_uid=args.series_uid,
            mask_format=args.mask_format,
        )
    print(_summary(outcomes, out))
    return 1 if missing or any(not o.ok for o in outcomes) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
