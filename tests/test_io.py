"""CT and mask files: canonical orientation, geometry round trips, DICOM series checks, refusals, atomic writes."""

from __future__ import annotations

import itertools
import logging
import os
import random
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from resunet_trt import io, nifti
from resunet_trt.io import CTVolume, atomic_write, canonical_affine, load_ct, load_label, save_mask

NIFTI_CASES = [
    ("lits117_roi128", "label.nii.gz"),
    ("lits_small64", "label.nii.gz"),
    ("totalseg_abdomen3mm", "liver_pseudolabel.nii.gz"),
]


def _raw(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(path)
    return np.asanyarray(img.dataobj), img.affine


def _save(data: np.ndarray, affine: np.ndarray, path: Path, **header_fields) -> Path:
    img = nib.Nifti1Image(data, affine)
    for key, value in header_fields.items():
        img.header[key] = value
    nib.save(img, path)
    return path


def _ct_like(shape=(12, 10, 8), seed=0) -> np.ndarray:
    """A small int16 array with CT-like values: air, fat and soft tissue."""
    rng = np.random.default_rng(seed)
    return rng.integers(-1000, 300, size=shape).astype(np.int16)


@pytest.fixture(params=["isal", "zlib"])
def codec(request, monkeypatch):
    """Run a test with ISA-L gzip and with nibabel's own gzip."""
    if request.param == "zlib":
        monkeypatch.setattr(nifti, "_igzip", lambda: None)
    elif nifti._igzip() is None:
        pytest.skip("isal is not installed")
    return request.param


# ---------------------------------------------------------------------------------------------------------------------
# Canonical orientation and round trips on the real NIfTI cases
# ---------------------------------------------------------------------------------------------------------------------
def test_canonical_orientation_of_a_ras_file(data_dir):
    """An identity (RAS) affine: canonical = data transposed to (k, j, i), with j and i reversed."""
    path = data_dir / "lits117_roi128" / "ct.nii.gz"
    data, affine = _raw(path)
    assert np.allclose(affine, np.eye(4))
    vol = load_ct(path)
    expected = data.transpose(2, 1, 0)[:, ::-1, ::-1]
    np.testing.assert_array_equal(vol.hu, expected)
    assert vol.hu.dtype == np.int16 and vol.hu.flags.c_contiguous
    # Canonical voxel (d, h, w) is disk voxel (w', h', d) with w' = 127 - w, h' = 127 - h.
    for d, h, w in [(0, 0, 0), (5, 17, 99), (127, 127, 127)]:
        disk = np.array([127 - w, 127 - h, d, 1.0])
        np.testing.assert_allclose(vol.affine @ [d, h, w, 1.0], affine @ disk)
    assert vol.spacing == (1.0, 1.0, 1.0)
    assert nib.aff2axcodes(vol.affine) == ("S", "P", "L")


@pytest.mark.parametrize(("case", "label_file"), NIFTI_CASES)
def test_nifti_round_trip_keeps_geometry_and_labels(data_dir, tmp_path, codec, case, label_file):
    ct_path, label_path = data_dir / case / "ct.nii.gz", data_dir / case / label_file
    vol = load_ct(ct_path)
    labels = load_label(label_path, vol)
    assert labels.dtype == np.uint8 and labels.shape == vol.shape
    out = save_mask(tmp_path / "mask.nii.gz", labels, vol)

    written, source_label = nib.load(out), nib.load(label_path)
    ct_img = nib.load(ct_path)
    assert written.shape == ct_img.shape
    np.testing.assert_allclose(written.affine, ct_img.affine, atol=1e-5)
    assert written.get_data_dtype() == np.uint8
    assert int(written.header["sform_code"]) == int(ct_img.header["sform_code"])
    assert int(written.header["qform_code"]) == int(ct_img.header["qform_code"])
    np.testing.assert_array_equal(
        np.asanyarray(written.dataobj), np.rint(np.asanyarray(source_label.dataobj)).astype(np.uint8)
    )
    np.testing.assert_array_equal(load_label(out, vol), labels)


@pytest.mark.parametrize(("case", "label_file"), NIFTI_CASES)
def test_spacing_and_hu_match_the_file(data_dir, case, label_file):
    data, affine = _raw(data_dir / case / "ct.nii.gz")
    vol = load_ct(data_dir / case / "ct.nii.gz")
    zooms = np.linalg.norm(affine[:3, :3], axis=0)  # (i, j, k) voxel sizes
    np.testing.assert_allclose(vol.spacing, zooms[::-1])
    np.testing.assert_allclose(vol.voxel_volume_ml, np.prod(zooms) / 1000.0)
    np.testing.assert_array_equal(
        np.sort(vol.hu, axis=None), np.sort(np.clip(data, -32768, 32767), axis=None)
    )


def _reorient_on_disk(data: np.ndarray, affine: np.ndarray, perm, flips) -> tuple[np.ndarray, np.ndarray]:
    """Permute then flip the stored axes, adjusting the affine so each voxel keeps its world position."""
    new = np.transpose(data, perm)
    new_affine = affine.copy()
    new_affine[:, :3] = affine[:, list(perm)]
    for axis in flips:
        n = new.shape[axis]
        new = np.flip(new, axis=axis)
        new_affine[:, 3] += new_affine[:, axis] * (n - 1)
        new_affine[:, axis] *= -1.0
    return np.ascontiguousarray(new), new_affine


@pytest.mark.parametrize(
    ("perm", "flips"),
    [((0, 1, 2), (0,)), ((0, 1, 2), (1, 2)), ((2, 1, 0), ()), ((1, 2, 0), (0, 2)), ((2, 0, 1), (0, 1, 2))],
)
def test_reoriented_file_gives_the_same_canonical_volume(data_dir, tmp_path, perm, flips):
    case = data_dir / "lits_small64"
    data, affine = _raw(case / "ct.nii.gz")
    labels, _ = _raw(case / "label.nii.gz")
    moved, moved_affine = _reorient_on_disk(data, affine, perm, flips)
    moved_labels, _ = _reorient_on_disk(labels, affine, perm, flips)
    _save(moved, moved_affine, tmp_path / "ct.nii.gz")
    _save(moved_labels, moved_affine, tmp_path / "label.nii.gz")

    reference = load_ct(case / "ct.nii.gz")
    vol = load_ct(tmp_path / "ct.nii.gz")
    np.testing.assert_array_equal(vol.hu, reference.hu)
    np.testing.assert_allclose(vol.affine, reference.affine, atol=1e-4)
    assert vol.spacing == pytest.approx(reference.spacing)
    canonical_labels = load_label(tmp_path / "label.nii.gz", vol)
    np.testing.assert_array_equal(canonical_labels, load_label(case / "label.nii.gz", reference))

    # The mask goes back in the moved file's own layout.
    out = save_mask(tmp_path / "mask.nii", canonical_labels, vol)
    written = nib.load(out)
    assert written.shape == moved.shape
    np.testing.assert_allclose(written.affine, moved_affine, atol=1e-4)
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), moved_labels)


def test_oblique_affine_keeps_exact_world_positions(tmp_path):
    data = _ct_like((10, 12, 14))
    angle = np.radians(12.0)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.7, 0.9, 2.5])
    affine[:3, 3] = [10.0, -20.0, 30.0]
    vol = load_ct(_save(data, affine, tmp_path / "oblique.nii.gz"))
    # Every canonical voxel maps to the same world point as the disk voxel holding the same value.
    for d, h, w in itertools.product(
        range(0, vol.shape[0], 3), range(0, vol.shape[1], 4), range(0, vol.shape[2], 5)
    ):
        world = vol.index_to_world([d, h, w])
        disk = np.linalg.solve(affine, np.append(world, 1.0))[:3]
        i, j, k = np.rint(disk).astype(int)
        np.testing.assert_allclose(disk, [i, j, k], atol=1e-6)
        assert vol.hu[d, h, w] == data[i, j, k]


@pytest.mark.parametrize(
    ("stored", "slope", "inter", "expected"),
    [
        (np.array([-1000, 0, 40, 1200], dtype=np.int16), 1.0, 0.0, [-1000, 0, 40, 1200]),
        (np.array([24, 1024, 1064, 2224], dtype=np.uint16), 1.0, -1024.0, [-1000, 0, 40, 1200]),
        (np.array([-500, 0, 20, 600], dtype=np.int16), 2.0, 0.0, [-1000, 0, 40, 1200]),
        (np.array([-1000.4, -0.6, 40.49, 1199.51], dtype=np.float32), 1.0, 0.0, [-1000, -1, 40, 1200]),
        (np.array([-1000.0, 0.0, 40.0, 40000.0], dtype=np.float64), 1.0, 0.0, [-1000, 0, 40, 32767]),
    ],
)
def test_hu_from_scaled_data_rounded_and_clipped(tmp_path, caplog, stored, slope, inter, expected):
    rng = np.random.default_rng(0)
    data = rng.choice(stored, size=(6, 7, 8))
    data[0, 0, :4] = stored  # every value present
    img = nib.Nifti1Image(data, np.eye(4))
    img.header.set_slope_inter(slope, inter)
    nib.save(img, tmp_path / "ct.nii.gz")
    with caplog.at_level(logging.WARNING, logger="resunet_trt.io"):
        vol = load_ct(tmp_path / "ct.nii.gz")
    lut = dict(zip(stored.tolist(), expected, strict=True))
    reference = np.vectorize(lut.get)(data).transpose(2, 1, 0)[:, ::-1, ::-1]
    np.testing.assert_array_equal(vol.hu, reference)
    assert ("clipped" in caplog.text) == (max(expected) == 32767)


def test_trailing_singleton_dimension_is_dropped(tmp_path):
    data = _ct_like((8, 9, 10))
    vol = load_ct(_save(data[..., None], np.eye(4), tmp_path / "ct4d1.nii.gz"))
    np.testing.assert_array_equal(vol.hu, data.transpose(2, 1, 0)[:, ::-1, ::-1])


# ---------------------------------------------------------------------------------------------------------------------
# DICOM
# ---------------------------------------------------------------------------------------------------------------------
pydicom = pytest.importorskip("pydicom")


def _dicom_reference(series_dir: Path):
    """(hu (n, rows, cols) sorted by z ascending, datasets) read straight with pydicom."""
    datasets = [pydicom.dcmread(p) for p in sorted(series_dir.iterdir())]
    datasets.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    hu = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in datasets])
    return hu, datasets


def test_dicom_series_loads_in_canonical_orientation(data_dir):
    series = data_dir / "dicom_ct3slice" / "series"
    vol = load_ct(series)
    ref, datasets = _dicom_reference(series)
    # Rows run anterior->posterior and columns patient right->left (IOP = [1,0,0, 0,1,0]): already canonical.
    assert vol.shape == (3, 512, 512)
    np.testing.assert_array_equal(vol.hu, ref.astype(np.int16))
    assert vol.hu.min() == -3024  # padding outside the field of view is kept
    row_spacing, col_spacing = (float(x) for x in datasets[0].PixelSpacing)
    assert vol.spacing == pytest.approx((1.0, row_spacing, col_spacing), rel=1e-6)
    assert vol.spacing[1] == pytest.approx(0.8105, abs=1e-3)
    # Voxel (0, 0, 0): the first pixel of the most inferior slice, LPS -> RAS.
    x, y, z = (float(v) for v in datasets[0].ImagePositionPatient)
    np.testing.assert_allclose(vol.index_to_world([0, 0, 0]), [-x, -y, z], atol=1e-4)
    np.testing.assert_allclose(
        vol.index_to_world([2, 511, 511]),
        [-x - 511 * col_spacing, -y - 511 * row_spacing, z + 2.0],
        atol=1e-3,
    )
    assert vol.meta["format"] == "dicom" and vol.meta["series_uid"] == datasets[0].SeriesInstanceUID


def test_dicom_matches_its_label_nifti(data_dir, tmp_path):
    folder = data_dir / "dicom_ct3slice"
    vol = load_ct(folder / "series")
    label_img = nib.load(folder / "label_liver1_spine2.nii.gz")
    np.testing.assert_allclose(vol.geometry.affine, label_img.affine, atol=1e-3)
    np.testing.assert_allclose(vol.index_to_world([0, 0, 0]), label_img.affine[:3, 3], atol=1e-3)
    labels = load_label(folder / "label_liver1_spine2.nii.gz", vol)  # 1 liver, 2 spine
    liver, spine = labels == 1, labels == 2
    _, _, w_liver = np.nonzero(liver)
    _, h_spine, w_spine = np.nonzero(spine)
    assert w_liver.mean() < 0.45 * vol.shape[2]  # the liver lies on the patient's right: small W
    assert abs(w_spine.mean() - vol.shape[2] / 2) < 0.05 * vol.shape[2]  # the spine is central
    assert h_spine.mean() > 0.6 * vol.shape[1]  # and posterior
    assert 20 < np.median(vol.hu[liver]) < 90  # non-contrast liver
    assert np.median(vol.hu[spine]) > 150
    out = save_mask(tmp_path / "mask.nii.gz", labels, vol)
    written = nib.load(out)
    assert written.shape == label_img.shape
    np.testing.assert_allclose(written.affine, label_img.affine, atol=1e-3)
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), np.asanyarray(label_img.dataobj))


def _make_series(data_dir: Path, folder: Path, positions, names=None, edit=None) -> Path:
    """Write a CT series with one slice per z position (mm), from the first file of the real series."""
    template = pydicom.dcmread(data_dir / "dicom_ct3slice" / "series" / "01.dcm")
    folder.mkdir(parents=True, exist_ok=True)
    for k, z in enumerate(positions):
        ds = template.copy()
        x, y, _ = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [f"{x:.6f}", f"{y:.6f}", f"{z:.6f}"]
        ds.InstanceNumber = k + 1
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.10.1.{k + 1}"
        if edit is not None:
            edit(k, ds)
        ds.save_as(folder / (names[k] if names else f"{k:03d}.dcm"))
    return folder


def test_dicom_file_order_does_not_matter(data_dir, tmp_path):
    positions = [-120.0 - k for k in range(5)]
    ordered = load_ct(_make_series(data_dir, tmp_path / "a", positions))
    names = [f"{name}.dcm" for name in ("q", "b", "x", "a", "m")]
    shuffled_positions = positions[:]
    random.Random(1).shuffle(shuffled_positions)
    shuffled = load_ct(_make_series(data_dir, tmp_path / "b", shuffled_positions, names=names))
    np.testing.assert_array_equal(ordered.hu, shuffled.hu)
    np.testing.assert_allclose(ordered.affine, shuffled.affine)
    assert ordered.index_to_world([0, 0, 0])[2] == pytest.approx(-124.0)
    assert ordered.spacing[0] == pytest.approx(1.0)


def test_dicom_with_a_missing_slice_is_refused(data_dir, tmp_path):
    folder = _make_series(data_dir, tmp_path / "gap", [-120.0 - k for k in range(6)])
    (folder / "003.dcm").unlink()
    with pytest.raises(ValueError, match=r"missing slices") as err:
        load_ct(folder)
    assert str(folder) in str(err.value)


def test_dicom_with_non_uniform_spacing_is_refused(data_dir, tmp_path):
    folder = _make_series(data_dir, tmp_path / "uneven", [-120.0, -121.0, -122.0, -123.3, -124.3, -125.3])
    with pytest.raises(ValueError, match=r"non-uniform slice spacing") as err:
        load_ct(folder)
    assert str(folder) in str(err.value)


def test_dicom_spacing_within_tolerance_is_accepted(data_dir, tmp_path):
    vol = load_ct(_make_series(data_dir, tmp_path / "ok", [-120.0, -121.0, -122.005, -123.0, -124.0]))
    assert vol.spacing[0] == pytest.approx(1.0, rel=1e-3)


def test_dicom_duplicate_positions_are_refused(data_dir, tmp_path):
    folder = _make_series(data_dir, tmp_path / "dup", [-120.0, -121.0, -121.0, -122.0])
    with pytest.raises(ValueError, match=r"share the slice position") as err:
        load_ct(folder)
    assert str(folder) in str(err.value)


def test_dicom_mixed_sizes_are_refused(data_dir, tmp_path):
    def shrink(k, ds):
        if k == 1:
            ds.PixelData = ds.pixel_array[:256, :256].tobytes()
            ds.Rows, ds.Columns = 256, 256

    folder = _make_series(data_dir, tmp_path / "sizes", [-120.0, -121.0, -122.0], edit=shrink)
    with pytest.raises(ValueError, match=r"mixed image sizes") as err:
        load_ct(folder)
    assert str(folder) in str(err.value)


def test_dicom_non_ct_modality_is_refused(data_dir, tmp_path):
    def to_mr(k, ds):
        ds.Modality = "MR"

    folder = _make_series(data_dir, tmp_path / "mr", [-120.0, -121.0], edit=to_mr)
    with pytest.raises(ValueError, match=r"not CT") as err:
        load_ct(folder)
    assert str(folder) in str(err.value)


def test_dicom_gantry_tilt_is_refused(data_dir, tmp_path):
    def tilt(k, ds):
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [f"{x:.6f}", f"{y + 0.3 * k:.6f}", f"{z:.6f}"]

    folder = _make_series(data_dir, tmp_path / "tilt", [-120.0, -121.0, -122.0], edit=tilt)
    with pytest.raises(ValueError, match=r"gantry tilt") as err:
        load_ct(folder)
    assert str(folder) in str(err.value)


def test_dicom_two_series_are_listed_and_one_can_be_picked(data_dir, tmp_path):
    def second_series(k, ds):
        if k >= 2:
            ds.SeriesInstanceUID = "1.2.3.4.5"
            x, y, z = (float(v) for v in ds.ImagePositionPatient)
            ds.ImagePositionPatient = [f"{x:.6f}", f"{y:.6f}", f"{z + 2.0:.6f}"]

    folder = _make_series(data_dir, tmp_path / "two", [-120.0, -121.0, -120.0, -121.0], edit=second_series)
    with pytest.raises(ValueError, match=r"2 DICOM series") as err:
        load_ct(folder)
    assert str(folder) in str(err.value) and "1.2.3.4.5" in str(err.value)
    picked = load_ct(folder, series_uid="1.2.3.4.5")
    assert picked.shape[0] == 2
    assert picked.index_to_world([0, 0, 0])[2] == pytest.approx(-119.0)


def test_dicom_folder_skips_other_files(data_dir, tmp_path):
    folder = _make_series(data_dir, tmp_path / "extra", [-120.0, -121.0, -122.0])
    (folder / "README.txt").write_text("not an image\n")
    (folder / "empty.bin").write_bytes(b"")
    assert load_ct(folder).shape == (3, 512, 512)


def test_single_dicom_file_asks_for_the_folder(data_dir):
    path = data_dir / "dicom_ct3slice" / "series" / "01.dcm"
    with pytest.raises(ValueError, match="folder") as err:
        load_ct(path)
    assert "01.dcm" in str(err.value)


def test_dicom_folder_without_images_is_refused(tmp_path):
    folder = tmp_path / "nothing"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello\n")
    with pytest.raises(ValueError, match=r"no DICOM images") as err:
        load_ct(folder)
    assert str(folder) in str(err.value)


def test_dicom_truncated_file_is_refused_naming_it(data_dir, tmp_path):
    folder = _make_series(data_dir, tmp_path / "trunc", [-120.0, -121.0, -122.0])
    raw = (folder / "001.dcm").read_bytes()
    (folder / "001.dcm").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError) as err:
        load_ct(folder)
    assert str(folder) in str(err.value) and "001.dcm" in str(err.value)


# ---------------------------------------------------------------------------------------------------------------------
# Files that are not CT volumes
# ---------------------------------------------------------------------------------------------------------------------
def _bad_file(tmp_path: Path, kind: str, data_dir: Path) -> tuple[Path, str]:
    """(path, message fragment) for each kind of bad input."""
    rng = np.random.default_rng(0)
    if kind == "empty":
        path = tmp_path / "empty_case.nii.gz"
        path.write_bytes(b"")
        return path, "empty file"
    if kind == "text":
        path = tmp_path / "notes_case.nii"
        path.write_text("this is not an image\n" * 50)
        return path, "cannot read"
    if kind == "corrupt_gz":
        path = tmp_path / "corrupt_case.nii.gz"
        path.write_bytes(rng.integers(0, 256, size=4096, dtype=np.uint8).tobytes())
        return path, "cannot read"
    if kind == "truncated":
        path = tmp_path / "truncated_case.nii.gz"
        raw = (data_dir / "lits_small64" / "ct.nii.gz").read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
        return path, "cannot read"
    if kind == "2d":
        return _save(_ct_like((32, 32, 1))[..., 0], np.eye(4), tmp_path / "flat_case.nii.gz"), "2-D image"
    if kind == "4d":
        return _save(_ct_like((8, 8, 8, 2)), np.eye(4), tmp_path / "series4d_case.nii.gz"), "4-D image"
    if kind == "zero_size":
        return _save(np.zeros((0, 8, 8), np.int16), np.eye(4), tmp_path / "zero_case.nii"), "empty image"
    if kind in ("nan", "inf"):
        data = _ct_like().astype(np.float32)
        data[3, 4, 5] = np.nan if kind == "nan" else np.inf
        return _save(data, np.eye(4), tmp_path / f"{kind}_case.nii.gz"), "NaN or Inf"
    if kind == "label_map":
        data = rng.integers(0, 3, size=(16, 16, 16)).astype(np.uint8)
        return _save(data, np.eye(4), tmp_path / "label_case.nii.gz"), "doesn't look like CT"
    if kind == "eight_bit":
        data = rng.integers(0, 256, size=(16, 16, 16)).astype(np.uint8)
        return _save(data, np.eye(4), tmp_path / "photo_case.nii.gz"), "no negative values"
    if kind == "few_values":
        data = rng.choice(np.array([-1000, 0, 60], dtype=np.int16), size=(16, 16, 16))
        return _save(data, np.eye(4), tmp_path / "mask_like_case.nii.gz"), "distinct values"
    if kind == "huge_values":
        data = _ct_like().astype(np.float32) * 1000.0
        return _save(data, np.eye(4), tmp_path / "scaled_case.nii.gz"), "doesn't look like CT"
    if kind == "singular_affine":
        header = nib.Nifti1Header()
        header.set_data_shape((12, 10, 8))
        header.set_data_dtype(np.int16)
        header["sform_code"], header["qform_code"] = 1, 0
        header["srow_x"], header["srow_y"], header["srow_z"] = [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]
        path = tmp_path / "singular_case.nii"
        nib.save(nib.Nifti1Image(_ct_like(), None, header=header), path)
        return path, "singular"
    raise AssertionError(kind)


BAD_KINDS = [
    "empty",
    "text",
    "corrupt_gz",
    "truncated",
    "2d",
    "4d",
    "zero_size",
    "nan",
    "inf",
    "label_map",
    "eight_bit",
    "few_values",
    "huge_values",
    "singular_affine",
]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_files_are_refused_naming_the_file(tmp_path, data_dir, kind):
    path, fragment = _bad_file(tmp_path, kind, data_dir)
    with pytest.raises(ValueError, match=re.escape(fragment)) as err:
        load_ct(path)
    assert path.name in str(err.value)


def test_missing_path_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_case"):
        load_ct(tmp_path / "no_such_case.nii.gz")


def test_path_of_wrong_type_raises_type_error():
    with pytest.raises(TypeError, match="path_or_dir"):
        load_ct(123)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def small_case(tmp_path):
    data = _ct_like((10, 12, 14))
    affine = np.diag([0.8, 0.9, 2.0, 1.0])
    ct = _save(data, affine, tmp_path / "ct.nii.gz")
    return load_ct(ct), data, affine


@pytest.mark.parametrize(
    ("kind", "fragment"),
    [
        ("shape", "shape"),
        ("affine", "affine differs"),
        ("value_3", "must be 0, 1 or 2"),
        ("negative", "must be 0, 1 or 2"),
        ("fractional", "fractional"),
        ("nan", "NaN"),
    ],
)
def test_bad_labels_are_refused_naming_the_file(tmp_path, small_case, kind, fragment):
    vol, data, affine = small_case
    labels = np.zeros(data.shape, dtype=np.float32)
    labels[2:5, 3:6, 4:7] = 1.0
    if kind == "shape":
        labels = labels[:, :, :-1]
    elif kind == "affine":
        affine = affine.copy()
        affine[0, 3] += 0.5
    elif kind == "value_3":
        labels[0, 0, 0] = 3
    elif kind == "negative":
        labels[0, 0, 0] = -1
    elif kind == "fractional":
        labels[0, 0, 0] = 0.5
    elif kind == "nan":
        labels[0, 0, 0] = np.nan
    path = _save(labels, affine, tmp_path / f"labels_{kind}.nii.gz")
    with pytest.raises(ValueError, match=re.escape(fragment)) as err:
        load_label(path, vol)
    assert path.name in str(err.value)


def test_float_labels_with_integer_values_are_accepted(tmp_path, small_case):
    vol, data, affine = small_case
    labels = np.zeros(data.shape, dtype=np.float64)
    labels[2:5, 3:6, 4:7] = 1.0
    labels[3, 4, 5] = 2.0
    got = load_label(_save(labels, affine, tmp_path / "float_labels.nii.gz"), vol)
    np.testing.assert_array_equal(got, labels.astype(np.uint8).transpose(2, 1, 0)[:, ::-1, ::-1])


# ---------------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------------
def test_save_mask_into_a_path_under_a_file_fails_naming_it(tmp_path, small_case):
    vol, _, _ = small_case
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    target = blocker / "mask.nii.gz"
    with pytest.raises(OSError) as err:
        save_mask(target, np.zeros(vol.shape, np.uint8), vol)
    assert str(target) in str(err.value)


def test_save_mask_into_a_missing_folder_fails_naming_it(tmp_path, small_case):
    vol, _, _ = small_case
    target = tmp_path / "no_such_dir" / "mask.nii.gz"
    with pytest.raises(FileNotFoundError) as err:
        save_mask(target, np.zeros(vol.shape, np.uint8), vol)
    assert str(target) in str(err.value)


@pytest.mark.parametrize("existing", [False, True])
def test_failed_write_leaves_no_partial_file(tmp_path, small_case, monkeypatch, codec, existing):
    vol, _, _ = small_case
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    target = out_dir / "mask.nii.gz"
    labels = np.zeros(vol.shape, np.uint8)
    if existing:
        save_mask(target, labels, vol)
    before = target.read_bytes() if existing else None

    def broken_to_file_map(self, file_map=None, **kwargs):
        holder = (file_map or self.file_map)["image"]
        with holder.get_prepare_fileobj("wb") as stream:
            stream.write(b"partial data")
        raise RuntimeError("disk full")

    monkeypatch.setattr(nib.Nifti1Image, "to_file_map", broken_to_file_map)
    with pytest.raises(RuntimeError, match="disk full"):
        save_mask(target, labels + 1, vol)
    assert sorted(p.name for p in out_dir.iterdir()) == (["mask.nii.gz"] if existing else [])
    if existing:
        assert target.read_bytes() == before


@pytest.mark.parametrize(
    ("labels", "error", "fragment"),
    [
        (np.zeros((10, 12, 13), np.uint8), ValueError, "shape"),
        (np.full((14, 12, 10), 3, np.uint8), ValueError, "0, 1 or 2"),
        (np.full((14, 12, 10), -1, np.int16), ValueError, "0, 1 or 2"),
        (np.zeros((14, 12, 10), np.float32), TypeError, "labels"),
        ([[0]], TypeError, "labels"),
    ],
)
def test_save_mask_refuses_bad_labels(tmp_path, small_case, labels, error, fragment):
    vol, _, _ = small_case
    with pytest.raises(error, match=fragment):
        save_mask(tmp_path / "mask.nii.gz", labels, vol)
    assert not (tmp_path / "mask.nii.gz").exists()


def test_save_mask_refuses_other_suffixes(tmp_path, small_case):
    vol, _, _ = small_case
    with pytest.raises(ValueError, match=r"mask\.png"):
        save_mask(tmp_path / "mask.png", np.zeros(vol.shape, np.uint8), vol)


def test_save_mask_accepts_bool_labels(tmp_path, small_case):
    vol, _, _ = small_case
    mask = np.zeros(vol.shape, bool)
    mask[1:3, 2:4, 3:5] = True
    out = save_mask(tmp_path / "mask.nii.gz", mask, vol)
    np.testing.assert_array_equal(load_label(out, vol), mask.astype(np.uint8))


def test_atomic_write_replaces_on_success(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    with atomic_write(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".json") and tmp != target
        tmp.write_text("new")
        assert target.read_text() == "old"
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_atomic_write_cleans_up_on_error(tmp_path):
    target = tmp_path / "mask.nii.gz"
    with pytest.raises(KeyError), atomic_write(target) as tmp:
        assert tmp.name.endswith(".nii.gz")
        tmp.write_bytes(b"half")
        raise KeyError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_new_file_gets_the_umask_mode(tmp_path):
    old = os.umask(0o027)
    try:
        with atomic_write(tmp_path / "a.txt") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640


# ---------------------------------------------------------------------------------------------------------------------
# Arrays
# ---------------------------------------------------------------------------------------------------------------------
def test_from_array_default_affine_is_canonical():
    hu = _ct_like((4, 5, 6))
    vol = CTVolume.from_array(hu, spacing=(2.5, 0.7, 0.8))
    np.testing.assert_array_equal(vol.hu, hu)
    assert nib.aff2axcodes(vol.affine) == ("S", "P", "L")
    # One step along d, h, w moves superior, posterior, patient-left by the spacing.
    np.testing.assert_allclose(vol.index_to_world([1, 0, 0]), [0, 0, 2.5])
    np.testing.assert_allclose(vol.index_to_world([0, 1, 0]), [0, -0.7, 0])
    np.testing.assert_allclose(vol.index_to_world([0, 0, 1]), [-0.8, 0, 0])
    np.testing.assert_allclose(canonical_affine((2.5, 0.7, 0.8), origin=(1, 2, 3))[:3, 3], [1, 2, 3])


def test_from_array_rounds_and_clips_floats():
    hu = np.array([-1000.6, -0.4, 40.5, 1e6], dtype=np.float64).reshape(1, 2, 2)
    vol = CTVolume.from_array(hu, spacing=(1, 1, 1))
    np.testing.assert_array_equal(vol.hu.ravel(), [-1001, 0, 40, 32767])  # rint: 40.5 -> 40 (half to even)


@pytest.mark.parametrize(
    ("hu", "kwargs", "error", "fragment"),
    [
        (np.full((2, 3, 4), np.nan, np.float32), {}, ValueError, "NaN"),
        (np.zeros((3, 4), np.int16), {}, ValueError, "hu"),
        (np.zeros((2, 3, 4), bool), {}, TypeError, "hu"),
        ([[[0]]], {}, TypeError, "hu"),
        (np.zeros((2, 3, 4), np.int16), {"spacing": (1.0, -1.0, 1.0)}, ValueError, "spacing"),
        (np.zeros((2, 3, 4), np.int16), {"affine": np.eye(4)}, ValueError, "affine"),
        (np.zeros((2, 3, 4), np.int16), {"affine": canonical_affine((2.0, 1.0, 1.0))}, ValueError, "spacing"),
        (np.zeros((2, 3, 4), np.int16), {"affine": np.eye(3)}, ValueError, "affine"),
    ],
)
def test_from_array_bad_input(hu, kwargs, error, fragment):
    args = {"spacing": (1.0, 1.0, 1.0)} | kwargs
    with pytest.raises(error, match=fragment):
        CTVolume.from_array(hu, **args)


def test_mask_of_an_array_volume_round_trips(tmp_path):
    hu = _ct_like((6, 7, 8))
    vol = CTVolume.from_array(hu, spacing=(3.0, 0.9, 0.9))
    labels = (hu > 0).astype(np.uint8)
    out = save_mask(tmp_path / "mask.nii.gz", labels, vol)
    written = nib.load(out)
    # Stored the NIfTI way: slices along k, so the file is (W, H, D) with the affine's columns swapped to match.
    assert written.shape == (8, 7, 6)
    np.testing.assert_allclose(written.affine, vol.affine[:, [2, 1, 0, 3]], atol=1e-6)
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), labels.transpose(2, 1, 0))
    np.testing.assert_array_equal(load_label(out, vol), labels)
    # Read back as CT, the array lands where it started.
    ct_path = tmp_path / "as_ct.nii"
    nib.save(nib.Nifti1Image(hu.transpose(2, 1, 0), written.affine), ct_path)
    again = load_ct(ct_path)
    np.testing.assert_array_equal(again.hu, hu)
    np.testing.assert_allclose(again.affine, vol.affine, atol=1e-6)


def test_big_endian_file_loads_to_native_int16(tmp_path):
    data = _ct_like((9, 8, 7))
    header = nib.Nifti1Header(endianness=">")
    nib.save(nib.Nifti1Image(data, np.eye(4), header=header), tmp_path / "big_endian.nii")
    assert nib.load(tmp_path / "big_endian.nii").header.endianness == ">"
    vol = load_ct(tmp_path / "big_endian.nii")
    assert vol.hu.dtype == np.dtype("=i2")
    np.testing.assert_array_equal(vol.hu, data.transpose(2, 1, 0)[:, ::-1, ::-1])


def test_a_label_stored_with_flipped_rows_is_reoriented_to_the_ct(tmp_path, data_dir):
    """The same voxels written in another axis direction (as some DICOM converters do) describe the same grid."""
    import nibabel as nib

    from resunet_trt import io as rio

    ct_path = data_dir / "totalseg_abdomen3mm" / "ct.nii.gz"
    vol = rio.load_ct(ct_path)
    rng = np.random.default_rng(3)
    disk_labels = rng.integers(0, 3, size=vol.geometry.shape).astype(np.uint8)
    same = tmp_path / "same.nii.gz"
    nib.save(nib.Nifti1Image(disk_labels, vol.geometry.affine), same)
    flipped_affine = vol.geometry.affine.copy()
    ny = disk_labels.shape[1]
    flipped_affine[:, 3] = vol.geometry.affine @ np.array([0.0, ny - 1, 0.0, 1.0])
    flipped_affine[:, 1] = -vol.geometry.affine[:, 1]
    flipped = tmp_path / "flipped.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(disk_labels[:, ::-1]), flipped_affine), flipped)
    want = rio.load_label(same, vol)
    np.testing.assert_array_equal(rio.load_label(flipped, vol), want)
    shifted_affine = flipped_affine.copy()
    shifted_affine[0, 3] += 5.0
    shifted = tmp_path / "shifted.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(disk_labels[:, ::-1]), shifted_affine), shifted)
    with pytest.raises(ValueError, match="affine differs"):
        rio.load_label(shifted, vol)


def test_organ_maps_load_with_a_larger_max_value(tmp_path, data_dir):
    import nibabel as nib

    from resunet_trt import io as rio

    vol = rio.load_ct(data_dir / "totalseg_abdomen3mm" / "ct.nii.gz")
    organs = np.zeros(vol.geometry.shape, np.uint8)
    organs[10:20, 10:20, 10:20] = 28
    path = tmp_path / "organs.nii.gz"
    nib.save(nib.Nifti1Image(organs, vol.geometry.affine), path)
    with pytest.raises(ValueError, match="0, 1 or 2"):
        rio.load_label(path, vol)
    got = rio.load_label(path, vol, max_value=255)
    assert got.dtype == np.uint8 and int(got.sum()) == 28 * 1000
