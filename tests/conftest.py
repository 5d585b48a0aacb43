"""Shared fixtures: real CT cases, the GPU marker's skip logic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parent / "data"


def _cuda_available() -> tuple[bool, str]:
    try:
        from resunet_trt import _core
    except ImportError as exc:
        return False, f"compiled core not importable: {exc}"
    if not _core.built_with_cuda:
        return False, "resunet_trt was built without CUDA"
    if _core.cuda_device_count() == 0:
        return False, "no CUDA device on this machine"
    try:
        import cupy  # noqa: F401
    except ImportError:
        return False, "cupy is not installed"
    return True, ""


def pytest_collection_modifyitems(config, items):
    ok, reason = _cuda_available()
    if ok:
        return
    skip = pytest.mark.skip(reason=f"gpu test skipped: {reason}")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


def _load_case(name: str, label_file: str = "label.nii.gz"):
    """(hu int16 (D, H, W), labels uint8 (D, H, W)) straight from nibabel, x/y/z reversed to D/H/W.

    These arrays skip ``resunet_trt.io``: they are the files' voxels with the axes reversed, not the canonical
    orientation (H and W are flipped relative to it). Kernel tests only need real intensities and shapes; tests of
    geometry load through ``resunet_trt.io`` instead.
    """
    import nibabel as nib

    ct = np.asanyarray(nib.load(DATA / name / "ct.nii.gz").dataobj)
    lab = np.asanyarray(nib.load(DATA / name / label_file).dataobj)
    hu = np.ascontiguousarray(np.clip(ct, -32768, 32767).astype(np.int16).transpose(2, 1, 0))
    labels = np.ascontiguousarray(np.rint(lab).astype(np.uint8).transpose(2, 1, 0))
    return hu, labels


@pytest.fixture(scope="session")
def lits117():
    """LiTS case 117 ROI: (hu int16 (128, 128, 128), labels uint8 0/1/2)."""
    return _load_case("lits117_roi128")


@pytest.fixture(scope="session")
def lits_small():
    """Downsampled LiTS case: (hu int16 (33, 64, 64), labels uint8 0/1/2)."""
    return _load_case("lits_small64")


@pytest.fixture(scope="session")
def totalseg():
    """TotalSegmentator abdomen at 3 mm: (hu int16 (D, H, W), liver mask uint8 0/1)."""
    return _load_case("totalseg_abdomen3mm", "liver_pseudolabel.nii.gz")


from model_fixtures import *  # noqa: E402,F401,F403  (fixtures shared by several test files)
