"""DICOM-SEG output: frames equal the NIfTI mask slice by slice, sit on the source slices, reference the
source instances, file under the source study, round-trip to the CT grid through highdicom, pass dciodvfy.

Real series: tests/data/dicom_ct3slice (3 slices, GE) and, when the shared data folder sits beside the
checkout, the 51-slice TCIA CRLM series. References are independent of the package: source slices are read and
ordered with pydicom here, the NIfTI with nibabel, the SEG with highdicom.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")

from resunet_trt import kernels  # noqa: E402
from resunet_trt.dicom_seg import SEGMENT_LABELS, source_frames, write_dicom_seg  # noqa: E402
from resunet_trt.io import CTVolume, load_ct, save_mask  # noqa: E402
from resunet_trt.report import build_lesions  # noqa: E402
from resunet_trt.segmenter import Result, Segmenter, mask_outputs  # noqa: E402

DICOM3 = Path(__file__).parent / "data" / "dicom_ct3slice" / "series"
CRLM = Path(__file__).parents[2] / "shared" / "data" / "crlm_dicom" / "CRLM-CT-1006"
SERIES = [
    pytest.param(DICOM3, id="ct3slice"),
    pytest.param(
        CRLM,
        id="crlm51",
        marks=pytest.mark.skipif(not CRLM.is_dir(), reason=f"{CRLM} absent (shared data beside the clone)"),
    ),
]


# ------------------------------------------------------------------------------------------------
# Independent references
# ------------------------------------------------------------------------------------------------
def _sources_in_normal_order(folder: Path) -> list:
    """The series' datasets (headers) sorted by position along the slice normal, as read here with pydicom."""
    datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.iterdir()) if p.is_file()]
    iop = np.array([float(v) for v in datasets[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    return sorted(datasets, key=lambda ds: float(np.dot([float(v) for v in ds.ImagePositionPatient], normal)))


def _nifti_frames(path: Path) -> np.ndarray:
    """(k, row, column) of a NIfTI mask of a DICOM series (i = column, j = row, k = slice on disk)."""
    import nibabel as nib

    return np.asarray(nib.load(path).dataobj).transpose(2, 1, 0)


def _seg_by_source(seg, datasets) -> np.ndarray:
    """(n, rows, columns) labels 0/1/2 of the SEG, one per source instance in the order of ``datasets``."""
    return np.asarray(
        seg.get_pixels_by_source_instance(
            [ds.SOPInstanceUID for ds in datasets],
            segment_numbers=[1, 2],
            combine_segments=True,
            assert_missing_frames_are_empty=True,
        )
    )


def _dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """(error lines, warning lines) of dciodvfy on ``path``."""
    run = subprocess.run([shutil.which("dciodvfy") or "dciodvfy", str(path)], capture_output=True, text=True)
    lines = [ln.strip() for ln in (run.stdout + run.stderr).splitlines() if ln.strip()]
    return [ln for ln in lines if ln.startswith("Error")], [ln for ln in lines if ln.startswith("Warning")]


def _ct_labels(volume: CTVolume, tumor: bool = True) -> np.ndarray:
    """Labels made from the CT itself (soft tissue = 1, its anterior patient-right part = 2): non-trivial and
    asymmetric, so a flipped or transposed frame would not match."""
    hu = volume.hu
    labels = ((hu >= 20) & (hu <= 200)).astype(np.uint8)
    if tumor:
        third = hu.shape[2] // 3
        right = np.zeros(hu.shape, dtype=bool)
        right[:, : hu.shape[1] // 2, :third] = True  # anterior half, patient right third
        labels[(labels == 1) & right] = 2
    return labels


def _write(tmp_path: Path, folder: Path, labels_of=_ct_labels):
    volume = load_ct(folder)
    labels = labels_of(volume)
    nifti = save_mask(tmp_path / "mask.nii.gz", labels, like=volume)
    seg_path = write_dicom_seg(
        tmp_path / "seg.dcm", labels, volume, model_sha256="ab" * 32, model_name="tiny.onnx"
    )
    return volume, labels, nifti, seg_path


# ------------------------------------------------------------------------------------------------
# The writer on real series
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("folder", SERIES)
def test_seg_frames_equal_the_nifti_mask_on_the_source_slices(tmp_path, folder):
    volume, labels, nifti, seg_path = _write(tmp_path, folder)
    assert (labels == 1).any() and (labels == 2).any()
    datasets = _sources_in_normal_order(folder)
    seg = hd.seg.segread(seg_path)
    by_source = _seg_by_source(seg, datasets)
    expected = _nifti_frames(nifti)
    rows, columns = int(datasets[0].Rows), int(datasets[0].Columns)
    assert by_source.shape == expected.shape == (len(datasets), rows, columns)
    np.testing.assert_array_equal(by_source, expected)
    # Every frame sits on the source slice it references, at that slice's ImagePositionPatient.
    position = {ds.SOPInstanceUID: [float(v) for v in ds.ImagePositionPatient] for ds in datasets}
    referenced = set()
    for frame in seg.PerFrameFunctionalGroupsSequence:
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        referenced.add(uid)
        got = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(got, position[uid], atol=1e-3)
    # Empty frames are left out: exactly the source slices with a label have frames.
    assert referenced == {ds.SOPInstanceUID for ds, frame in zip(datasets, expected) if frame.any()}
    # The series-level references name every source instance.
    listed = {
        item.ReferencedSOPInstanceUID
        for series in seg.ReferencedSeriesSequence
        for item in series.ReferencedInstanceSequence
    }
    assert listed == set(position)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == datasets[0].SeriesInstanceUID


@pytest.mark.parametrize("folder", SERIES)
def test_seg_files_under_the_source_study_with_new_uids_and_coded_segments(tmp_path, folder):
    _, _, _, seg_path = _write(tmp_path, folder)
    src = _sources_in_normal_order(folder)[0]
    seg = pydicom.dcmread(seg_path)
    assert seg.Modality == "SEG" and seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    copied = ("StudyInstanceUID", "StudyID", "PatientID", "PatientName", "StudyDate", "AccessionNumber")
    for keyword in copied:
        assert str(seg.get(keyword, "")) == str(src.get(keyword, "")), keyword
    assert seg.FrameOfReferenceUID == src.FrameOfReferenceUID
    assert seg.SeriesInstanceUID != src.SeriesInstanceUID
    assert seg.SOPInstanceUID not in {src.SOPInstanceUID, src.SeriesInstanceUID}
    segments = {int(s.SegmentNumber): s for s in seg.SegmentSequence}
    assert sorted(segments) == [1, 2]
    assert {n: s.SegmentLabel for n, s in segments.items()} == SEGMENT_LABELS
    liver, tumor = segments[1], segments[2]
    liver_type = liver.SegmentedPropertyTypeCodeSequence[0]
    assert (liver_type.CodeValue, liver_type.CodingSchemeDesignator) == ("10200004", "SCT")  # Liver
    assert liver.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"  # Anatomical Structure
    assert tumor.SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"  # Neoplasm
    assert tumor.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"  # Morphologically abnormal
    assert tumor.AnatomicRegionSequence[0].CodeValue == "10200004"  # in the liver
    for s in (liver, tumor):
        assert s.SegmentAlgorithmType == "AUTOMATIC"
        algo = s.SegmentationAlgorithmIdentificationSequence[0]
        assert algo.AlgorithmName == "resunet-trt"
        assert algo.AlgorithmParameters == "model_sha256=" + "ab" * 32 + ",model=tiny.onnx"


@pytest.mark.parametrize("folder", SERIES)
def test_seg_round_trips_to_the_ct_grid_voxel_for_voxel(tmp_path, folder):
    """highdicom's volume of the SEG, mapped through both affines, is the label volume on the CT's grid."""
    volume, labels, _, seg_path = _write(tmp_path, folder)
    seg_volume = hd.seg.segread(seg_path).get_volume(combine_segments=True)
    array = np.asarray(seg_volume.array)
    # canonical (d, h, w) -> RAS -> LPS -> highdicom voxel (slice, row, column)
    to_seg = np.linalg.inv(seg_volume.affine) @ np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.affine
    rot = to_seg[:3, :3]
    np.testing.assert_allclose(rot, np.round(rot), atol=1e-3)  # a signed permutation: the same grid
    np.testing.assert_allclose(to_seg[:3, 3], np.round(to_seg[:3, 3]), atol=1e-3)
    perm, shift = np.round(rot).astype(int), np.round(to_seg[:3, 3]).astype(int)
    # SEG voxel s_b = sign_b * c_a + shift_b, with a the canonical axis that SEG axis b runs along.
    axes = [int(np.flatnonzero(perm[b])[0]) for b in range(3)]
    canon_index = [(np.arange(array.shape[b]) - shift[b]) * perm[b, axes[b]] for b in range(3)]
    for b in range(3):  # the SEG volume lies inside the CT's grid
        assert canon_index[b].min() >= 0 and canon_index[b].max() < labels.shape[axes[b]]
    expected = labels.transpose(axes)[np.ix_(*canon_index)]
    np.testing.assert_array_equal(array, expected)
    # Slices the SEG volume leaves out (empty frames at the ends) hold no label.
    assert np.count_nonzero(expected) == np.count_nonzero(labels) > 0


@pytest.mark.parametrize("folder", SERIES)
@pytest.mark.parametrize("which", ["ct", "no_tumor", "empty"])
def test_dciodvfy_finds_no_errors(tmp_path, folder, which):
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not installed (Debian package dicom3tools; .ci/run installs it)")
    makers = {
        "ct": _ct_labels,
        "no_tumor": lambda v: _ct_labels(v, tumor=False),
        "empty": lambda v: np.zeros(v.shape, np.uint8),
    }
    _, labels, nifti, seg_path = _write(tmp_path, folder, makers[which])
    errors, _ = _dciodvfy(seg_path)
    assert errors == []
    # An empty segment (or an empty mask) still reads back as zeros, frame by frame.
    seg = hd.seg.segread(seg_path)
    np.testing.assert_array_equal(_seg_by_source(seg, _sources_in_normal_order(folder)), _nifti_frames(nifti))
    assert len(seg.SegmentSequence) == 2


def test_source_frames_are_the_nifti_layout(tmp_path):
    volume = load_ct(DICOM3)
    labels = _ct_labels(volume)
    nifti = save_mask(tmp_path / "m.nii.gz", labels, like=volume)
    np.testing.assert_array_equal(source_frames(labels, volume), _nifti_frames(nifti))


# ------------------------------------------------------------------------------------------------
# Refusals
# ------------------------------------------------------------------------------------------------
def test_writer_refuses_a_nifti_input_and_bad_labels(tmp_path, lits_small):
    hu, _ = lits_small
    array_volume = CTVolume.from_array(hu, spacing=(5.0, 5.3, 5.3))
    with pytest.raises(ValueError, match=r"DICOM series as input"):
        write_dicom_seg(tmp_path / "s.dcm", np.zeros(hu.shape, np.uint8), array_volume)
    volume = load_ct(DICOM3)
    with pytest.raises(ValueError, match=r"labels must have the CT's shape"):
        write_dicom_seg(tmp_path / "s.dcm", np.zeros((1, 2, 3), np.uint8), volume)
    with pytest.raises(ValueError, match=r"0, 1 or 2"):
        write_dicom_seg(tmp_path / "s.dcm", np.full(volume.shape, 3, np.uint8), volume)
    with pytest.raises(TypeError, match=r"integer or bool"):
        write_dicom_seg(tmp_path / "s.dcm", np.zeros(volume.shape, np.float32), volume)
    with pytest.raises(ValueError, match=r"model_sha256"):
        write_dicom_seg(tmp_path / "s.dcm", np.zeros(volume.shape, np.uint8), volume, model_sha256="xyz")
    assert not any(tmp_path.iterdir())


def _copy_series(tmp_path: Path, edit=None) -> Path:
    folder = tmp_path / "series"
    folder.mkdir()
    for src in sorted(DICOM3.iterdir()):
        ds = pydicom.dcmread(src)
        if edit is not None:
            edit(ds)
        ds.save_as(folder / src.name)
    return folder


def test_series_without_instance_uids_gets_no_seg(tmp_path):
    def blank(ds):
        ds.SOPInstanceUID = ""

    volume = load_ct(_copy_series(tmp_path, blank))
    with pytest.raises(ValueError, match=r"lack SOPInstanceUID"):
        write_dicom_seg(tmp_path / "s.dcm", np.zeros(volume.shape, np.uint8), volume)
    assert mask_outputs("auto", volume) == (True, False)
    with pytest.raises(ValueError, match=r"mask_format='both'.*lack SOPInstanceUID"):
        mask_outputs("both", volume)


def test_a_changed_source_file_is_refused(tmp_path):
    folder = _copy_series(tmp_path)
    volume = load_ct(folder)
    first = sorted(folder.iterdir())[0]
    ds = pydicom.dcmread(first)
    ds.SOPInstanceUID = hd.UID()
    ds.save_as(first)
    with pytest.raises(ValueError, match=r"changed since the series was read"):
        write_dicom_seg(tmp_path / "s.dcm", np.zeros(volume.shape, np.uint8), volume)


def test_multiframe_enhanced_ct_is_refused_with_a_clear_message(tmp_path):
    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    sources = [pydicom.dcmread(p) for p in sorted(DICOM3.iterdir())]
    for ds in sources:  # highdicom refuses the source's empty character set and warns on its one-part name
        if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
            del ds.SpecificCharacterSet
        ds.PatientName = "Doe^Jane"
    multi = LegacyConvertedEnhancedCTImage(
        legacy_datasets=sources,
        series_instance_uid=hd.UID(),
        series_number=9,
        sop_instance_uid=hd.UID(),
        instance_number=1,
    )
    folder = tmp_path / "enhanced"
    folder.mkdir()
    multi.save_as(folder / "ct.dcm")
    with pytest.raises(ValueError, match=r"ct\.dcm is a multi-frame image .*3 frames.*single-frame"):
        load_ct(folder)


# ------------------------------------------------------------------------------------------------
# Report: study, series and each lesion's widest slice
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("folder", SERIES)
def test_report_names_the_study_series_and_each_lesions_widest_slice(folder):
    volume = load_ct(folder)
    datasets = _sources_in_normal_order(folder)
    n = len(datasets)
    labels = np.zeros(volume.shape, np.uint8)
    labels[:, 100:400, 100:400] = 1
    # Lesion A: widest on the last source slice; lesion B: widest on the first. Built in source order (the
    # NIfTI layout), then brought to the canonical grid by the reader's own mapping.
    frames = np.zeros((n, volume.geometry.shape[1], volume.geometry.shape[0]), np.uint8)  # (k, row, column)
    frames[:, 150:160, 150:160] = 2
    frames[n - 1, 145:165, 145:165] = 2
    frames[:, 300:305, 300:305] = 2
    frames[0, 295:310, 295:310] = 2
    tumor = volume.geometry.to_canonical(frames.transpose(2, 1, 0)) == 2
    labels[tumor] = 2
    stats = kernels.lesion_stats(labels, connectivity=26)
    lesions = build_lesions(stats, volume=volume)
    assert len(lesions) == 2
    result = Result(
        labels=labels,
        volume=volume,
        lesions=lesions,
        liver_volume_ml=1.0,
        tumor_volume_ml=0.1,
        tumor_burden=0.1,
    )
    report = json.loads(json.dumps(result.to_report()))
    assert report["study_instance_uid"] == datasets[0].StudyInstanceUID
    assert report["series_instance_uid"] == datasets[0].SeriesInstanceUID
    # Lesion A (the larger) is widest on the last source slice, lesion B on the first.
    assert sorted(les.voxels for les in lesions) == [25 * n + 200, 100 * n + 300]
    a, b = sorted(report["lesions"], key=lambda entry: -entry["voxels"])
    assert a["largest_slice"] == n - 1
    assert a["largest_slice_sop_instance_uid"] == datasets[n - 1].SOPInstanceUID
    assert b["largest_slice"] == 0 and b["largest_slice_sop_instance_uid"] == datasets[0].SOPInstanceUID


# ------------------------------------------------------------------------------------------------
# Segmenter and resunet-seg
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def segmenter(onnx_fp32):
    with Segmenter(model=onnx_fp32, device="cpu", backend="onnxruntime", batch_size=16) as seg:
        yield seg


@pytest.mark.parametrize("folder", SERIES)
def test_segment_files_writes_a_seg_equal_to_its_nifti_mask(segmenter, tmp_path, folder, onnx_fp32):
    (outcome,) = segmenter.segment_files([folder], tmp_path)
    assert outcome.ok, outcome.error
    name = folder.name
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == [f"{name}_mask.nii.gz", f"{name}_report.json", f"{name}_seg.dcm"]
    datasets = _sources_in_normal_order(folder)
    seg = hd.seg.segread(outcome.outputs["dicom_seg"])
    np.testing.assert_array_equal(_seg_by_source(seg, datasets), _nifti_frames(outcome.outputs["mask"]))
    import hashlib

    sha = hashlib.sha256(Path(onnx_fp32).read_bytes()).hexdigest()
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert f"model_sha256={sha}" in algorithm.AlgorithmParameters
    report = json.loads(outcome.outputs["report"].read_text())
    assert report["series_instance_uid"] == datasets[0].SeriesInstanceUID
    uids = {ds.SOPInstanceUID for ds in datasets}
    assert all(les["largest_slice_sop_instance_uid"] in uids for les in report["lesions"])


def test_mask_format_choices(segmenter, tmp_path, lits_small):
    import nibabel as nib

    with pytest.raises(ValueError, match=r"mask_format must be one of"):
        segmenter.segment_files([DICOM3], tmp_path, mask_format="dicom")
    (only_seg,) = segmenter.segment_files([DICOM3], tmp_path / "a", mask_format="dicom-seg", report=False)
    assert only_seg.ok and sorted(only_seg.outputs) == ["dicom_seg"]
    (only_nifti,) = segmenter.segment_files([DICOM3], tmp_path / "b", mask_format="nifti", report=False)
    assert only_nifti.ok and sorted(only_nifti.outputs) == ["mask"]
    nifti = tmp_path / "ct.nii.gz"
    hu = lits_small[0].transpose(2, 1, 0).astype(np.int16)
    nib.save(nib.Nifti1Image(hu, np.diag([-5.3, -5.3, 5.0, 1.0])), nifti)
    (auto,) = segmenter.segment_files([nifti], tmp_path / "c", report=False)
    assert auto.ok and sorted(auto.outputs) == ["mask"]
    (refused,) = segmenter.segment_files([nifti], tmp_path / "d", mask_format="both", report=False)
    assert not refused.ok and "DICOM series as input" in refused.error and "ct.nii.gz" in refused.error
    assert not any((tmp_path / "d").iterdir())


def test_cli_format_dicom_seg(onnx_fp32, tmp_path, capsys):
    from resunet_trt.cli.seg import main

    out = tmp_path / "out"
    args = ["--model", str(onnx_fp32), "--backend", "onnxruntime", "--device", "cpu", "--no-progress"]
    assert main([str(DICOM3), "-o", str(out), "--format", "dicom-seg", "--no-report", *args]) == 0
    assert [p.name for p in out.iterdir()] == ["series_seg.dcm"]
    assert "series_seg.dcm" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([str(DICOM3), "-o", str(out), "--format", "dcm", *args])
