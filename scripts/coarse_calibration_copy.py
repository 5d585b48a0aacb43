#!/usr/bin/env python
"""Write a coarse copy of a CT NIfTI for INT8 calibration: its first two voxel axes (the axial plane of an
axial series) averaged over FACTOR x FACTOR blocks, the affine scaled to match, int16 HU.

Coarse scans (5 mm pixels) are as much the model's input as fine ones, and quantization errors show most on their
smooth images; calibrating on coarse copies of the training CT covers them without touching a held-out case.

    python scripts/coarse_calibration_copy.py in/ct.nii.gz 4 out/ct.nii.gz
"""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np


def coarse_copy(src: Path, factor: int, dst: Path) -> tuple[int, ...]:
    """Block-average the first two axes of ``src`` by ``factor`` into ``dst``; returns the new shape."""
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    img = nib.load(str(src))
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim != 3:
        raise ValueError(f"{src}: expected a 3-D CT, got shape {data.shape}")
    nx, ny = (data.shape[0] // factor) * factor, (data.shape[1] // factor) * factor
    if nx == 0 or ny == 0:
        raise ValueError(f"{src}: plane {data.shape[:2]} is smaller than the factor {factor}")
    blocks = data[:nx, :ny].reshape(nx // factor, factor, ny // factor, factor, data.shape[2])
    coarse = np.round(blocks.mean(axis=(1, 3))).astype(np.int16)
    affine = img.affine.copy()
    # The new voxel (0, 0) is the centre of the old block 0..factor-1 along each of the two axes.
    affine[:3, 3] += (factor - 1) / 2.0 * (img.affine[:3, 0] + img.affine[:3, 1])
    affine[:3, 0] *= factor
    affine[:3, 1] *= factor
    dst.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(coarse, affine), str(dst))
    return coarse.shape


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    shape = coarse_copy(Path(argv[0]), int(argv[1]), Path(argv[2]))
    print(f"{argv[2]}: {shape}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
