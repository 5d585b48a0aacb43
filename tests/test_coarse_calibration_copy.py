"""scripts/coarse_calibration_copy.py: block means of the axial plane and an affine that keeps every voxel in place."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "coarse_calibration_copy.py"


@pytest.fixture(scope="module")
def coarse_copy():
    spec = importlib.util.spec_from_file_location("coarse_calibration_copy", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.coarse_copy


def _oblique_affine():
    # Rotated, anisotropic, with an offset: the check must not rely on a diagonal affine.
    angle = np.deg2rad(20)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.7, 0.8, 2.5])
    affine[:3, 3] = [-120.0, 35.5, -400.0]
    return affine


@pytest.mark.parametrize("factor", [1, 2, 3])
def test_block_means_and_world_positions(tmp_path, coarse_copy, factor):
    rng = np.random.default_rng(factor)
    data = rng.integers(-1000, 1500, size=(13, 11, 4)).astype(np.int16)
    affine = _oblique_affine()
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "ct.nii.gz"))
    shape = coarse_copy(tmp_path / "ct.nii.gz", factor, tmp_path / "coarse.nii.gz")
    out = nib.load(str(tmp_path / "coarse.nii.gz"))
    coarse = np.asarray(out.dataobj)
    assert shape == coarse.shape == (13 // factor, 11 // factor, 4)
    for i in range(coarse.shape[0]):
        for j in range(coarse.shape[1]):
            block = data[i * factor : (i + 1) * factor, j * factor : (j + 1) * factor, 2].astype(np.float64)
            assert coarse[i, j, 2] == np.round(block.mean())
            # The coarse voxel's centre is the mean of its block's voxel centres, in world coordinates.
            ii, jj = np.meshgrid(np.arange(i * factor, (i + 1) * factor), np.arange(j * factor, (j + 1) * factor))
            centres = [affine @ [a, b, 2, 1] for a, b in zip(ii.ravel(), jj.ravel())]
            np.testing.assert_allclose(out.affine @ [i, j, 2, 1], np.mean(centres, axis=0), atol=1e-9)
    np.testing.assert_allclose(nib.affines.voxel_sizes(out.affine), [0.7 * factor, 0.8 * factor, 2.5])


def test_bad_factor_and_shape(tmp_path, coarse_copy):
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.int16), np.eye(4)), str(tmp_path / "ct.nii.gz"))
    with pytest.raises(ValueError, match="factor"):
        coarse_copy(tmp_path / "ct.nii.gz", 0, tmp_path / "x.nii.gz")
    with pytest.raises(ValueError, match="smaller than the factor"):
        coarse_copy(tmp_path / "ct.nii.gz", 5, tmp_path / "x.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((4, 4), np.int16), np.eye(4)), str(tmp_path / "flat.nii.gz"))
    with pytest.raises(ValueError, match="3-D"):
        coarse_copy(tmp_path / "flat.nii.gz", 2, tmp_path / "x.nii.gz")
