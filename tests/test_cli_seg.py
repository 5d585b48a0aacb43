"""``resunet-seg``: inputs expanded from files, folders and globs; bad cases skipped; outputs and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from resunet_trt.cli.seg import expand_inputs, main


@pytest.fixture(scope="module")
def ct_file(tmp_path_factory) -> Path:
    from test_segmenter import write_liver_crop

    return write_liver_crop(tmp_path_factory.mktemp("ct") / "ct.nii.gz")


@pytest.fixture()
def cases(tmp_path, ct_file) -> Path:
    """A folder with a copy of the small real case and a text file."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.nii.gz").write_bytes(ct_file.read_bytes())
    (folder / "notes.txt").write_text("not an input\n")
    return folder


def _args(model, *extra):
    return ["--model", str(model), "--backend", "onnxruntime", "--device", "cpu", "--no-progress", *extra]


def test_expand_inputs_files_folders_globs(tmp_path):
    nifti = tmp_path / "n"
    nifti.mkdir()
    for name in ("b.nii.gz", "a.nii", "notes.txt"):
        (nifti / name).write_bytes(b"x")
    dicom = tmp_path / "series"
    dicom.mkdir()
    (dicom / "1.dcm").write_bytes(b"x")
    single = tmp_path / "c.nii.gz"
    single.write_bytes(b"x")
    cases, missing = expand_inputs(
        [str(nifti), str(dicom), str(tmp_path / "*.nii.gz"), str(single), str(tmp_path / "nothing*.nii")]
    )
    # Folder of NIfTI -> its NIfTI files sorted; other folder -> one DICOM series; duplicates dropped.
    assert cases == [nifti / "a.nii", nifti / "b.nii.gz", dicom, single]
    assert missing == [str(tmp_path / "nothing*.nii")]


def test_expand_inputs_keeps_a_missing_file_as_a_case(tmp_path):
    cases, missing = expand_inputs([str(tmp_path / "gone.nii.gz")])
    assert cases == [tmp_path / "gone.nii.gz"] and missing == []


def test_all_good_cases_exit_zero_with_outputs(onnx_fp32, cases, tmp_path, capsys):
    out = tmp_path / "out"
    code = main([str(cases), "-o", str(out), "--overlay", *_args(onnx_fp32)])
    assert code == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["a_mask.nii.gz", "a_overlay.png", "a_report.json"]
    report = json.loads((out / "a_report.json").read_text())
    assert report["case"] == "a" and "lesions" in report and report["liver_volume_ml"] > 0
    printed = capsys.readouterr().out
    assert "1 of 1 cases segmented, 0 failed" in printed


def test_bad_file_is_reported_and_skipped(onnx_fp32, cases, tmp_path, capsys):
    bad = cases / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    out = tmp_path / "out"
    code = main([str(cases / "*.nii.gz"), "-o", str(out), *_args(onnx_fp32)])
    assert code == 1
    assert sorted(p.name for p in out.iterdir()) == ["a_mask.nii.gz", "a_report.json"]
    printed = capsys.readouterr().out
    assert "FAILED" in printed and str(bad) in printed
    assert "1 of 2 cases segmented, 1 failed" in printed


def test_no_report_writes_only_masks(onnx_fp32, tmp_path, ct_file):
    out = tmp_path / "out"
    assert main([str(ct_file), "-o", str(out), "--no-report", *_args(onnx_fp32)]) == 0
    assert [p.name for p in out.iterdir()] == ["ct_mask.nii.gz"]


def test_mask_written_by_the_cli_is_the_segmenters(onnx_fp32, tmp_path, ct_file):
    import nibabel as nib
    from resunet_trt.io import load_ct, load_label
    from resunet_trt.segmenter import Segmenter

    out = tmp_path / "out"
    assert main([str(ct_file), "-o", str(out), "--min-lesion-voxels", "4", *_args(onnx_fp32)]) == 0
    with Segmenter(model=onnx_fp32, device="cpu", backend="onnxruntime", min_lesion_voxels=4) as seg:
        expected = seg.segment(ct_file).labels
    assert np.count_nonzero(expected == 2) > 1_000
    written = load_label(out / "ct_mask.nii.gz", like=load_ct(ct_file))
    np.testing.assert_array_equal(written, expected)
    assert nib.load(out / "ct_mask.nii.gz").shape == nib.load(ct_file).shape


def test_lesion_floor_is_a_volume_by_default(onnx_fp32, tmp_path, ct_file):
    # Without flags the CLI keeps the Segmenter's physical floor (65 mm³), and --min-lesion-mm3 sets it: the
    # written masks equal the Segmenter's with the same floor, and a large floor removes lesions the default keeps.
    from resunet_trt.io import load_ct, load_label
    from resunet_trt.segmenter import Segmenter

    ct = load_ct(ct_file)
    masks = {}
    for name, flags, kwargs in [
        ("default", [], {}),
        ("big", ["--min-lesion-mm3", "2000"], {"min_lesion_mm3": 2000.0}),
        ("unsure", ["--min-lesion-confidence", "0"], {"min_lesion_confidence": 0.0}),
    ]:
        out = tmp_path / name
        assert main([str(ct_file), "-o", str(out), "--no-report", *flags, *_args(onnx_fp32)]) == 0
        with Segmenter(model=onnx_fp32, device="cpu", backend="onnxruntime", **kwargs) as seg:
            expected = seg.segment(ct_file).labels
        masks[name] = load_label(out / "ct_mask.nii.gz", like=ct)
        np.testing.assert_array_equal(masks[name], expected)
    assert np.count_nonzero(masks["big"] == 2) < np.count_nonzero(masks["default"] == 2)
    assert np.count_nonzero(masks["unsure"] == 2) >= np.count_nonzero(masks["default"] == 2)


def test_glob_matching_nothing_exits_two(onnx_fp32, tmp_path, capsys):
    code = main([str(tmp_path / "nothing*.nii.gz"), "-o", str(tmp_path / "out"), *_args(onnx_fp32)])
    assert code == 2
    assert "no file matches" in capsys.readouterr().err


def test_unusable_device_is_a_clean_error(tmp_path, capsys, ct_file):
    from resunet_trt.segmenter import cuda_status

    if cuda_status(0)[0]:
        pytest.skip("CUDA is usable here")
    code = main([str(ct_file), "-o", str(tmp_path / "out"), "--device", "cuda", "--no-progress"])
    assert code == 2
    assert "CUDA" in capsys.readouterr().err


@pytest.mark.parametrize(
    "bad",
    [
        ["--batch-size", "0"],
        ["--min-lesion-voxels", "-1"],
        ["--min-lesion-mm3", "-5"],
        ["--min-lesion-mm3", "nan"],
        ["--min-lesion-confidence", "1"],
        ["--min-lesion-confidence", "-0.5"],
        ["--backend", "tpu"],
    ],
)
def test_bad_arguments_exit_two(tmp_path, bad, ct_file):
    with pytest.raises(SystemExit) as info:
        main([str(ct_file), "-o", str(tmp_path / "out"), *bad])
    assert info.value.code == 2


def test_every_kind_of_bad_input_is_skipped_and_the_good_case_goes_on(onnx_fp32, tmp_path, capsys, ct_file):
    from test_segmenter import BAD_KINDS, _bad_input

    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    bad = [_bad_input(kind, bad_dir) for kind in BAD_KINDS]
    out = tmp_path / "out"
    code = main([*map(str, bad), str(ct_file), "-o", str(out), *_args(onnx_fp32)])
    assert code == 1
    assert sorted(p.name for p in out.iterdir()) == ["ct_mask.nii.gz", "ct_report.json"]
    lines = capsys.readouterr().out.splitlines()
    for path in bad:
        assert any(line.startswith(str(path)) and "FAILED" in line for line in lines), path
    assert f"1 of {len(bad) + 1} cases segmented, {len(bad)} failed" in lines[-1]
