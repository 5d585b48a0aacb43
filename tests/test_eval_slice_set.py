"""benchmarks/eval_slice_set.py: a patient fold of a slice set, scored per patient against numpy references."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
MODEL = REPO / "python" / "resunet_trt" / "models" / "default" / "resunet_default.pt"


@pytest.fixture(autouse=True)
def _keep_sys_path(monkeypatch):
    """The script may put the repository on sys.path; processes spawned by later tests must not inherit it."""
    monkeypatch.setattr(sys, "path", list(sys.path))


def _module():
    spec = importlib.util.spec_from_file_location("eval_slice_set", REPO / "benchmarks" / "eval_slice_set.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _numpy_dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_score_pools_each_patients_slices():
    mod = _module()
    rng = np.random.default_rng(0)
    ref = rng.random((6, 8, 8)) < 0.5
    pred = ref.copy()
    pred[0] = ~pred[0]  # patient 3's first slice wrong
    pred[4, :4] = False  # patient 7's second slice half missing
    patients = [3, 3, 5, 7, 7, 7]
    out = mod.score(pred, ref, patients)
    expected = {str(p): _numpy_dice(pred[np.array(patients) == p], ref[np.array(patients) == p]) for p in (3, 5, 7)}
    assert out["patients"] == 3 and out["slices"] == 6
    for k, v in expected.items():
        assert out["per_patient"][k] == pytest.approx(v, abs=1e-4)
    assert out["per_patient"]["5"] == 1.0
    assert out["mean_dice"] == pytest.approx(np.mean(list(expected.values())), abs=1e-4)
    assert out["min_dice"] == pytest.approx(min(expected.values()), abs=1e-4)
    assert out["patients_ge_0.95"] == sum(v >= 0.95 for v in expected.values())
    assert out["pooled_dice"] == pytest.approx(_numpy_dice(pred, ref), abs=1e-4)


def test_end_to_end_on_a_slice_set_of_real_ct(tmp_path):
    """Slices of lits117_roi128 stored as the MSD slice set stores them (8 bits, turned by prefix): the fold
    holds exactly its patients, and the bundled model (trained on lits117) finds their liver."""
    from PIL import Image
    from resunet_trt import io as rio

    vol = rio.load_ct(DATA / "lits117_roi128" / "ct.nii.gz")
    lab = rio.load_label(DATA / "lits117_roi128" / "label.nii.gz", vol)
    picks = {"flipped_10_0.png": 50, "mirrored_10_1.png": 64, "flipped_11_0.png": 70, "mirrored_15_0.png": 80}
    (tmp_path / "set" / "images").mkdir(parents=True)
    (tmp_path / "set" / "masks").mkdir()
    for name, z in picks.items():
        k = -1 if name.startswith("flipped") else 1  # the loader turns flipped by +1, mirrored by -1
        img = np.clip(vol.hu[z], 0, 255).astype(np.uint8)
        Image.fromarray(np.rot90(img, k)).save(tmp_path / "set" / "images" / name)
        Image.fromarray(np.rot90(np.where(lab[z] > 0, 255, 0).astype(np.uint8), k)).save(
            tmp_path / "set" / "masks" / name)
    mod = _module()
    hu, ref, patients, spacing = mod.slice_set_fold(tmp_path / "set", "0/5")
    assert patients == [10, 10, 15] and hu.shape == (3, 128, 128)
    np.testing.assert_array_equal(ref[2], lab[80] > 0)
    out = tmp_path / "r.json"
    assert mod.main(["--model", str(MODEL), "--data", str(tmp_path / "set"), "--fold", "0/5", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["patients"] == 2 and result["slices"] == 3 and set(result["per_patient"]) == {"10", "15"}
    assert result["info"]["fold"] == "0/5" and result["info"]["spacing_mm"] == list(spacing)
    assert result["mean_dice"] > 0.85, result  # trained on this liver: a wrong turn of the slices would fail here
    with pytest.raises(SystemExit):
        mod.main(["--model", str(MODEL), "--data", str(tmp_path / "set"), "--fold", "!0/5"])
