"""Defects found by feeding bad input to the library and to ``resunet-seg``: one test (or a few) per defect.

Each test fails on the code before its fix: outputs overwritten by a name clash, tracebacks for an unusable
output folder, temporary names over the file-name limit, a zero voxel size read as 1 mm, a traceback on
Ctrl-C, implausible volumes reported without a word, a DICOM error naming an option the CLI lacked, errors
naming internal parameters, the bundled sample missing from the README, and reprs that print whole arrays.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from resunet_trt import segmenter as segmenter_module
from resunet_trt.cli.seg import main
from resunet_trt.io import atomic_write, atomic_write_bytes, load_ct, load_label
from resunet_trt.report import PLAUSIBLE_LIVER_ML, PLAUSIBLE_VOXEL_MM, plausibility_warnings
from resunet_trt.segmenter import Segmenter, output_names

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def segmenter(onnx_fp32):
    with Segmenter(model=onnx_fp32, device="cpu", backend="onnxruntime", batch_size=16) as seg:
        yield seg


@pytest.fixture(scope="module")
def ct_file(tmp_path_factory) -> Path:
    from test_segmenter import write_liver_crop

    return write_liver_crop(tmp_path_factory.mktemp("ct") / "ct.nii.gz")


def _with_voxel_size(src: Path, dst: Path, mm: float) -> Path:
    """A copy of ``src`` whose voxels are ``mm`` wide on every axis (same voxels, same axes directions)."""
    img = nib.load(src)
    affine = img.affine.copy()
    affine[:3, :3] = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0) * mm
    out = nib.Nifti1Image(np.asanyarray(img.dataobj), affine, img.header)
    out.set_qform(affine, code=1)
    out.set_sform(affine, code=1)
    nib.save(out, dst)
    return dst


def _cli_args(model) -> list[str]:
    return ["--model", str(model), "--backend", "onnxruntime", "--device", "cpu", "--no-progress"]


# ------------------------------------------------------------------------------------------------
# 1. Output names: unique by construction, and a clash never overwrites
# ------------------------------------------------------------------------------------------------
def test_issue_inputs_get_three_distinct_names_and_keep_their_own():
    names = output_names(["a/case.nii.gz", "b/case.nii.gz", "c/case_2.nii.gz"])
    assert len({n.casefold() for n in names}) == 3
    assert names[0] == "case" and names[2] == "case_2"  # an input's own name is never given to another


def test_output_names_are_distinct_on_random_inputs():
    """Randomised: many inputs built from few stems, suffixes and letter cases; names stay distinct, ignoring case."""
    rng = np.random.default_rng(15)
    stems = ["case", "Case", "case_2", "case_3", "case_2_2", "x", "x_2"]
    for _ in range(300):
        n = int(rng.integers(1, 12))
        paths = [f"d{i}/{stems[rng.integers(len(stems))]}.nii.gz" for i in range(n)]
        names = output_names(paths)
        assert len({name.casefold() for name in names}) == n, paths
        bases = [Path(p).name[: -len(".nii.gz")] for p in paths]
        # The first input with a given name keeps it when no other input claimed it first.
        for i, base in enumerate(bases):
            if base.casefold() not in {b.casefold() for b in bases[:i]}:
                assert names[i] == base, (paths, names)


def test_issue_case_every_input_keeps_its_own_mask_and_report(segmenter, ct_file, tmp_path):
    inputs = []
    for folder, name in (("a", "case"), ("b", "case"), ("c", "case_2")):
        (tmp_path / folder).mkdir()
        inputs.append(tmp_path / folder / f"{name}.nii.gz")
        inputs[-1].write_bytes(ct_file.read_bytes())
    out = tmp_path / "out"
    outcomes = segmenter.segment_files(inputs, out, report=True)
    assert all(o.ok for o in outcomes)
    masks = [o.outputs["mask"] for o in outcomes]
    reports = [o.outputs["report"] for o in outcomes]
    assert len(set(masks)) == 3 and len(set(reports)) == 3
    assert len(list(out.iterdir())) == 6
    for path, report in zip(inputs, reports):
        assert json.loads(report.read_text())["source"] == str(path)  # nobody's report was overwritten


def test_a_name_clash_fails_the_second_case_and_leaves_the_first(segmenter, ct_file, tmp_path, monkeypatch):
    """The check before writing, exercised by forcing a clash that output_names itself never produces."""
    monkeypatch.setattr(segmenter_module, "output_names", lambda paths: ["same"] * len(list(paths)))
    other = tmp_path / "other.nii.gz"
    other.write_bytes(ct_file.read_bytes())
    out = tmp_path / "out"
    first, second = segmenter.segment_files([ct_file, other], out, report=True)
    assert first.ok and not second.ok
    assert "not overwritten" in second.error and str(other) in second.error
    assert json.loads((out / "same_report.json").read_text())["source"] == str(ct_file)
    assert sorted(p.name for p in out.iterdir()) == ["same_mask.nii.gz", "same_report.json"]


# ------------------------------------------------------------------------------------------------
# 2. An unusable output folder: one line, exit 2, no traceback
# ------------------------------------------------------------------------------------------------
def _run_cli_expecting_a_bad_out(argv, capsys) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("resunet-seg: "), err
    return lines[0]


def test_output_folder_that_is_a_file(onnx_fp32, ct_file, tmp_path, capsys):
    existing = tmp_path / "existing_file"
    existing.write_text("x")
    line = _run_cli_expecting_a_bad_out([str(ct_file), "-o", str(existing), *_cli_args(onnx_fp32)], capsys)
    assert str(existing) in line and "existing file" in line
    assert existing.read_text() == "x"


def test_output_folder_under_a_file(onnx_fp32, ct_file, tmp_path, capsys):
    existing = tmp_path / "existing_file"
    existing.write_text("x")
    line = _run_cli_expecting_a_bad_out([str(ct_file), "-o", str(existing / "sub"), *_cli_args(onnx_fp32)], capsys)
    assert str(existing / "sub") in line and "not a folder" in line


def test_output_folder_the_kernel_refuses_to_create(onnx_fp32, ct_file, capsys):
    """A real refusal by the OS, also for root: procfs allows no new folders."""
    target = "/proc/resunet_trt_out_test"
    line = _run_cli_expecting_a_bad_out([str(ct_file), "-o", target, *_cli_args(onnx_fp32)], capsys)
    assert target in line


def test_output_folder_on_a_read_only_mount(onnx_fp32, ct_file, tmp_path, capsys, monkeypatch):
    """A read-only mount, simulated: as root no real one is at hand here, so mkdir is made to fail with EROFS."""
    target = tmp_path / "ro" / "out"
    real_mkdir = Path.mkdir

    def read_only_mkdir(self, *args, **kwargs):
        if self == target:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only_mkdir)
    line = _run_cli_expecting_a_bad_out([str(ct_file), "-o", str(target), *_cli_args(onnx_fp32)], capsys)
    assert str(target) in line and "Read-only file system" in line


def test_existing_output_folder_without_write_access(onnx_fp32, ct_file, tmp_path, capsys, monkeypatch):
    """An existing folder on a read-only mount: simulated through os.access, which answers False there, root or not."""
    out = tmp_path / "out"
    out.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == out else real_access(p, mode, **kw))
    line = _run_cli_expecting_a_bad_out([str(ct_file), "-o", str(out), *_cli_args(onnx_fp32)], capsys)
    assert "not writable" in line and list(out.iterdir()) == []


# ------------------------------------------------------------------------------------------------
# 3. Long names: temporary files stay within the file-name limit
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["m" * 243 + ".nii.gz", "é" * 120 + ".nii.gz", "r" * 250 + ".json"])
def test_atomic_write_of_a_name_near_the_limit(tmp_path, name):
    assert len(os.fsencode(name)) <= 255
    target = atomic_write_bytes(tmp_path / name, b"payload")
    assert target.read_bytes() == b"payload"
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_atomic_write_temporary_keeps_the_suffix_of_a_long_name(tmp_path):
    with atomic_write(tmp_path / ("n" * 248 + ".nii.gz")) as tmp:  # 255 bytes: the longest legal name
        assert tmp.name.endswith(".nii.gz") and len(os.fsencode(tmp.name)) <= 255


def test_a_235_character_input_name_is_segmented(segmenter, ct_file, tmp_path):
    long_input = tmp_path / ("c" * 228 + ".nii.gz")
    assert len(long_input.name) == 235
    long_input.write_bytes(ct_file.read_bytes())
    (outcome,) = segmenter.segment_files([long_input], tmp_path / "out", report=True, overlay=True)
    assert outcome.ok, outcome.error
    assert all(p.exists() and len(os.fsencode(p.name)) <= 255 for p in outcome.outputs.values())


def test_an_input_name_at_the_limit_gets_outputs_that_fit():
    """255-byte input names: the case name is cut so that the longest output name still fits."""
    longest = max(len(s) for s in segmenter_module.OUTPUT_SUFFIXES)
    names = output_names(["a/" + "d" * 248 + ".nii.gz", "b/" + "d" * 248 + ".nii.gz"])
    assert len(set(names)) == 2
    assert all(len(os.fsencode(n)) + longest <= 255 for n in names)


# ------------------------------------------------------------------------------------------------
# 4. Zero voxel spacing is refused, not read as 1 mm
# ------------------------------------------------------------------------------------------------
def _nifti_with_pixdim(path: Path, pixdim, *, qform_code: int, sform_affine=None) -> Path:
    rng = np.random.default_rng(4)
    data = rng.integers(-1000, 400, size=(12, 10, 8), dtype=np.int16)
    img = nib.Nifti1Image(data, None)
    img.header.set_qform(np.diag([0.8, 0.8, 2.5, 1.0]), code=qform_code)
    if sform_affine is not None:
        img.header.set_sform(sform_affine, code=1)
    else:
        img.header.set_sform(None, code=0)
    img.header["pixdim"][1:4] = pixdim
    nib.save(img, path)
    with nib.openers.ImageOpener(path) as fh:  # the zero really is in the file (nibabel fixes it on reading)
        raw = nib.Nifti1Header.from_fileobj(fh, check=False)
    assert list(raw["pixdim"][1:4]) == pytest.approx(list(pixdim))
    return path


@pytest.mark.parametrize("qform_code", [0, 1])
@pytest.mark.parametrize("pixdim", [(0.0, 0.8, 2.5), (0.8, 0.8, 0.0), (0.0, 0.0, 0.0)])
def test_zero_voxel_size_is_refused_naming_the_file(tmp_path, pixdim, qform_code):
    path = _nifti_with_pixdim(tmp_path / "zero.nii", pixdim, qform_code=qform_code)
    with pytest.raises(ValueError, match="voxel size") as err:
        load_ct(path)
    assert str(path) in str(err.value)


def test_zero_pixdim_with_a_valid_sform_reads_the_sform_spacing(tmp_path):
    sform = np.diag([0.7, 0.9, 3.0, 1.0])
    path = _nifti_with_pixdim(tmp_path / "sform.nii", (0.0, 0.0, 0.0), qform_code=0, sform_affine=sform)
    volume = load_ct(path)
    assert sorted(volume.spacing) == pytest.approx([0.7, 0.9, 3.0])


def test_zero_voxel_size_fails_the_case_in_the_cli(onnx_fp32, ct_file, tmp_path, capsys):
    bad = _nifti_with_pixdim(tmp_path / "zero.nii.gz", (0.0, 0.8, 2.5), qform_code=1)
    code = main([str(bad), str(ct_file), "-o", str(tmp_path / "out"), *_cli_args(onnx_fp32)])
    printed = capsys.readouterr().out
    assert code == 1 and "voxel size" in printed and "1 of 2 cases segmented" in printed


# ------------------------------------------------------------------------------------------------
# 5. Ctrl-C: one line, exit 130, no partial files
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ctrl_c_exits_130_with_one_line_and_whole_outputs(onnx_fp32, ct_file, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    # 1.5 mm voxels put the liver within the plausible volume range, so no warning joins stderr.
    first = _with_voxel_size(ct_file, inputs / "case_00.nii.gz", 1.5)
    # Enough cases that the run outlasts the poll below on a loaded machine: it must still be working when the
    # signal comes (40 tiny cases could all finish between two polls there).
    n_cases = 200
    for i in range(1, n_cases):
        (inputs / f"case_{i:02d}.nii.gz").write_bytes(first.read_bytes())
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "resunet_trt.cli.seg", str(inputs), "-o", str(out), *_cli_args(onnx_fp32)]
    # As in an interactive shell, the child must not start with SIGINT ignored: a child inherits an ignored SIGINT
    # from its parent (something in the test session may ignore it), and Python then never raises
    # KeyboardInterrupt. A handler (unlike "ignore") is reset to the default action in the child.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, inherited)
    try:
        deadline = time.monotonic() + 240
        while not (out.is_dir() and any(out.glob("*_report.json"))):  # working: the first case is written
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "resunet-seg wrote nothing in 240 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, (stdout, stderr, f"SIGINT handler of the test process: {inherited!r}")
    assert stderr.splitlines() == ["resunet-seg: interrupted"], stderr
    files = sorted(p.name for p in out.iterdir())
    assert not [f for f in files if f.startswith(".")], files  # no temporary file left
    masks = {f[: -len("_mask.nii.gz")] for f in files if f.endswith("_mask.nii.gz")}
    reports = {f[: -len("_report.json")] for f in files if f.endswith("_report.json")}
    assert masks == reports and 1 <= len(masks) < n_cases  # whole cases only, and it really stopped early
    for case in masks:
        assert np.asanyarray(nib.load(out / f"{case}_mask.nii.gz").dataobj).max() <= 2
        json.loads((out / f"{case}_report.json").read_text())


# ------------------------------------------------------------------------------------------------
# 6. Physically implausible results are questioned, in the report and on screen
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("liver_ml", "spacing", "expected"),
    [
        (1500.0, (2.5, 0.8, 0.8), []),
        (PLAUSIBLE_LIVER_ML[0], (PLAUSIBLE_VOXEL_MM[0],) * 3, []),  # the limits themselves are plausible
        (PLAUSIBLE_LIVER_ML[1], (PLAUSIBLE_VOXEL_MM[1],) * 3, []),
        (299.0, (1.0, 1.0, 1.0), ["liver"]),
        (0.0, (1.0, 1.0, 1.0), ["liver"]),
        (6001.0, (1.0, 1.0, 1.0), ["liver"]),
        (1500.0, (10.5, 1.0, 1.0), ["voxel"]),
        (1500.0, (1.0, 0.1, 1.0), ["voxel"]),
        (3_666_000.0, (100.0, 100.0, 100.0), ["voxel", "liver"]),
    ],
)
def test_plausibility_limits(liver_ml, spacing, expected):
    warnings = plausibility_warnings(liver_ml, spacing)
    assert [w.split(" ")[0] for w in warnings] == expected


def test_100_mm_voxels_are_questioned_in_report_and_log(segmenter, ct_file, tmp_path, caplog):
    huge = _with_voxel_size(ct_file, tmp_path / "huge.nii.gz", 100.0)
    with caplog.at_level("WARNING", logger="resunet_trt.segmenter"):
        (outcome,) = segmenter.segment_files([huge], tmp_path / "out", report=True)
    assert outcome.ok
    report = json.loads(outcome.outputs["report"].read_text())
    # Independent of the pipeline: the liver volume from the written mask and the file's voxel size.
    mask = np.asanyarray(nib.load(outcome.outputs["mask"]).dataobj)
    liver_ml = np.count_nonzero(mask) * 100.0**3 / 1000.0
    assert report["liver_volume_ml"] == pytest.approx(liver_ml) and liver_ml > PLAUSIBLE_LIVER_ML[1]
    assert len(report["warnings"]) == 2
    assert "100 mm" in report["warnings"][0] and f"{liver_ml:.1f} mL" in report["warnings"][1]
    logged = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(logged) == 2 and all(str(huge) in m for m in logged)


def test_plausible_case_has_an_empty_warning_list(segmenter, ct_file, tmp_path):
    plausible = _with_voxel_size(ct_file, tmp_path / "p.nii.gz", 1.5)
    result = segmenter.segment(plausible)
    assert PLAUSIBLE_LIVER_ML[0] <= result.liver_volume_ml <= PLAUSIBLE_LIVER_ML[1]
    assert result.to_report()["warnings"] == [] and result.warnings == []


# ------------------------------------------------------------------------------------------------
# 7. Two DICOM series in one folder: the error lists them, --series-uid picks one
# ------------------------------------------------------------------------------------------------
@pytest.fixture()
def two_series(data_dir, tmp_path) -> Path:
    from test_io import _make_series

    def edit(k, ds):
        if k >= 3:
            ds.SeriesInstanceUID = "1.2.3.4.5"
            ds.SeriesDescription = "second look"
            x, y, z = (float(v) for v in ds.ImagePositionPatient)
            ds.ImagePositionPatient = [f"{x:.6f}", f"{y:.6f}", f"{z + 10.0:.6f}"]
        else:
            ds.SeriesDescription = "first look"

    return _make_series(data_dir, tmp_path / "two", [-120.0, -121.0, -122.0, -120.0, -121.0], edit=edit)


def test_two_series_error_lists_them_and_names_the_cli_option(two_series):
    with pytest.raises(ValueError) as err:
        load_ct(two_series)
    message = str(err.value)
    assert "--series-uid" in message
    assert re.search(r"'first look' \(3 slices, CT\)", message) and re.search(r"'second look' \(2 slices", message)


def test_series_uid_option_picks_the_series(onnx_fp32, two_series, tmp_path, capsys):
    out = tmp_path / "out"
    code = main([str(two_series), "-o", str(out), "--series-uid", "1.2.3.4.5", *_cli_args(onnx_fp32)])
    assert code == 0, capsys.readouterr()
    mask = nib.load(out / "two_mask.nii.gz")
    assert mask.shape[2] == 2  # the two slices of the second series (k = slice on disk)
    assert json.loads((out / "two_report.json").read_text())["shape_dhw"][0] == 2


def test_unknown_series_uid_lists_what_is_there(onnx_fp32, two_series, tmp_path, capsys):
    code = main([str(two_series), "-o", str(tmp_path / "out"), "--series-uid", "9.9", *_cli_args(onnx_fp32)])
    printed = capsys.readouterr().out
    assert code == 1 and "no series with SeriesInstanceUID 9.9" in printed and "'second look'" in printed


# ------------------------------------------------------------------------------------------------
# 8. Errors say what the user typed, not internal parameter names
# ------------------------------------------------------------------------------------------------
def test_missing_input_error_names_the_path_only(tmp_path):
    missing = tmp_path / "nope.nii.gz"
    for call in (lambda: load_ct(missing), lambda: load_label(missing, like=None)):
        with pytest.raises(FileNotFoundError) as err:
            call()
        assert str(err.value) == f"{missing}: no such file or folder"


def test_cli_missing_input_detail_has_no_parameter_name(onnx_fp32, ct_file, tmp_path, capsys):
    missing = tmp_path / "nope.nii.gz"
    code = main([str(missing), str(ct_file), "-o", str(tmp_path / "out"), *_cli_args(onnx_fp32)])
    printed = capsys.readouterr().out
    assert code == 1
    line = next(row for row in printed.splitlines() if row.startswith(str(missing)))
    assert line.rstrip().endswith(f"{missing}: no such file or folder") and "path_or_dir" not in printed


# ------------------------------------------------------------------------------------------------
# 10. The README shows how to reach the bundled sample from Python, and that line works
# ------------------------------------------------------------------------------------------------
def test_readme_shows_the_bundled_sample_and_the_import_works():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"`(from resunet_trt\.samples import [^`]+)`", text)
    assert match, "README does not show how to import the bundled sample"
    scope: dict = {}
    exec(match.group(1), scope)  # the line exactly as a reader would type it
    ct = scope["sample_ct_path"]()
    assert ct.is_file() and load_ct(ct).shape == (33, 64, 64)


# ------------------------------------------------------------------------------------------------
# 12. repr shows shapes and the summary, not arrays
# ------------------------------------------------------------------------------------------------
def test_reprs_are_short_and_show_shapes(segmenter, ct_file, tmp_path):
    (outcome,) = segmenter.segment_files([ct_file], tmp_path / "out", report=True, keep_results=True)
    result = outcome.result
    for text in (repr(result), repr(outcome)):
        assert len(text) < 800, text
        assert "array(" not in text and "[[" not in text
        assert "uint8(32, 128, 128)" in text
        assert f"{result.liver_volume_ml:.1f}" in text
    assert "ct_mask.nii.gz" in repr(outcome) and "'lesion_count'" in repr(outcome)
    assert repr(outcome).startswith("FileOutcome(") and repr(result).startswith("Result(")
