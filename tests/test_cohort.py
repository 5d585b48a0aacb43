"""Cohorts on a local Ray instance: Segmenter's own outputs, a failed row for a corrupt file, resume, lost workers.

One Ray instance (2 CPUs, no dashboard) serves the module; the model is the tiny ONNX of tests/model_fixtures.py.
The cases are real CT: a 16-slice crop of LiTS 117 (liver and tumors for the tiny model to find), the
downsampled LiTS case under the same file name ``ct.nii.gz`` (a duplicate basename), the 3-slice DICOM series,
and a truncated gzip. The reference is ``Segmenter.segment_files`` run here, in this process, on the same inputs.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from resunet_trt.cohort import (
    EXIT_ONCE_ENV,
    JOURNAL,
    MANIFEST_COLUMNS,
    MANIFEST_CSV,
    MANIFEST_PARQUET,
    empty_row,
    read_case_list,
    read_manifest,
    run_cohort,
    write_manifest,
)

DATA = Path(__file__).parent / "data"
DICOM_SERIES = DATA / "dicom_ct3slice" / "series"
RUN = {"device": "cpu", "backend": "onnxruntime", "segmenter_options": {"batch_size": 8}, "progress": False}


# ------------------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict[str, Path]:
    import nibabel as nib

    root = tmp_path_factory.mktemp("cohort_in")
    (root / "crop").mkdir()
    img = nib.load(DATA / "lits117_roi128" / "ct.nii.gz")
    affine = img.affine.copy()
    z0, z1 = 80, 96
    affine[:3, 3] += affine[:3, 2] * z0  # the crop's first slice keeps its place in the world
    crop = nib.Nifti1Image(np.asanyarray(img.dataobj)[:, :, z0:z1], affine, img.header)
    crop.set_qform(affine, code=1)
    crop.set_sform(affine, code=1)
    nib.save(crop, root / "crop" / "ct.nii.gz")
    (root / "small").mkdir()
    shutil.copyfile(DATA / "lits_small64" / "ct.nii.gz", root / "small" / "ct.nii.gz")
    raw = (DATA / "lits_small64" / "ct.nii.gz").read_bytes()
    (root / "broken.nii.gz").write_bytes(raw[: len(raw) // 3])  # a truncated download
    return {
        "crop": root / "crop" / "ct.nii.gz",
        "small": root / "small" / "ct.nii.gz",
        "dicom": DICOM_SERIES,
        "broken": root / "broken.nii.gz",
    }


@pytest.fixture(scope="module")
def exit_marker(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fault") / "exited"


@pytest.fixture(scope="module")
def ray_local(exit_marker):
    ray = pytest.importorskip("ray", reason="cohorts need ray (pip install 'resunet-trt[cohort]')")
    pytest.importorskip("pyarrow", reason="cohort manifests need pyarrow (pip install 'resunet-trt[cohort]')")
    # Workers inherit the environment of the Ray instance: a worker exits abruptly, once, on an input whose
    # path holds "exit_here" (only the lost-worker test has one).
    os.environ[EXIT_ONCE_ENV] = f"exit_here|{exit_marker}"
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20, log_to_driver=False)
    yield ray
    ray.shutdown()
    os.environ.pop(EXIT_ONCE_ENV, None)


@pytest.fixture(scope="module")
def order(cases) -> list[Path]:
    return [cases["crop"], cases["small"], cases["dicom"], cases["broken"]]


@pytest.fixture(scope="module")
def cohort(ray_local, onnx_fp32, order, tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort_out")
    return run_cohort(order, out, model=onnx_fp32, **RUN), out


@pytest.fixture(scope="module")
def reference(onnx_fp32, order, tmp_path_factory):
    """Segmenter.segment_files in this process on the same inputs and model."""
    from resunet_trt.segmenter import Segmenter

    out = tmp_path_factory.mktemp("reference_out")
    with Segmenter(model=onnx_fp32, device="cpu", backend="onnxruntime", batch_size=8) as seg:
        return seg.segment_files(order, out, keep_results=False)


def _labels(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    img = nib.load(path)
    return np.asarray(img.dataobj), img.affine


def _journal_inputs(out: Path) -> list[str]:
    return [json.loads(line)["input"] for line in (out / JOURNAL).read_text().splitlines()]


# ------------------------------------------------------------------------------------------------
# A cohort against Segmenter alone
# ------------------------------------------------------------------------------------------------
def test_masks_and_numbers_are_those_of_the_segmenter_alone(cohort, reference, order):
    summary, out = cohort
    assert [r["input"] for r in summary.rows] == [os.path.abspath(p) for p in order]
    assert (summary.done, summary.failed, summary.skipped) == (3, 1, 0)
    for row, ref in zip(summary.rows, reference):
        assert (row["status"] == "ok") == ref.ok
        if not ref.ok:
            continue
        assert Path(row["mask"]).name == ref.outputs["mask"].name  # the same collision-free names
        ours, ref_labels = _labels(row["mask"]), _labels(ref.outputs["mask"])
        np.testing.assert_array_equal(ours[0], ref_labels[0])
        np.testing.assert_array_equal(ours[1], ref_labels[1])
        counts = np.bincount(ours[0].ravel(), minlength=3)
        report = json.loads(Path(row["report"]).read_text())
        assert row["liver_ml"] == pytest.approx(ref.summary["liver_volume_ml"], rel=1e-12)
        assert row["tumor_ml"] == pytest.approx(ref.summary["tumor_volume_ml"], rel=1e-12)
        assert row["lesion_count"] == ref.summary["lesion_count"] == report["lesion_count"]
        # The volumes agree with the mask file: voxels times the voxel volume.
        voxel_ml = float(np.prod(report["spacing_mm_dhw"])) / 1000.0
        assert row["liver_ml"] == pytest.approx((counts[1] + counts[2]) * voxel_ml, rel=1e-9)
        assert row["tumor_ml"] == pytest.approx(counts[2] * voxel_ml, rel=1e-9)
    crop_counts = np.bincount(_labels(summary.rows[0]["mask"])[0].ravel(), minlength=3)
    assert crop_counts[1] > 5_000 and crop_counts[2] > 500, f"too little segmented to compare: {crop_counts}"
    names = [r["case"] for r in summary.rows]
    assert names[0] != names[1] and len(set(names)) == 4  # two inputs are called ct.nii.gz
    # A DICOM series gets its DICOM-SEG beside the NIfTI, as with resunet-seg.
    assert Path(summary.rows[2]["dicom_seg"]).is_file() and reference[2].outputs["dicom_seg"].is_file()


def test_a_corrupt_file_is_a_failed_row_and_the_run_goes_on(cohort, cases):
    summary, out = cohort
    row = summary.rows[3]
    assert row["status"] == "failed" and str(cases["broken"]) in row["error"]
    assert row["mask"] is None and not list(out.glob(f"{row['case']}_*"))
    assert row["input_sha256"] == hashlib.sha256(cases["broken"].read_bytes()).hexdigest()


def test_manifest_rows_say_what_ran_where(cohort, cases, onnx_fp32):
    import pyarrow.parquet as pq
    import pydicom

    summary, out = cohort
    rows = summary.rows
    model_sha = hashlib.sha256(Path(onnx_fp32).read_bytes()).hexdigest()
    assert {r["model_sha256"] for r in rows} == {model_sha}
    assert {r["node"] for r in rows} == {socket.gethostname()} and {r["device"] for r in rows} == {"cpu"}
    assert rows[0]["input_sha256"] == hashlib.sha256(cases["crop"].read_bytes()).hexdigest()
    first = sorted(p for p in DICOM_SERIES.iterdir() if p.is_file())[0]
    assert rows[2]["series_uid"] == str(pydicom.dcmread(first, stop_before_pixels=True).SeriesInstanceUID)
    assert rows[2]["input_sha256"] is None and rows[0]["series_uid"] is None
    for r in rows[:3]:
        assert r["attempts"] == 1
        assert r["total_s"] >= r["infer_s"] > 0 and r["read_s"] > 0 and r["write_s"] > 0
    # CSV and Parquet hold the same rows, every column, in input order.
    columns = [name for name, _ in MANIFEST_COLUMNS]
    from_csv = read_manifest(out / MANIFEST_CSV)
    from_parquet = pq.read_table(out / MANIFEST_PARQUET).to_pylist()
    assert list(from_parquet[0]) == columns
    with open(out / MANIFEST_CSV, newline="") as fh:
        assert next(csv.reader(fh)) == columns
    for a, b, r in zip(from_csv, from_parquet, rows):
        for k in columns:
            assert a[k] == b[k] == r.get(k), k
    # Only whole files are left: no temporary file of an atomic write.
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [JOURNAL]


# ------------------------------------------------------------------------------------------------
# Resume
# ------------------------------------------------------------------------------------------------
def test_rerun_skips_done_cases_and_redoes_a_changed_input(cohort, order, onnx_fp32, tmp_path):
    summary, out = cohort
    before = {r["case"]: Path(r["mask"]).stat().st_mtime_ns for r in summary.rows if r["status"] == "ok"}
    again = run_cohort(order, out, model=onnx_fp32, **RUN)
    assert (again.done, again.failed, again.skipped) == (0, 1, 3)  # the corrupt file is tried again
    after = {r["case"]: Path(r["mask"]).stat().st_mtime_ns for r in again.rows if r["status"] == "ok"}
    assert after == before
    assert [r["finished_utc"] for r in again.rows[:3]] == [r["finished_utc"] for r in summary.rows[:3]]

    # The same path with other content is a different input: it is segmented again, the others are not.
    import nibabel as nib

    small = order[1]
    img = nib.load(small)
    changed = nib.Nifti1Image(np.asanyarray(img.dataobj)[::-1].copy(), img.affine, img.header)
    saved = tmp_path / "ct.nii.gz"
    shutil.copyfile(small, saved)
    try:
        nib.save(changed, small)
        changed_sha = hashlib.sha256(small.read_bytes()).hexdigest()
        third = run_cohort(order, out, model=onnx_fp32, **RUN)
    finally:
        shutil.copyfile(saved, small)
    assert (third.done, third.failed, third.skipped) == (1, 1, 2)
    assert third.rows[1]["input_sha256"] == changed_sha != summary.rows[1]["input_sha256"]
    assert Path(third.rows[0]["mask"]).stat().st_mtime_ns == before[third.rows[0]["case"]]


def test_an_interrupted_run_resumes_and_does_each_case_once(ray_local, cases, onnx_fp32, tmp_path):
    inputs = [cases["dicom"], cases["small"], cases["crop"]]
    out = tmp_path / "out"

    def stop_after_first(row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_cohort(inputs, out, model=onnx_fp32, queue_depth=1, on_case=stop_after_first, **RUN)
    first = read_manifest(out / MANIFEST_CSV)
    assert [r["status"] for r in first] == ["ok"] and first[0]["input"] == os.path.abspath(cases["dicom"])
    mtime = Path(first[0]["mask"]).stat().st_mtime_ns
    assert not [p for p in out.iterdir() if ".tmp" in p.name]

    resumed = run_cohort(inputs, out, model=onnx_fp32, **RUN)
    assert (resumed.done, resumed.failed, resumed.skipped) == (2, 0, 1)
    assert Path(resumed.rows[0]["mask"]).stat().st_mtime_ns == mtime
    assert sorted(_journal_inputs(out)) == sorted(os.path.abspath(p) for p in inputs)
    assert all(Path(r["mask"]).is_file() for r in resumed.rows)


def test_a_worker_that_dies_is_replaced_and_its_case_retried_once(
    cohort, cases, onnx_fp32, tmp_path, exit_marker
):
    (tmp_path / "exit_here").mkdir()
    doomed = tmp_path / "exit_here" / "ct.nii.gz"
    shutil.copyfile(cases["crop"], doomed)
    inputs = [cases["dicom"], doomed, cases["small"]]
    out = tmp_path / "out"
    summary = run_cohort(inputs, out, model=onnx_fp32, **RUN)
    assert exit_marker.is_file(), "the worker never reached the case it was to die on"
    assert (summary.done, summary.failed, summary.workers_replaced, summary.retried) == (3, 0, 1, 1)
    assert [r["attempts"] for r in summary.rows] == [1, 2, 1]
    assert summary.rows[1]["worker"] != summary.rows[0]["worker"]  # done by the replacement
    assert sorted(_journal_inputs(out)) == sorted(os.path.abspath(p) for p in inputs)
    # The retried case's mask is what the first cohort wrote for the same CT.
    first_cohort = cohort[0].rows[0]
    assert first_cohort["input"] == os.path.abspath(cases["crop"])
    np.testing.assert_array_equal(_labels(summary.rows[1]["mask"])[0], _labels(first_cohort["mask"])[0])


# ------------------------------------------------------------------------------------------------
# The command line and the small pieces (no Ray needed for most)
# ------------------------------------------------------------------------------------------------
def test_cli_runs_a_csv_case_list_and_exits_1_on_a_failed_case(ray_local, cases, onnx_fp32, tmp_path, capsys):
    from resunet_trt.cli.cohort import main

    (tmp_path / "list").mkdir()
    shutil.copytree(DICOM_SERIES, tmp_path / "list" / "series")
    shutil.copyfile(cases["broken"], tmp_path / "list" / "broken.nii.gz")
    (tmp_path / "list" / "cases.csv").write_text("path,note\nseries,relative to the csv\nbroken.nii.gz,\n")
    argv = [str(tmp_path / "list" / "cases.csv"), "-o", str(tmp_path / "out"), "--model", str(onnx_fp32)]
    code = main([*argv, "--device", "cpu", "--backend", "onnxruntime", "--no-progress"])
    assert code == 1
    rows = read_manifest(tmp_path / "out" / MANIFEST_CSV)
    assert [r["status"] for r in rows] == ["ok", "failed"]
    assert "1 segmented, 1 failed" in capsys.readouterr().out


def test_cli_bad_arguments_exit_2(tmp_path, capsys):
    from resunet_trt.cli.cohort import main

    assert main([str(tmp_path / "nothing*.nii.gz"), "-o", str(tmp_path / "o")]) == 2
    assert "no file matches" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path), "-o", str(tmp_path / "o"), "--queue-depth", "0"])


def test_read_case_list_takes_the_path_column_relative_to_the_csv(tmp_path):
    (tmp_path / "a.csv").write_text("id,path\n1,x/ct.nii.gz\n2,/abs/y.nii.gz\n3,\n")
    assert read_case_list(tmp_path / "a.csv") == [tmp_path / "x" / "ct.nii.gz", Path("/abs/y.nii.gz")]
    (tmp_path / "b.csv").write_text("file\nz.nii.gz\n")
    assert read_case_list(tmp_path / "b.csv") == [tmp_path / "z.nii.gz"]
    (tmp_path / "c.csv").write_text("path\n")
    with pytest.raises(ValueError, match="lists no input"):
        read_case_list(tmp_path / "c.csv")
    with pytest.raises(FileNotFoundError):
        read_case_list(tmp_path / "missing.csv")


def test_manifest_round_trips_types_and_empty_cells(tmp_path):
    pytest.importorskip("pyarrow", reason="cohort manifests need pyarrow")
    ok = empty_row("a", "/x/a.nii.gz")
    ok.update(status="ok", liver_ml=1234.5678901234, lesion_count=3, attempts=1, total_s=0.1 + 0.2)
    bad = empty_row("b", "/x/b, with comma.nii.gz")
    bad.update(error='cannot read "b"\nsecond line', attempts=2)
    write_manifest([ok, bad], tmp_path)
    assert read_manifest(tmp_path / MANIFEST_CSV) == [ok, bad]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"queue_depth": 0}, "queue_depth"),
        ({"max_retries": -1}, "max_retries"),
        ({"mask_format": "png"}, "mask_format"),
        ({"segmenter_options": {"device": "cuda"}}, "reserved keys"),
        ({"segmenter_options": {"batch": 4}}, "unknown or reserved keys"),
    ],
)
def test_bad_arguments_are_named(kwargs, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        run_cohort([DATA / "lits_small64" / "ct.nii.gz"], tmp_path, **kwargs)


def test_the_same_input_twice_is_an_error(tmp_path):
    path = DATA / "lits_small64" / "ct.nii.gz"
    with pytest.raises(ValueError, match="same case twice"):
        run_cohort([path, DATA / "lits_small64" / ".." / "lits_small64" / "ct.nii.gz"], tmp_path)
