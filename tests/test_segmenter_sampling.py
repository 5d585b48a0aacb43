"""Physical sampling in the Segmenter (pixel_mm, slice_mm from the model metadata), the lesion floor in mm³ and
test-time flip averaging, against hand-computed plans and independent references."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from resunet_trt.metadata import ModelMetadata
from resunet_trt.segmenter import Segmenter, volume_plan

LITS117 = Path(__file__).parent / "data" / "lits117_roi128" / "ct.nii.gz"


def test_plan_of_a_model_without_physical_sampling_is_the_whole_plane():
    meta = ModelMetadata(plane_size=(256, 256), context=3)
    plan = volume_plan(meta, (40, 512, 400), (5.0, 0.7, 0.7))
    assert plan.out_size == (256, 256) and plan.step is None and plan.origin is None and plan.slice_step == 1.0
    assert plan.kernel_mapping() == {}


def test_plan_of_a_physically_sampled_model_by_hand():
    meta = ModelMetadata(plane_size=(256, 256), context=3, pixel_mm=1.5, slice_mm=3.0,
                         model_config={"depth": 5})
    # 512 x 0.8 mm = 409.6 mm -> 273.07 pixels of 1.5 mm -> 274 -> 288 (a multiple of 2**5); centred.
    plan = volume_plan(meta, (10, 512, 300), (2.0, 0.8, 0.8))
    assert plan.out_size == (288, 256)  # 300 x 0.8 = 240 mm = 160 pixels: the 256 minimum
    assert plan.step == pytest.approx((1.875, 1.875))
    assert plan.origin[0] == pytest.approx(512 / 2 - 288 / 2 * 1.875)
    assert plan.origin[1] == pytest.approx(300 / 2 - 256 / 2 * 1.875)
    assert plan.slice_step == pytest.approx(1.5)
    # a 5 mm scan: context slices 3 mm apart are 0.6 slices apart
    assert volume_plan(meta, (10, 512, 512), (5.0, 0.8, 0.8)).slice_step == pytest.approx(0.6)


@pytest.fixture(scope="module")
def sampled_checkpoint(tmp_path_factory, trained_checkpoint) -> Path:
    """The tiny test model, declared to see 1.5 mm pixels and context slices 1.5 mm apart."""
    from resunet_trt.model import load_checkpoint, save_checkpoint

    model, meta = load_checkpoint(trained_checkpoint)
    d = meta.to_dict()
    d.update(pixel_mm=1.5, slice_mm=1.5, plane_size=[128, 128])
    path = tmp_path_factory.mktemp("sampled") / "sampled.pt"
    save_checkpoint(path, model, ModelMetadata.from_dict(d))
    return path


def _lits117(spacing: tuple[float, float, float], stride: int = 1):
    from resunet_trt import io as rio

    vol = rio.load_ct(LITS117)
    return np.ascontiguousarray(vol.hu[::stride, ::stride, ::stride]), tuple(s * stride for s in spacing)


def test_the_same_anatomy_at_two_spacings_gets_the_same_mask(sampled_checkpoint):
    """A scan and the same scan at half the resolution (twice the spacing) look alike to a physically sampled
    model: its masks agree in world space. Without physical sampling the second scan would be seen at half size."""
    fine, fine_spacing = _lits117((1.4, 1.4, 1.4))
    coarse, coarse_spacing = _lits117((1.4, 1.4, 1.4), stride=2)
    with Segmenter(model=sampled_checkpoint, device="cpu", backend="torch", batch_size=16, anatomy=False) as seg:
        a = seg.segment(fine, spacing=fine_spacing).labels
        b = seg.segment(coarse, spacing=coarse_spacing).labels
    a_on_coarse = a[::2, ::2, ::2]  # the fine mask at the coarse voxel centres
    assert a_on_coarse.shape == b.shape
    liver_a, liver_b = a_on_coarse >= 1, b >= 1
    dice = 2 * np.count_nonzero(liver_a & liver_b) / (np.count_nonzero(liver_a) + np.count_nonzero(liver_b))
    assert np.count_nonzero(liver_a) > 1000
    assert dice > 0.9, dice


def test_a_physically_sampled_model_takes_planes_larger_than_its_minimum(sampled_checkpoint):
    """A field of view wider than plane_size x pixel_mm grows the plane (here 224 mm at 1.5 mm: 150 px, rounded up
    to the network's multiple)."""
    hu, spacing = _lits117((1.75, 1.75, 1.75))
    with Segmenter(model=sampled_checkpoint, device="cpu", backend="torch", batch_size=16) as seg:
        plan = seg._plan(seg._as_volume(hu, spacing)[0])
        div = 2 ** seg.metadata.model_config["depth"]
        side = math.ceil(150 / div) * div
        assert side > 128 and plan.out_size == (side, side)
        result = seg.segment(hu, spacing=spacing)
        with pytest.raises(ValueError, match="multiples of"):
            seg.backend.check_batch(np.zeros((1, 3, 150, 160), np.float32))
    assert result.labels.shape == hu.shape and np.count_nonzero(result.labels) > 1000


def test_lesion_floor_is_a_volume(trained_checkpoint):
    with Segmenter(model=trained_checkpoint, device="cpu", backend="torch") as seg:
        from resunet_trt.io import CTVolume, canonical_affine

        for spacing in [(5.0, 0.8, 0.8), (1.0, 0.7, 0.7), (2.5, 2.5, 2.5)]:
            vol = CTVolume(hu=np.zeros((2, 4, 4), np.int16), spacing=spacing, affine=canonical_affine(spacing))
            want = math.ceil(65.0 / np.prod(spacing) - 1e-9)
            assert seg._lesion_floor(vol) == want
    with Segmenter(model=trained_checkpoint, device="cpu", backend="torch", min_lesion_voxels=7) as seg:
        assert seg._lesion_floor(vol) == 7
    with pytest.raises(ValueError, match="min_lesion_mm3"):
        Segmenter(model=trained_checkpoint, device="cpu", backend="torch", min_lesion_mm3=-1.0)


def test_tta_averages_the_logits_of_both_slice_orders(trained_checkpoint):
    import torch
    from resunet_trt.model import load_checkpoint

    model, _ = load_checkpoint(trained_checkpoint)
    batch = np.random.default_rng(0).random((4, 3, 128, 128), dtype=np.float32)
    with torch.no_grad():
        plain = model(torch.from_numpy(batch)).numpy()
        flipped = model(torch.from_numpy(np.ascontiguousarray(batch[:, ::-1]))).numpy()
    with Segmenter(model=trained_checkpoint, device="cpu", backend="torch", tta=True) as seg:
        got = np.asarray(seg._infer(batch), np.float32)
    np.testing.assert_allclose(got, (plain + flipped) / 2, rtol=1e-4, atol=1e-4)
    with Segmenter(model=trained_checkpoint, device="cpu", backend="torch", tta=True) as seg:
        result = seg.segment(*_lits117((1.0, 1.0, 1.0), stride=2)[:1], spacing=(2.0, 2.0, 2.0))
    assert result.info["tta"] is True and result.labels.max() >= 1
