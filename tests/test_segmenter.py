"""The Segmenter end to end on the real CT: geometry, orientation, DICOM == NIfTI, bad inputs, atomic outputs.

The model is the tiny checkpoint trained on lits117_roi128 (tests/model_fixtures.py), exported to fp32 ONNX and
run with ONNX Runtime on the CPU (the reference runs the checkpoint in PyTorch); what is checked is the pipeline around it (the same network input whatever the file's
orientation, masks in the input's geometry, statistics consistent with the labels), against references
computed here with torch and scipy.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from resunet_trt.segmenter import (
    STAGES,
    Segmenter,
    case_name,
    cuda_status,
    resolve_device,
    slab_upload_needs,
    slabs,
)

LITS117 = Path(__file__).parent / "data" / "lits117_roi128" / "ct.nii.gz"
DICOM_SERIES = Path(__file__).parent / "data" / "dicom_ct3slice" / "series"


@pytest.fixture(scope="module")
def segmenter(onnx_fp32):
    with Segmenter(model=onnx_fp32, device="cpu", backend="onnxruntime", batch_size=8) as seg:
        yield seg


def write_liver_crop(path: Path, z0: int = 72, z1: int = 104) -> Path:
    """Slices z0:z1 of the real LiTS case 117 ROI (liver and many tumors on every slice) as a NIfTI file.

    The tiny fixture model was fitted to this case, so its masks have liver and tumor to compare: a test of
    geometry on a near-empty mask would prove nothing.
    """
    import nibabel as nib

    img = nib.load(LITS117)
    affine = img.affine.copy()
    affine[:3, 3] += affine[:3, 2] * z0  # the crop's first slice keeps its place in the world
    crop = nib.Nifti1Image(np.asanyarray(img.dataobj)[:, :, z0:z1], affine, img.header)
    crop.set_qform(affine, code=1)
    crop.set_sform(affine, code=1)
    nib.save(crop, path)
    return path


@pytest.fixture(scope="module")
def ct_file(tmp_path_factory) -> Path:
    return write_liver_crop(tmp_path_factory.mktemp("ct") / "ct.nii.gz")


@pytest.fixture()
def stub_segmenter(monkeypatch):
    """A Segmenter on the exact stand-in network: input checks need no trained model."""
    _use_exact_backend(monkeypatch)
    with Segmenter(device="cpu") as seg:
        yield seg


@pytest.fixture(scope="module")
def small_result(segmenter, ct_file):
    result = segmenter.segment(ct_file)
    counts = np.bincount(result.labels.ravel(), minlength=3)
    assert counts[1] > 10_000 and counts[2] > 1_000, f"the fixture model finds too little to compare: {counts}"
    return result


# ------------------------------------------------------------------------------------------------
# Pure helpers
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("depth", "batch", "expected"),
    [(0, 4, []), (1, 4, [(0, 1)]), (8, 4, [(0, 4), (4, 8)]), (9, 4, [(0, 4), (4, 8), (8, 9)]), (3, 1, [(0, 1), (1, 2), (2, 3)])],
)
def test_slabs_cover_the_volume_in_order(depth, batch, expected):
    assert slabs(depth, batch) == expected


@pytest.mark.parametrize(
    ("depth", "batch", "halo", "expected"),
    [
        (9, 4, 1, [1, 2, 2]),  # slab [0,4) reads slice 4 -> chunk 1; [4,8) reads 8 -> chunk 2; last clamps
        (9, 4, 0, [0, 1, 2]),
        (5, 1, 2, [2, 3, 4, 4, 4]),  # a halo wider than a slab reaches two chunks ahead
        (4, 8, 3, [0]),
    ],
)
def test_slab_upload_needs(depth, batch, halo, expected):
    assert slab_upload_needs(depth, batch, halo) == expected


@pytest.mark.parametrize(
    ("path", "name"),
    [("a/liver_3.nii.gz", "liver_3"), ("b/x.nii", "x"), ("c/series", "series"), ("c/series/", "series")],
)
def test_case_name(path, name):
    assert case_name(path) == name


def test_resolve_device_cpu_and_auto_here():
    assert resolve_device("cpu") == "cpu"
    ok, _ = cuda_status(0)
    assert resolve_device("auto") == ("cuda:0" if ok else "cpu")


@pytest.mark.parametrize("device", ["npu", "cuda:x", "cuda0", ""])
def test_resolve_device_rejects_bad_names(device):
    with pytest.raises(ValueError, match="device"):
        resolve_device(device)


def test_resolve_device_rejects_non_string():
    with pytest.raises(TypeError, match="device"):
        resolve_device(0)  # type: ignore[arg-type]


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:7"])
def test_explicit_cuda_without_cuda_is_an_error_with_reason(device):
    ok, reason = cuda_status(int(device.partition(":")[2] or 0))
    if ok:
        pytest.skip("CUDA is usable here")
    with pytest.raises(RuntimeError, match="CUDA") as info:
        resolve_device(device)
    assert reason in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"batch_size": 0}, "batch_size"), ({"min_lesion_voxels": -1}, "min_lesion_voxels"),
     ({"connectivity": 8}, "connectivity")],
)
def test_constructor_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Segmenter(device="cpu", **kwargs)


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------
def test_bare_array_without_spacing_is_an_error(stub_segmenter, lits_small):
    with pytest.raises(ValueError, match="spacing"):
        stub_segmenter.segment(lits_small[0])


@pytest.mark.parametrize("shape", [(64, 64), (2, 3, 16, 16)])
def test_array_of_wrong_dimension_is_an_error(stub_segmenter, shape):
    with pytest.raises(ValueError, match="3D"):
        stub_segmenter.segment(np.zeros(shape, np.int16), spacing=(1, 1, 1))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_array_with_nan_or_inf_is_an_error(stub_segmenter, bad):
    arr = np.zeros((4, 16, 16), np.float32)
    arr[1, 2, 3] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        stub_segmenter.segment(arr, spacing=(1, 1, 1))


@pytest.mark.parametrize("spacing", [(1, 1), (1, 0, 1), (1, -2, 1), (1, float("nan"), 1)])
def test_bad_spacing_is_an_error(stub_segmenter, spacing):
    with pytest.raises(ValueError, match="spacing"):
        stub_segmenter.segment(np.zeros((4, 16, 16), np.int16), spacing=spacing)


def test_unsupported_item_type_is_an_error(stub_segmenter):
    with pytest.raises(TypeError, match="item"):
        stub_segmenter.segment(42)


# ------------------------------------------------------------------------------------------------
# The pipeline against an independent reference
# ------------------------------------------------------------------------------------------------
def _reference_labels(checkpoint, hu, min_lesion_voxels=10, min_lesion_confidence=0.95):
    """torch forward + torch bilinear upsampling + argmax, then postprocessing with scipy."""
    import scipy.ndimage as ndi
    import torch
    import torch.nn.functional as F
    from resunet_trt import kernels
    from resunet_trt.model import load_checkpoint

    model, meta = load_checkpoint(checkpoint)
    x = kernels.preprocess(hu, window=meta.window, out_size=meta.plane_size, context=meta.context, dtype="float32")
    with torch.no_grad():
        logits = model(torch.from_numpy(np.asarray(x, np.float32)))
        up = F.interpolate(logits, size=hu.shape[1:], mode="bilinear", align_corners=False)
    raw = up.argmax(1).numpy().astype(np.uint8)
    structure = np.ones((3, 3, 3), bool)
    comp, n = ndi.label(raw >= 1, structure=structure)
    out = np.zeros_like(raw)
    if n:
        sizes = np.bincount(comp.ravel())
        sizes[0] = 0
        keep = comp == sizes.argmax()
        out[keep] = raw[keep]
        tumor, _ = ndi.label(out == 2, structure=structure)
        small = np.isin(tumor, np.flatnonzero(np.bincount(tumor.ravel()) < min_lesion_voxels))
        out[small & (tumor > 0)] = 1
        # Lesion confidence floor: a lesion stays tumor only if one of its voxels' nearest network pixels has a
        # tumor softmax >= min_lesion_confidence (the whole-plane mapping: (Y + 0.5) * h / H - 0.5, rounded).
        sure = (torch.softmax(logits, dim=1)[:, 2] >= min_lesion_confidence).numpy()
        h, w = sure.shape[1:]
        rows = np.clip(np.rint((np.arange(hu.shape[1]) + 0.5) * h / hu.shape[1] - 0.5), 0, h - 1).astype(int)
        cols = np.clip(np.rint((np.arange(hu.shape[2]) + 0.5) * w / hu.shape[2] - 0.5), 0, w - 1).astype(int)
        tumor, n_tumor = ndi.label(out == 2, structure=structure)
        for i in range(1, n_tumor + 1):
            z, y, x = np.nonzero(tumor == i)
            if not sure[z, rows[y], cols[x]].any():
                out[tumor == i] = 1
    return raw, out


def test_labels_match_torch_and_scipy_reference(segmenter, small_result, trained_checkpoint):
    hu = small_result.volume.hu
    raw, expected = _reference_labels(trained_checkpoint, hu)
    assert (raw >= 1).any(), "the fixture model finds no liver: the comparison would prove nothing"
    got = small_result.labels
    assert got.dtype == np.uint8 and got.shape == hu.shape
    # The fused bilinear + argmax may break near-ties differently from torch's float path.
    assert np.mean(got == expected) > 0.999


def test_result_volumes_follow_from_labels(small_result):
    r = small_result
    voxel_ml = float(np.prod(r.volume.spacing)) / 1000
    assert r.liver_volume_ml == pytest.approx(np.count_nonzero(r.labels >= 1) * voxel_ml)
    assert r.tumor_volume_ml == pytest.approx(np.count_nonzero(r.labels == 2) * voxel_ml)
    assert sum(les.voxels for les in r.lesions) == np.count_nonzero(r.labels == 2)
    expected_burden = r.tumor_volume_ml / r.liver_volume_ml if r.liver_volume_ml else 0.0
    assert r.tumor_burden == pytest.approx(expected_burden)
    assert set(STAGES) <= set(r.timings)
    assert all(v >= 0 for v in r.timings.values())
    assert r.timings["read"] > 0 and r.timings["upload"] == 0.0  # a file was read; no upload on the CPU


@pytest.mark.parametrize("batch_size", [3, 64])
def test_slab_size_does_not_change_labels(onnx_fp32, small_result, batch_size):
    with Segmenter(model=onnx_fp32, device="cpu", backend="onnxruntime", batch_size=batch_size) as seg:
        got = seg.segment(small_result.volume).labels
    np.testing.assert_array_equal(got, small_result.labels)


def test_array_ctvolume_and_path_give_the_same_labels(segmenter, small_result):
    vol = small_result.volume
    from_array = segmenter.segment(vol.hu, spacing=vol.spacing)
    from_volume = segmenter.segment(vol)
    np.testing.assert_array_equal(from_array.labels, small_result.labels)
    np.testing.assert_array_equal(from_volume.labels, small_result.labels)
    assert from_volume.timings["read"] == 0.0


def test_segment_batch_keeps_order(segmenter, small_result, ct_file):
    vol = small_result.volume
    upside_down = np.ascontiguousarray(vol.hu[::-1])
    results = segmenter.segment_batch([(upside_down, vol.spacing), ct_file, vol])
    np.testing.assert_array_equal(results[1].labels, small_result.labels)
    np.testing.assert_array_equal(results[2].labels, small_result.labels)
    assert results[1].timings["read"] > 0 and results[2].timings["read"] == 0.0
    assert results[0].labels.shape == vol.hu.shape
    assert not np.array_equal(results[0].labels, small_result.labels)


def test_segment_batch_stops_at_a_bad_file_naming_it(segmenter, ct_file, tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"")
    with pytest.raises(ValueError, match="broken.nii.gz"):
        segmenter.segment_batch([ct_file, bad, ct_file])


# ------------------------------------------------------------------------------------------------
# Files and geometry
# ------------------------------------------------------------------------------------------------
def _reoriented_copy(src: Path, dst: Path) -> None:
    """Write ``src`` flipped along x and with x/z transposed on disk, the affine adjusted (same world)."""
    import nibabel as nib

    img = nib.load(src)
    data = np.asanyarray(img.dataobj)
    affine = img.affine.copy()
    nx = data.shape[0]
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1, nx - 1  # new i = nx - 1 - old i
    data, affine = data[::-1], affine @ flip
    swap = np.eye(4)[[2, 1, 0, 3]].T  # columns 0 and 2 swapped
    data, affine = data.transpose(2, 1, 0), affine @ swap
    out = nib.Nifti1Image(np.ascontiguousarray(data), affine, img.header)
    out.set_qform(affine, code=1)
    out.set_sform(affine, code=1)
    nib.save(out, dst)


def _canonical(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    img = nib.as_closest_canonical(nib.load(path))
    return np.asanyarray(img.dataobj), img.affine


def test_mask_file_has_the_input_geometry(segmenter, tmp_path, ct_file):
    import nibabel as nib

    (outcome,) = segmenter.segment_files([ct_file], tmp_path, report=False)
    assert outcome.ok, outcome.error
    src, mask = nib.load(ct_file), nib.load(outcome.outputs["mask"])
    assert outcome.outputs["mask"].name == "ct_mask.nii.gz"
    assert mask.shape == src.shape
    np.testing.assert_allclose(mask.affine, src.affine, atol=1e-5)
    assert np.asanyarray(mask.dataobj).dtype == np.uint8
    assert set(np.unique(np.asanyarray(mask.dataobj))) <= {0, 1, 2}


def test_flipped_transposed_copy_gives_the_same_mask_in_world_space(segmenter, tmp_path, ct_file):
    import nibabel as nib

    moved = tmp_path / "moved.nii.gz"
    _reoriented_copy(ct_file, moved)
    assert nib.load(moved).shape != nib.load(ct_file).shape  # the copy really is laid out differently
    outcomes = segmenter.segment_files([ct_file, moved], tmp_path / "out", report=False)
    assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    assert np.bincount(outcomes[0].result.labels.ravel(), minlength=3)[1:].min() > 1_000  # liver and tumor
    np.testing.assert_array_equal(outcomes[0].result.labels, outcomes[1].result.labels)
    a, a_aff = _canonical(outcomes[0].outputs["mask"])
    b, b_aff = _canonical(outcomes[1].outputs["mask"])
    np.testing.assert_allclose(a_aff, b_aff, atol=1e-5)
    np.testing.assert_array_equal(a, b)
    assert nib.load(outcomes[1].outputs["mask"]).shape == nib.load(moved).shape


def test_lesion_centroids_are_in_the_input_files_world(segmenter, tmp_path, ct_file):
    """Centroids in mm equal the tumor voxels of the written mask mapped through the input file's own affine."""
    import nibabel as nib

    moved = tmp_path / "moved.nii.gz"
    _reoriented_copy(ct_file, moved)
    (outcome,) = segmenter.segment_files([moved], tmp_path / "out", report=True)
    assert outcome.ok, outcome.error
    lesions = outcome.summary["lesions"]
    assert lesions
    disk = np.asanyarray(nib.load(outcome.outputs["mask"]).dataobj)
    ijk = np.argwhere(disk == 2)
    affine = nib.load(moved).affine
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    # The voxel-weighted mean of the lesion centroids is the mean of all tumor voxels (a linear map).
    weights = np.array([les["voxels"] for les in lesions], dtype=np.float64)
    centroids = np.array([les["centroid_world_mm"] for les in lesions])
    assert weights.sum() == len(ijk)
    np.testing.assert_allclose(weights @ centroids / weights.sum(), world.mean(axis=0), atol=1e-6)


def test_dicom_series_and_its_nifti_conversion_give_the_same_mask(segmenter, tmp_path):
    import nibabel as nib
    from resunet_trt.io import load_ct

    volume = load_ct(DICOM_SERIES)
    converted = tmp_path / "converted.nii.gz"
    # CTVolume.affine maps (d, h, w) indices to RAS mm, so the canonical array with it is a valid NIfTI.
    img = nib.Nifti1Image(np.ascontiguousarray(volume.hu), np.asarray(volume.affine, np.float64))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    nib.save(img, converted)
    outcomes = segmenter.segment_files([DICOM_SERIES, converted], tmp_path / "out", report=True)
    assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    dicom, nifti = (o.result for o in outcomes)
    np.testing.assert_array_equal(dicom.volume.hu, nifti.volume.hu)
    assert np.count_nonzero(dicom.labels) > 1_000
    np.testing.assert_array_equal(dicom.labels, nifti.labels)
    a, a_aff = _canonical(outcomes[0].outputs["mask"])
    b, b_aff = _canonical(outcomes[1].outputs["mask"])
    np.testing.assert_allclose(a_aff, b_aff, atol=1e-3)
    np.testing.assert_array_equal(a, b)


def test_segment_files_writes_report_and_overlay(segmenter, tmp_path, ct_file):
    import json

    from PIL import Image

    (outcome,) = segmenter.segment_files([ct_file], tmp_path, overlay=True, report=True)
    assert outcome.ok, outcome.error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct_mask.nii.gz", "ct_overlay.png", "ct_report.json"]
    report = json.loads(outcome.outputs["report"].read_text())
    assert report["case"] == "ct"
    assert report["lesion_count"] == len(outcome.result.lesions)
    assert report["liver_volume_ml"] == pytest.approx(outcome.result.liver_volume_ml)
    with Image.open(outcome.outputs["overlay"]) as im:
        assert im.format == "PNG"
    assert outcome.result.timings["write"] > 0


def test_same_case_names_do_not_overwrite_each_other(segmenter, tmp_path, ct_file):
    other = tmp_path / "other"
    other.mkdir()
    (other / "ct.nii.gz").write_bytes(ct_file.read_bytes())
    outcomes = segmenter.segment_files([ct_file, other / "ct.nii.gz"], tmp_path / "out", report=False)
    assert [o.outputs["mask"].name for o in outcomes] == ["ct_mask.nii.gz", "ct_2_mask.nii.gz"]


# ------------------------------------------------------------------------------------------------
# Bad inputs and failed writes
# ------------------------------------------------------------------------------------------------
def _write_nifti(path: Path, data: np.ndarray) -> Path:
    import nibabel as nib

    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path


def _bad_input(kind: str, tmp_path: Path) -> Path:
    if kind == "not_a_ct":
        path = tmp_path / "notes.nii.gz"
        path.write_text("this is not an image\n")
    elif kind == "image_2d":
        path = _write_nifti(tmp_path / "slice2d.nii.gz", np.zeros((32, 32), np.int16))
    elif kind == "image_4d":
        path = _write_nifti(tmp_path / "series4d.nii.gz", np.zeros((16, 16, 4, 3), np.int16))
    elif kind in ("nan", "inf"):
        data = np.zeros((16, 16, 4), np.float32)
        data[3, 4, 1] = np.nan if kind == "nan" else np.inf
        path = _write_nifti(tmp_path / f"with_{kind}.nii.gz", data)
    elif kind == "empty_file":
        path = tmp_path / "empty.nii.gz"
        path.write_bytes(b"")
    elif kind == "folder_without_images":
        path = tmp_path / "junk_folder"
        path.mkdir()
        (path / "readme.txt").write_text("no DICOM here\n")
    elif kind == "missing":
        path = tmp_path / "does_not_exist.nii.gz"
    else:  # pragma: no cover
        raise AssertionError(kind)
    return path


BAD_KINDS = ["not_a_ct", "image_2d", "image_4d", "nan", "inf", "empty_file", "folder_without_images", "missing"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_input_fails_naming_the_file(stub_segmenter, tmp_path, kind):
    path = _bad_input(kind, tmp_path)
    with pytest.raises((ValueError, TypeError, OSError)) as info:
        stub_segmenter.segment(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_file_is_skipped_and_the_others_go_on(segmenter, tmp_path, kind, ct_file):
    bad = _bad_input(kind, tmp_path)
    outcomes = segmenter.segment_files([bad, ct_file], tmp_path / "out", report=True)
    assert [o.ok for o in outcomes] == [False, True]
    assert str(bad) in outcomes[0].error
    assert outcomes[0].result is None and outcomes[0].outputs == {}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ct_mask.nii.gz", "ct_report.json"]


def test_failing_mask_write_leaves_no_partial_file(segmenter, tmp_path, monkeypatch, ct_file):
    out = tmp_path / "out"
    real_replace = os.replace

    def broken_replace(src, dst):
        if str(dst).endswith("_mask.nii.gz"):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", broken_replace)
    (outcome,) = segmenter.segment_files([ct_file], out, report=True)
    monkeypatch.undo()
    assert not outcome.ok
    assert "No space left" in outcome.error and str(ct_file) in outcome.error
    assert list(out.iterdir()) == []  # neither the mask, nor a temporary file, nor a report of a failed case


def test_failing_report_write_removes_the_cases_mask_too(segmenter, tmp_path, monkeypatch, ct_file):
    from resunet_trt import report

    def broken_write(path, rep):
        raise OSError(5, f"cannot write {path}: Input/output error")

    monkeypatch.setattr(report, "write_report", broken_write)
    out = tmp_path / "out"
    (outcome,) = segmenter.segment_files([ct_file], out, report=True)
    assert not outcome.ok and "Input/output error" in outcome.error
    assert outcome.outputs == {}
    assert list(out.iterdir()) == []


# ------------------------------------------------------------------------------------------------
# GPU
# ------------------------------------------------------------------------------------------------
class _ExactBackend:
    """A stand-in network whose logits are exact in floating point (power-of-two weights) on both devices.

    It isolates the pipeline (slabs, halos, pinned uploads, streams, decoding, postprocessing) from the
    rounding differences of real convolutions on different devices.
    """

    name = "torch"
    input_dtype = np.dtype(np.float32)

    def __init__(self, metadata, device):
        self.metadata, self.device = metadata, device
        self.precision = metadata.precision

    def infer(self, batch):
        from resunet_trt._device import as_cupy, is_cuda_array

        if is_cuda_array(batch):
            import cupy as xp

            x = as_cupy(batch)
        else:
            xp, x = np, np.asarray(batch)
        k = x.shape[1] // 2
        centre, before, after = x[:, k], x[:, 0], x[:, -1]
        logits = xp.stack([0.5 - centre, centre - 0.25 + 0.125 * (before - after), 2.0 * centre - 1.0], axis=1)
        # x16 (exact): the same argmax, and bright enough pixels sure of tumor, so the lesion confidence floor
        # (softmax >= 0.95 somewhere in a lesion) keeps some lesions and removes others.
        return xp.ascontiguousarray((16.0 * logits).astype(xp.float32))

    def close(self):
        pass


def _use_exact_backend(monkeypatch, plane_size=(48, 40), context=5):
    from resunet_trt import backends
    from resunet_trt.metadata import ModelMetadata

    meta = ModelMetadata(plane_size=plane_size, context=context, window=(-100.0, 200.0))
    monkeypatch.setattr(
        backends,
        "open_backend",
        lambda model, *, backend, device, **options: _ExactBackend(meta, device),
        raising=False,
    )


@pytest.fixture()
def exact_backend(monkeypatch):
    _use_exact_backend(monkeypatch)


@pytest.mark.parametrize("batch_size", [1, 2, 3, 40])
def test_slabs_and_halos_do_not_change_labels(exact_backend, lits_small, batch_size):
    """Context 5 reaches two slices past each slab: any slab size gives the labels of one big slab."""
    hu = lits_small[0]
    with Segmenter(device="cpu", batch_size=64, min_lesion_voxels=3) as seg:
        expected = seg.segment(hu, spacing=(5.0, 5.3, 5.3))
    with Segmenter(device="cpu", batch_size=batch_size, min_lesion_voxels=3) as seg:
        got = seg.segment(hu, spacing=(5.0, 5.3, 5.3))
    assert (expected.labels == 1).any() and (expected.labels == 2).any()
    np.testing.assert_array_equal(got.labels, expected.labels)


@pytest.mark.gpu
@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_gpu_pipeline_equals_cpu_pipeline_exactly(exact_backend, lits_small, batch_size):
    """Same logits function on both devices: the GPU pipeline (pinned slabs, streams) gives the CPU's labels."""
    hu = lits_small[0]
    with Segmenter(device="cpu", batch_size=batch_size, min_lesion_voxels=3) as cpu:
        expected = cpu.segment(hu, spacing=(5.0, 5.3, 5.3))
    with Segmenter(device="cuda", batch_size=batch_size, min_lesion_voxels=3) as gpu:
        got = gpu.segment(hu, spacing=(5.0, 5.3, 5.3))
    assert (expected.labels == 2).any() and (expected.labels == 1).any()
    np.testing.assert_array_equal(got.labels, expected.labels)
    assert [les.to_dict() for les in got.lesions] == [les.to_dict() for les in expected.lesions]
    assert got.timings["upload"] > 0 and got.timings["download"] > 0


@pytest.mark.gpu
def test_gpu_path_with_a_real_model_matches_cpu(onnx_fp32, small_result):
    """The fp32 ONNX model through ONNX Runtime on both devices (cuDNN may round differently near ties)."""
    vol = small_result.volume
    with Segmenter(model=onnx_fp32, device="cpu", backend="onnxruntime", batch_size=8) as cpu:
        expected = cpu.segment(vol)
    with Segmenter(model=onnx_fp32, device="cuda", backend="onnxruntime", batch_size=8) as gpu:
        got = gpu.segment(vol)
    assert np.mean(got.labels == expected.labels) > 0.999


@pytest.mark.gpu
def test_gpu_memory_stays_bounded_for_many_slices(monkeypatch):
    """1,200 slices with a big network plane: device memory holds one slab of network tensors, not all of them.

    Net input + logits per slice are 8 x 512 x 512 float32 = 8.4 MB, so keeping them for every slice would take
    10 GB; the volume itself (int16 CT, uint8 labels, int32 component scratch) is about 60 MB.
    """
    import cupy as cp

    _use_exact_backend(monkeypatch, plane_size=(512, 512), context=5)
    hu = np.full((1200, 64, 64), -1000, np.int16)
    hu[200:1000, 10:50, 8:40] = 60
    hu[500:520, 20:30, 20:30] = 190
    pool = cp.get_default_memory_pool()
    pool.free_all_blocks()
    with Segmenter(device="cuda", batch_size=16) as gpu:
        result = gpu.segment(hu, spacing=(1.0, 1.0, 1.0))
    assert result.labels.shape == hu.shape
    assert (result.labels == 2).any()
    assert pool.total_bytes() < 1_000_000_000
