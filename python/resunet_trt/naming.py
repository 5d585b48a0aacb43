"""Names of a case and of its output files: distinct by construction, and short enough for any file system."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["OUTPUT_SUFFIXES", "case_name", "output_names"]


def case_name(path: str | os.PathLike[str]) -> str:
    """Name of a case from its file or folder: ``/x/liver_3.nii.gz`` -> ``liver_3``, ``/x/series/`` -> ``series``."""
    name = Path(path).name or Path(path).resolve().name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".gz"):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


#: What :meth:`Segmenter.segment_files` appends to a case name; the longest decides how long a name may be.
OUTPUT_SUFFIXES = ("_mask.nii.gz", "_seg.dcm", "_overlay.png", "_report.json")
_NAME_MAX_BYTES = 255  # file-name limit of ext4, XFS, APFS, NTFS (in bytes or UTF-16 units)


def output_names(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Output case names for ``paths``, distinct by construction (also on case-insensitive file systems).

    Each input keeps :func:`case_name` when it is free; a repeated name gets ``_2``, ``_3``... but never a name
    that another input has on its own (``a/case``, ``b/case``, ``c/case_2`` -> ``case``, ``case_3``,
    ``case_2``). Names are cut so that every output file name fits the file-system limit of 255 bytes.

    Args:
        paths: the inputs, in order.

    Returns:
        one name per input, in order.
    """
    limit = _NAME_MAX_BYTES - max(len(s) for s in OUTPUT_SUFFIXES)

    def fit(name: str, room: int) -> str:
        while name and len(os.fsencode(name)) > room:
            name = name[:-1]
        return name

    bases = [fit(case_name(p), limit) for p in paths]
    own = {b.casefold() for b in bases}
    taken: set[str] = set()
    names = []
    for base in bases:
        name, k = base, 1
        while name.casefold() in taken or (k > 1 and name.casefold() in own):
            k += 1
            name = fit(base, limit - len(f"_{k}")) + f"_{k}"
        taken.add(name.casefold())
        names.append(name)
    return names
