"""What the segmenting command lines share: their common options, their logging and their Ctrl-C exit."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ..backends.base import BACKEND_NAMES
from ..outputs import MASK_FORMATS

__all__ = [
    "add_backend_option",
    "add_output_options",
    "add_progress_options",
    "output_folder_problem",
    "run_main",
    "runnable_output",
    "setup_logging",
]


def add_backend_option(parser: argparse.ArgumentParser) -> None:
    """``--backend``: one of the backends :func:`resunet_trt.backends.open_backend` knows, or auto."""
    parser.add_argument(
        "--backend", default="auto", choices=("auto", *BACKEND_NAMES), help="inference backend (default: auto)"
    )


def add_output_options(parser: argparse.ArgumentParser, *, format_help: str) -> None:
    """``--overlay``, ``--format`` and ``--report``: which files a case gets besides its mask."""
    parser.add_argument("--overlay", action="store_true", help="also write <case>_overlay.png")
    parser.add_argument("--format", dest="mask_format", default="auto", choices=MASK_FORMATS, help=format_help)
    parser.add_argument(
        "--report", action=argparse.BooleanOptionalAction, default=True,
        help="write <case>_report.json (default: %(default)s)",
    )


def add_progress_options(parser: argparse.ArgumentParser) -> None:
    """``--no-progress`` and ``-v``/``--verbose``."""
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")


def setup_logging(verbose: bool) -> None:
    """Warnings and errors on stderr; with ``verbose``, the info lines too."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


def run_main(
    build_parser: Callable[[], argparse.ArgumentParser],
    run: Callable[[argparse.ArgumentParser, argparse.Namespace], int],
    argv: Sequence[str] | None,
    interrupted: str,
) -> int:
    """Parse ``argv``, set up logging (``-v``), then ``run(parser, args)``; returns its exit code.

    Ctrl-C prints ``interrupted`` instead of a traceback and exits with 130.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        return run(parser, args)
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130


def output_folder_problem(out: Path) -> str | None:
    """Create the output folder; None when it is usable, else why not (one line, naming the folder as typed)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        return f"output folder {out} is an existing file"
    except NotADirectoryError:
        return f"output folder {out}: a part of the path is a file, not a folder"
    except OSError as exc:
        return f"cannot create the output folder {out}: {exc.strerror or exc}"
    if not os.access(out, os.W_OK | os.X_OK):  # also false on a read-only mount, for root too
        return f"output folder {out} is not writable"
    return None


def runnable_output(prog: str, cases: Sequence[Path], missing: Sequence[str], out: str) -> Path | None:
    """The output folder, created, when there is something to segment into it; else None after saying why.

    Input specs that matched no file are reported on stderr (the run goes on without them); no input at all, or
    an output folder that cannot be created or written, stops the run before any work (exit code 2).
    """
    for spec in missing:
        print(f"{prog}: {spec}: no file matches", file=sys.stderr)
    if not cases:
        print(f"{prog}: no input to segment", file=sys.stderr)
        return None
    folder = Path(out)
    problem = output_folder_problem(folder)
    if problem is not None:
        print(f"{prog}: {problem}", file=sys.stderr)
        return None
    return folder
