"""Training data from every kind of real source: case lists with label maps, spacing, slice ranges, weights and
negative cases; slice sets; physical sampling; synthetic tumors in the sampler; the liver-only loss; init_from."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from training.augment import AugmentConfig
from training.data import (
    Case,
    PreparedCase,
    Sampling,
    SamplingConfig,
    find_cases,
    load_case,
    prepare_case,
    read_case_list,
    resize_labels_nearest,
    sample_slices,
)
from training.losses import LossConfig, segmentation_loss
from training.synthetic_tumors import TumorConfig

DATA = Path(__file__).parent / "data"


def _write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_case_list_columns(tmp_path):
    ct = DATA / "totalseg_abdomen3mm" / "ct.nii.gz"
    label = DATA / "totalseg_abdomen3mm" / "liver_pseudolabel.nii.gz"
    csv = _write_csv(tmp_path / "cases.csv", (
        "image,label,kind,label_map,spacing,slices,weight\n"
        f"{ct},{label},liver_only,,,,2.5\n"
        f"{ct},,negative,,2 3 3,100:112,4\n"
        f"{ct},{label},full,1:1,,10:20,\n"
    ))
    specs = read_case_list(csv)
    assert [s.name for s in specs] == ["totalseg_abdomen3mm-1", "totalseg_abdomen3mm-2", "totalseg_abdomen3mm-3"]
    assert specs[0].kind == "liver_only" and specs[0].weight == 2.5
    assert specs[1].label is None and specs[1].spacing == (2.0, 3.0, 3.0) and specs[1].slices == (100, 112)
    assert specs[2].label_map == ((1, 1),) and specs[2].weight == 1.0

    negative = load_case(specs[1])
    assert negative.hu.shape[0] == 12 and negative.spacing == (2.0, 3.0, 3.0)
    assert negative.labels.shape == negative.hu.shape and not negative.labels.any()
    cropped = load_case(specs[2])
    whole = load_case(specs[0])
    np.testing.assert_array_equal(cropped.hu, whole.hu[10:20])
    np.testing.assert_array_equal(cropped.labels, whole.labels[10:20])


@pytest.mark.parametrize("row, message", [
    ("x.nii.gz,y.nii.gz,organ", "kind must be one of"),
    ("x.nii.gz,,full", "label empty only for kind negative"),
    ("x.nii.gz,y.nii.gz,full,5-1", "label_map must be"),
    ("x.nii.gz,y.nii.gz,full,,1 2", "spacing must be three sizes"),
    ("x.nii.gz,y.nii.gz,full,,,5:2", "slices must be 'start:stop'"),
])
def test_bad_case_list_entries_are_named(tmp_path, row, message):
    csv = _write_csv(tmp_path / "cases.csv", "image,label,kind,label_map,spacing,slices\n" + row + "\n")
    with pytest.raises(ValueError, match=message) as err:
        read_case_list(csv)
    assert "entry 1" in str(err.value)


def test_label_map_turns_an_organ_map_into_liver(tmp_path):
    import nibabel as nib
    from resunet_trt import io as rio

    ct = DATA / "totalseg_abdomen3mm" / "ct.nii.gz"
    vol = rio.load_ct(ct)
    organs = np.zeros(vol.geometry.shape, np.uint8)
    organs[5:15, 5:15, 5:15] = 28  # "liver"
    organs[20:25, 20:25, 20:25] = 48  # "spleen"
    nib.save(nib.Nifti1Image(organs, vol.geometry.affine), tmp_path / "organs.nii.gz")
    csv = _write_csv(tmp_path / "c.csv", f"image,label,kind,label_map\n{ct},{tmp_path / 'organs.nii.gz'},liver_only,28:1\n")
    case = load_case(read_case_list(csv)[0])
    assert sorted(np.unique(case.labels).tolist()) == [0, 1]
    assert int(case.labels.sum()) == 1000  # the spleen is background


def _slice_image(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = np.zeros((32, 32), np.uint8)
    a[4:12, 2:20] = 200  # an asymmetric block: any rotation or flip moves it
    a[20:30, 25:30] = rng.integers(50, 150)
    return a


def test_slice_sets_are_turned_to_the_canonical_view(tmp_path):
    from PIL import Image

    (tmp_path / "set" / "images").mkdir(parents=True)
    (tmp_path / "set" / "masks").mkdir()
    for name, seed in (("flipped_1_5.png", 1), ("mirrored_2_7.png", 2)):
        img = _slice_image(seed)
        Image.fromarray(img).save(tmp_path / "set" / "images" / name)
        Image.fromarray(np.where(img == 200, 255, 0).astype(np.uint8)).save(tmp_path / "set" / "masks" / name)
    specs = find_cases(tmp_path / "set")
    assert len(specs) == 1 and specs[0].kind == "liver_only" and specs[0].slice_set
    case = load_case(specs[0])
    assert case.slice_set and case.hu.shape == (2, 32, 32)
    np.testing.assert_array_equal(case.hu[0], np.rot90(_slice_image(1), 1))
    np.testing.assert_array_equal(case.hu[1], np.rot90(_slice_image(2), -1))
    np.testing.assert_array_equal(case.labels[0], np.rot90(_slice_image(1) == 200, 1))
    Image.fromarray(_slice_image(3)).save(tmp_path / "set" / "images" / "rotated_3_1.png")
    Image.fromarray(_slice_image(3)).save(tmp_path / "set" / "masks" / "rotated_3_1.png")
    with pytest.raises(ValueError, match="unknown slice orientation prefix 'rotated'"):
        load_case(specs[0])


def test_label_resampling_follows_the_image_mapping():
    labels = np.zeros((1, 10, 10), np.uint8)
    labels[0, 2:5, 6:9] = 2
    # default: the whole plane, as the old nearest resize
    np.testing.assert_array_equal(resize_labels_nearest(labels, (20, 20)), labels.repeat(2, 1).repeat(2, 2))
    # 2 input pixels per output pixel, starting 2 pixels before the image: the plane pads with background
    out = resize_labels_nearest(labels, (8, 8), step=(2.0, 2.0), origin=(-4.0, -4.0))
    want = np.zeros((8, 8), np.uint8)
    for y in range(8):
        for x in range(8):
            iy, ix = math.floor((y + 0.5) * 2 - 4), math.floor((x + 0.5) * 2 - 4)
            if 0 <= iy < 10 and 0 <= ix < 10:
                want[y, x] = labels[0, iy, ix]
    np.testing.assert_array_equal(out[0], want)
    assert out[0, 0].sum() == 0 and out[0, 3, 5] == 2  # input (3, 7) is the only tumor pixel sampled


def test_prepare_case_samples_physical_pixels():
    """A 60 mm liver square at 0.75 mm spans 40 pixels of 1.5 mm, centred on the plane; slices 3 mm apart."""
    hu = np.full((6, 200, 200), -1000, np.int16)
    hu[:, 60:140, 60:140] = 100
    labels = np.zeros(hu.shape, np.uint8)
    labels[:, 60:140, 60:140] = 1
    case = Case("square", hu, labels, "full", (1.5, 0.75, 0.75))
    prep = prepare_case(case, Sampling(window=(-200.0, 250.0), plane_size=(64, 64), context=3, pixel_mm=1.5,
                                       slice_mm=3.0, divisor=16))
    assert prep.x.shape == (6, 3, 112, 112)  # 150 mm / 1.5 mm = 100 -> 112, a multiple of 16
    assert prep.pixel_mm == pytest.approx((1.5, 1.5)) and prep.slice_mm == 3.0
    rows = np.flatnonzero((prep.y[0] == 1).any(axis=1))
    assert len(rows) == 40 and rows[0] == 36
    bright = np.flatnonzero((prep.x[0, 1] > 0.6).any(axis=1))
    np.testing.assert_array_equal(bright, rows)  # image and labels land on the same pixels


def _prepared(name: str, depth: int, weight: float) -> PreparedCase:
    return PreparedCase(name, "full", np.zeros((depth, 1, 4, 4), np.float16), np.zeros((depth, 4, 4), np.uint8),
                        np.zeros((depth, 4, 4), np.uint8), np.arange(depth), np.zeros(0, np.int64), weight=weight)


def test_sampling_weights_are_per_slice():
    cases = [_prepared("a", 100, 1.0), _prepared("b", 100, 9.0)]
    table = sample_slices(cases, SamplingConfig(samples_per_epoch=4000, tumor_fraction=0.0, liver_fraction=1.0),
                          seed=0, epoch=0)
    share_b = float(np.mean(table[:, 0] == 1))
    assert 0.87 < share_b < 0.93  # 9 / (1 + 9), within sampling noise of 4000 draws


def test_liver_only_labels_do_not_punish_tumor_but_synthetic_tumor_scores():
    logits = torch.tensor([[[[0.0]], [[0.0]], [[3.0]]], [[[0.0]], [[0.0]], [[3.0]]]])  # both pixels say tumor
    labels = torch.tensor([[[1]], [[2]]])  # liver-only "liver" pixel; a synthetic tumor pixel
    cfg = LossConfig(dice_weight=0.0, ce_weight=1.0, class_weights=(1.0, 1.0, 1.0))
    loss, _ = segmentation_loss(logits, labels, torch.tensor([True, True]), cfg)
    logp = torch.log_softmax(logits[0, :, 0, 0], 0)
    merged = -torch.logsumexp(logp[1:], 0)  # P(liver or tumor): nothing to punish
    exact = -logp[2]
    assert float(loss) == pytest.approx(float((merged + exact) / 2), rel=1e-6)
    full_loss, _ = segmentation_loss(logits, labels, torch.tensor([False, False]), cfg)
    assert float(full_loss) > float(loss)  # as a full label, "liver" with a tumor prediction costs


def test_synthetic_tumors_in_the_sampler_stay_inside_the_liver():
    from training.train import SliceDataset

    rng = np.random.default_rng(0)
    x = np.full((4, 3, 64, 64), 0.2, np.float16)
    x[:, :, 10:54, 10:54] = 0.55  # liver at ~ 47 HU in the window (-200, 250)
    x += rng.normal(0, 0.01, x.shape).astype(np.float16)
    y = np.zeros((4, 64, 64), np.uint8)
    y[:, 10:54, 10:54] = 1
    case = PreparedCase("box", "liver_only", x, y, y, np.arange(4), np.zeros(0, np.int64),
                        pixel_mm=(1.0, 1.0), slice_mm=3.0)
    tumors = TumorConfig(probability=1.0, count=(2, 3), diameter_mm=(8.0, 16.0))
    ds = SliceDataset([case], SamplingConfig(samples_per_epoch=8, tumor_fraction=0.0, liver_fraction=1.0),
                      AugmentConfig.disabled(), 0, tumors=tumors)
    ds.set_epoch(0)
    found = 0
    for i in range(len(ds)):
        c, s, aug = (int(v) for v in ds.table[i])
        image, label = ds._synthetic_tumors(case, x[s], y[s], np.random.default_rng(aug))
        assert not np.any((label == 2) & (y[s] == 0))
        changed = np.any(image != x[s], axis=0)
        assert not np.any(changed & (y[s] == 0))  # nothing outside the liver changes
        if (label == 2).any():
            found += 1
            assert float(image[1][label == 2].mean()) < float(x[s][1][label == 2].mean())  # hypodense
    assert found >= 6


def test_init_from_loads_weights_and_refuses_another_network(tmp_path):
    from resunet_trt.metadata import ModelMetadata
    from resunet_trt.model import ResUNet, ResUNetConfig, save_checkpoint

    from training.train import _init_weights_from

    cfg = ResUNetConfig(base_width=4, depth=2, max_width=8, block="conv_bn_relu")
    source = ResUNet(cfg)
    meta = ModelMetadata(plane_size=(32, 32), context=3, pixel_mm=1.5, slice_mm=3.0)
    path = save_checkpoint(tmp_path / "src.pt", source, meta)

    class Plan:
        model_cfg, plane, context, window, pixel_mm, slice_mm = cfg, (32, 32), 3, (-200.0, 250.0), 1.5, 3.0

    target = ResUNet(cfg)
    _init_weights_from(target, path, Plan())  # type: ignore[arg-type]
    for (k, a), b in zip(source.state_dict().items(), target.state_dict().values()):
        assert torch.equal(a, b), k
    Plan.pixel_mm = 1.0
    with pytest.raises(ValueError, match="pixel_mm"):
        _init_weights_from(ResUNet(cfg), path, Plan())  # type: ignore[arg-type]
    Plan.pixel_mm, Plan.model_cfg = 1.5, ResUNetConfig(base_width=4, depth=2, max_width=16, block="conv_bn_relu")
    with pytest.raises(ValueError, match="network"):
        _init_weights_from(ResUNet(Plan.model_cfg), path, Plan())  # type: ignore[arg-type]


def test_dark_vessel_augmentation_inverts_only_bright_liver_voxels():
    from training.augment import VESSEL_MARGIN, darken_vessels

    rng = np.random.default_rng(0)
    image = np.full((3, 32, 32), 0.6, np.float32) + rng.normal(0, 0.005, (3, 32, 32)).astype(np.float32)
    liver = np.zeros((32, 32), bool)
    liver[4:28, 4:28] = True
    image[:, 15:17, 4:28] = 0.85  # a bright vessel across the liver
    image[:, 0:2, :] = 0.95  # bright, but outside the liver (bone)
    out = darken_vessels(image, liver, strength=1.0)
    m = float(np.median(image[1][liver]))
    assert np.allclose(out[:, 15:17, 4:28], m - (0.85 - m), atol=1e-6)  # mirrored around the liver median
    np.testing.assert_array_equal(out[:, 0:2], image[:, 0:2])
    untouched = liver[None] & (image <= m + VESSEL_MARGIN)
    np.testing.assert_array_equal(out[untouched], image[untouched])
    assert darken_vessels(image, np.zeros_like(liver), strength=1.0) is image


def _slice_set(root: Path, names: list[str]) -> Path:
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, name in enumerate(names):
        img = np.full((16, 16), i * 10, np.uint8)  # each slice identifiable by its value
        Image.fromarray(img).save(root / "images" / name)
        Image.fromarray(np.where(np.arange(16)[None, :] < i + 1, 255, 0).astype(np.uint8).repeat(16, 0)).save(
            root / "masks" / name)
    return root


def test_slice_set_folds_split_by_patient(tmp_path):
    # patients 10, 11, 15, 20, 23 across both orientation prefixes; fold 0 of 5 = patients 10, 15, 20
    names = ["flipped_10_1.png", "flipped_11_4.png", "mirrored_10_9.png", "mirrored_15_2.png",
             "flipped_20_3.png", "mirrored_23_8.png"]
    folder = _slice_set(tmp_path / "set", names)
    by_value = {i * 10: n for i, n in enumerate(names)}
    csv = _write_csv(tmp_path / "c.csv", "image,label,kind,label_map,spacing,slices,weight,fold\n"
                     f"{folder},,,,,,0.5,!0/5\n{folder},,,,,,,0/5\n")
    train, held = read_case_list(csv)
    assert train.fold == (0, 5, False) and held.fold == (0, 5, True) and train.weight == 0.5
    seen = {by_value[int(v)] for v in load_case(train).hu[:, 0, 0]}
    unseen = {by_value[int(v)] for v in load_case(held).hu[:, 0, 0]}
    assert seen == {"flipped_11_4.png", "mirrored_23_8.png"}
    assert unseen == {"flipped_10_1.png", "mirrored_10_9.png", "mirrored_15_2.png", "flipped_20_3.png"}
    # labels travel with their slices
    for case in (load_case(train), load_case(held)):
        for hu, lab in zip(case.hu, case.labels):
            i = int(hu[0, 0]) // 10
            assert int(lab.sum()) == 16 * (i + 1)


@pytest.mark.parametrize("cell, message", [
    ("0/1", "fold must be"), ("5/5", "fold must be"), ("a/5", "fold must be"), ("05", "fold must be"),
])
def test_bad_folds_are_named(tmp_path, cell, message):
    folder = _slice_set(tmp_path / "set", ["flipped_1_1.png"])
    csv = _write_csv(tmp_path / "c.csv", f"image,label,kind,label_map,spacing,slices,weight,fold\n{folder},,,,,,,{cell}\n")
    with pytest.raises(ValueError, match=message) as err:
        read_case_list(csv)
    assert "entry 1" in str(err.value)


def test_fold_of_a_volume_or_of_no_slices_is_refused(tmp_path):
    ct = DATA / "totalseg_abdomen3mm" / "ct.nii.gz"
    label = DATA / "totalseg_abdomen3mm" / "liver_pseudolabel.nii.gz"
    csv = _write_csv(tmp_path / "c.csv", f"image,label,kind,label_map,spacing,slices,weight,fold\n{ct},{label},,,,,,1/5\n")
    with pytest.raises(ValueError, match="not a volume"):
        read_case_list(csv)
    folder = _slice_set(tmp_path / "set", ["flipped_1_1.png", "flipped_6_1.png"])
    csv = _write_csv(tmp_path / "d.csv", f"image,label,kind,label_map,spacing,slices,weight,fold\n{folder},,,,,,,2/5\n")
    with pytest.raises(ValueError, match="selects none"):
        load_case(read_case_list(csv)[0])
    bad = _slice_set(tmp_path / "bad", ["flipped_x_1.png"])
    csv = _write_csv(tmp_path / "e.csv", f"image,label,kind,label_map,spacing,slices,weight,fold\n{bad},,,,,,,0/5\n")
    with pytest.raises(ValueError, match="patient number"):
        load_case(read_case_list(csv)[0])


def test_unclip_zeros_gives_air_outside_the_body_and_fat_inside():
    from training.data import body_mask, unclip_zeros

    yy, xx = np.mgrid[:64, :64]
    body = (yy - 32) ** 2 / 26**2 + (xx - 32) ** 2 / 20**2 <= 1  # an ellipse of "soft tissue"
    pixels = np.where(body, 60, 0).astype(np.uint8)
    fat = body & ((yy - 32) ** 2 + (xx - 32) ** 2 <= 8**2)
    pixels[fat] = 0  # fat clipped to 0, surrounded by tissue
    pixels[fat & (xx == 32)] = 2  # JPEG noise in it
    pixels[2, 2] = 1  # noise in the air
    pixels[62, 2] = 200  # a speck far outside the body (the table): not body
    hu = unclip_zeros(pixels, -1000, -100)
    mask = body_mask(pixels)
    np.testing.assert_array_equal(mask, body)
    assert (hu[~body] == -1000).all()
    assert (hu[fat] == -100).all()
    assert (hu[body & ~fat] == 60).all()
    assert hu.dtype == np.int16


def test_zero_hu_reaches_the_loaded_slices(tmp_path):
    from PIL import Image

    (tmp_path / "set" / "images").mkdir(parents=True)
    (tmp_path / "set" / "masks").mkdir()
    yy, xx = np.mgrid[:32, :32]
    img = np.where((yy - 16) ** 2 + (xx - 16) ** 2 <= 12**2, 90, 0).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "set" / "images" / "flipped_3_1.png")
    Image.fromarray(img).save(tmp_path / "set" / "masks" / "flipped_3_1.png")
    head = "image,label,kind,label_map,spacing,slices,weight,fold,zero_hu\n"
    plain, unclipped = read_case_list(_write_csv(tmp_path / "c.csv", head + f"{tmp_path / 'set'}\n"
                                                 f"{tmp_path / 'set'},,,,,,,,-1000:-50\n"))
    assert plain.zero_hu is None and unclipped.zero_hu == (-1000, -50)
    a, b = load_case(plain).hu[0], load_case(unclipped).hu[0]
    np.testing.assert_array_equal(b, np.rot90(np.where(img > 0, 90, -1000), 1))
    np.testing.assert_array_equal(a, np.rot90(img, 1))
    for cell in ("-1000", "5:-100", "-1000:x", "-2000:-100"):
        with pytest.raises(ValueError, match="zero_hu must be"):
            read_case_list(_write_csv(tmp_path / "d.csv", head + f"{tmp_path / 'set'},,,,,,,,{cell}\n"))
    ct = DATA / "totalseg_abdomen3mm" / "ct.nii.gz"
    with pytest.raises(ValueError, match="not a volume"):
        read_case_list(_write_csv(tmp_path / "e.csv", head + f"{ct},{ct},,,,,,,-1000:-100\n"))
