"""What the segmenting command lines share: their common options, their logging and their Ctrl-C exit."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from ..backends.base import BACKEND_NAMES
from ..outputs import MASK_FORMATS

__all__ = ["add_backend_option", "add_output_options", "add_progress_options", "run_main", "setup_logging"]


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


def run_main(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None, interrupted: str) -> int:
    """``main(argv)``; Ctrl-C prints ``interrupted`` instead of a traceback and exits with 130."""
    try:
        return main(argv)
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
