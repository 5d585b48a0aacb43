"""A small real CT case shipped with the package, so the main job runs with no download.

See README.md in this folder for its source, licence and the one header correction made.
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).parent


def sample_ct_path() -> Path:
    """Path of the bundled CT (NIfTI, 64×64×33, LiTS-derived, with tumors)."""
    return _HERE / "lits_small64_ct.nii.gz"


def sample_label_path() -> Path:
    """Path of the bundled expert label of :func:`sample_ct_path` (0 background, 1 liver, 2 tumor)."""
    return _HERE / "lits_small64_label.nii.gz"
