"""resunet-demo end to end: the files it writes, the precision it says it ran in, the Dice it prints."""

from __future__ import annotations

import re

import numpy as np
import pytest
from resunet_trt import samples
from resunet_trt.cli.demo import main
from resunet_trt.io import load_ct, load_label


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


@pytest.mark.parametrize("backend", ["torch", "openvino"])
def test_demo_reports_what_it_ran_and_scores_its_own_mask(tmp_path, capsys, backend):
    if backend == "openvino":
        ov = pytest.importorskip("openvino", reason="openvino is not installed")
        from resunet_trt.backends.openvino import bf16_supported

        expected_precision = "bf16" if bf16_supported(ov.Core()) else "fp32"
    else:
        pytest.importorskip("torch")
        expected_precision = "fp32"
    out = tmp_path / "demo"
    assert main(["-o", str(out), "--device", "cpu", "--backend", backend]) == 0
    text = capsys.readouterr().out
    # The precision printed is the one the network ran in (OpenVINO runs the fp32 file in bf16 where it can).
    assert re.search(rf"^model\s+{expected_precision} via {backend} on cpu$", text, re.M), text
    ct = load_ct(samples.sample_ct_path())
    mask = load_label(out / "lits_small64_ct_mask.nii.gz", like=ct)
    ref = load_label(samples.sample_label_path(), like=ct)
    printed = re.search(r"^Dice\s+liver ([0-9.]+)\s+tumor ([0-9.]+)", text, re.M)
    assert printed, text
    # Liver Dice counts tumor as liver (the organ), tumor Dice the tumor class: recomputed from the written files.
    assert float(printed.group(1)) == pytest.approx(_dice(mask >= 1, ref >= 1), abs=5e-4)
    assert float(printed.group(2)) == pytest.approx(_dice(mask == 2, ref == 2), abs=5e-4)
    assert (out / "lits_small64_ct_report.json").is_file() and (out / "lits_small64_ct_overlay.png").is_file()
