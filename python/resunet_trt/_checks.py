"""Argument checks shared by several modules, so that one bad value gets one message everywhere."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any


def checked_spacing(spacing: Any, name: str = "spacing") -> tuple[float, float, float]:
    """Voxel spacing as three positive finite floats (dz, dy, dx) in mm.

    Raises:
        TypeError: ``spacing`` is not a sequence of numbers.
        ValueError: not three values, or one of them is not positive and finite.
    """
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be three numbers (dz, dy, dx) in mm, got {spacing!r}") from exc
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"{name} must be three positive finite numbers (dz, dy, dx) in mm, got {spacing!r}")
    return values[0], values[1], values[2]


def reject_unknown_keys(d: Any, known: Any, what: str) -> None:
    """Raise ValueError when the mapping ``d`` has keys outside ``known`` (a config from another version, a typo).

    Raises:
        TypeError: ``d`` is not a dict.
        ValueError: naming ``what``, the unknown keys and the known ones.
    """
    if not isinstance(d, dict):
        raise TypeError(f"{what} expects a dict, got {type(d).__name__}")
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ValueError(f"{what}: unknown keys {unknown}; known keys are {sorted(known)}")


def checked_path(path_or_dir: Any, name: str) -> Path:
    """``path_or_dir`` as a Path that exists; TypeError naming ``name`` for a non-path, FileNotFoundError naming
    the path when it is missing."""
    if not isinstance(path_or_dir, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or os.PathLike, got {type(path_or_dir).__name__}")
    path = Path(path_or_dir)
    if not path.exists():
        # Named by what was typed: the parameter's name means nothing to someone at a command line.
        raise FileNotFoundError(f"{path}: no such file or folder")
    return path
