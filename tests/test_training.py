"""Trainer: readers for the three layouts, bad data, case split, sampling, augmentation alignment, loss, resume,
DDP with two gloo processes, and an overfit run on a real CT case."""

from __future__ import annotations

import itertools
import json
import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nib = pytest.importorskip("nibabel")
pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from training.augment import AugmentConfig, augment_sample, flip_rot90, random_crop
from training.data import (
    CaseSpec,
    PreparedCase,
    SamplingConfig,
    find_cases,
    load_case,
    prepare_case,
    read_case_list,
    resize_labels_nearest,
    sample_slices,
    split_cases,
)
from training.losses import LossConfig, segmentation_loss
from training.train import DEFAULT_CONFIG, deep_update, load_config, lr_factor, main, train

LITS117 = ("lits117_roi128", "ct.nii.gz", "label.nii.gz")
SMALL = ("lits_small64", "ct.nii.gz", "label.nii.gz")


# ---- readers ------------------------------------------------------------------------------------------------


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src.resolve(), dst)


def _reference_counts(data_dir: Path, case: tuple[str, str, str]) -> tuple[tuple[int, ...], np.ndarray, float]:
    """Shape (as a sorted tuple: orientation-free), label histogram and HU sum straight from nibabel."""
    ct = np.asanyarray(nib.load(data_dir / case[0] / case[1]).dataobj)
    lab = np.rint(np.asanyarray(nib.load(data_dir / case[0] / case[2]).dataobj)).astype(np.int64)
    return tuple(sorted(ct.shape)), np.bincount(lab.ravel(), minlength=3), float(np.clip(ct, -32768, 32767).sum())


def _check_case(spec: CaseSpec, data_dir: Path, ref: tuple[str, str, str]) -> None:
    case = load_case(spec)
    shape, hist, hu_sum = _reference_counts(data_dir, ref)
    assert case.hu.dtype == np.int16 and case.labels.dtype == np.uint8
    assert case.hu.shape == case.labels.shape and tuple(sorted(case.hu.shape)) == shape
    np.testing.assert_array_equal(np.bincount(case.labels.ravel(), minlength=3), hist)
    assert float(case.hu.astype(np.float64).sum()) == pytest.approx(hu_sum, rel=1e-9)


def test_lits_layout(tmp_path, data_dir):
    for n, case in ((0, LITS117), (7, SMALL)):
        _link(data_dir / case[0] / case[1], tmp_path / f"volume-{n}.nii.gz")
        _link(data_dir / case[0] / case[2], tmp_path / f"segmentation-{n}.nii.gz")
    specs = find_cases(tmp_path)
    assert [s.name for s in specs] == ["lits-0", "lits-7"]
    _check_case(specs[0], data_dir, LITS117)
    _check_case(specs[1], data_dir, SMALL)


def test_msd_layout(tmp_path, data_dir):
    for n, case in ((3, SMALL), (12, LITS117)):
        _link(data_dir / case[0] / case[1], tmp_path / "imagesTr" / f"liver_{n}.nii.gz")
        _link(data_dir / case[0] / case[2], tmp_path / "labelsTr" / f"liver_{n}.nii.gz")
    specs = find_cases(tmp_path)
    assert [s.name for s in specs] == ["msd-3", "msd-12"]
    _check_case(specs[0], data_dir, SMALL)
    _check_case(specs[1], data_dir, LITS117)


def test_csv_case_list_with_relative_paths_and_kinds(tmp_path, data_dir):
    _link(data_dir / "lits_small64" / "ct.nii.gz", tmp_path / "cases" / "a_ct.nii.gz")
    _link(data_dir / "lits_small64" / "label.nii.gz", tmp_path / "cases" / "a_lab.nii.gz")
    tot = data_dir / "totalseg_abdomen3mm"
    (tmp_path / "list.csv").write_text(
        "image,label,kind\n# a comment\ncases/a_ct.nii.gz,cases/a_lab.nii.gz\n"
        f"{tot / 'ct.nii.gz'},{tot / 'liver_pseudolabel.nii.gz'},liver_only\n"
    )
    specs = find_cases(tmp_path / "list.csv")
    assert [s.kind for s in specs] == ["full", "liver_only"]
    _check_case(specs[0], data_dir, SMALL)
    totalseg = load_case(specs[1])
    assert set(np.unique(totalseg.labels)) == {0, 1}


def test_case_folder_layout(data_dir):
    specs = find_cases(data_dir / "lits117_roi128")
    assert len(specs) == 1 and specs[0].label.name == "label.nii.gz"


@pytest.mark.parametrize("line", ["only_one_column.nii.gz", "a.nii.gz,b.nii.gz,tumor_only"])
def test_bad_case_list_lines_name_the_file(tmp_path, line):
    (tmp_path / "bad.csv").write_text(line + "\n")
    with pytest.raises(ValueError, match="bad.csv"):
        read_case_list(tmp_path / "bad.csv")


# ---- bad data -----------------------------------------------------------------------------------------------


def _write(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


@pytest.fixture()
def small_ct(tmp_path, data_dir):
    img = nib.load(data_dir / "lits_small64" / "ct.nii.gz")
    ct = np.asanyarray(img.dataobj).astype(np.int16)
    return ct, img.affine


def test_missing_label_names_the_image(tmp_path, small_ct):
    ct, aff = small_ct
    _write(tmp_path / "volume-1.nii.gz", ct, aff)
    with pytest.raises(ValueError, match="volume-1.nii.gz"):
        find_cases(tmp_path)


def test_label_shape_mismatch_names_the_label(tmp_path, small_ct):
    ct, aff = small_ct
    _write(tmp_path / "volume-1.nii.gz", ct, aff)
    _write(tmp_path / "segmentation-1.nii.gz", np.zeros((64, 64, 30), np.uint8), aff)
    with pytest.raises(ValueError, match="segmentation-1.nii.gz"):
        load_case(find_cases(tmp_path)[0])


def test_label_affine_mismatch_names_the_label(tmp_path, small_ct):
    ct, aff = small_ct
    shifted = aff.copy()
    shifted[:3, 3] += 10.0
    _write(tmp_path / "volume-1.nii.gz", ct, aff)
    _write(tmp_path / "segmentation-1.nii.gz", np.zeros(ct.shape, np.uint8), shifted)
    with pytest.raises(ValueError, match="segmentation-1.nii.gz.*affine"):
        load_case(find_cases(tmp_path)[0])


def test_label_values_outside_0_1_2_name_the_label(tmp_path, small_ct):
    ct, aff = small_ct
    lab = np.zeros(ct.shape, np.uint8)
    lab[10, 10, 10] = 3
    _write(tmp_path / "volume-1.nii.gz", ct, aff)
    _write(tmp_path / "segmentation-1.nii.gz", lab, aff)
    with pytest.raises(ValueError, match="segmentation-1.nii.gz"):
        load_case(find_cases(tmp_path)[0])


@pytest.mark.parametrize("shape", [(64, 64), (8, 8, 4, 2)])
def test_non_3d_image_names_the_image(tmp_path, shape):
    _write(tmp_path / "volume-1.nii.gz", np.full(shape, -1000, np.int16))
    _write(tmp_path / "segmentation-1.nii.gz", np.zeros(shape, np.uint8))
    with pytest.raises(ValueError, match="volume-1.nii.gz"):
        load_case(find_cases(tmp_path)[0])


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="empty or unrecognised"):
        find_cases(tmp_path)


def test_bad_data_stops_training_before_the_first_step(tmp_path, small_ct):
    ct, aff = small_ct
    good = tmp_path / "data"
    _write(good / "volume-1.nii.gz", ct, aff)
    lab = np.zeros(ct.shape, np.uint8)
    lab[0, 0, 0] = 7
    _write(good / "segmentation-1.nii.gz", lab, aff)
    config = _tiny_config(tmp_path / "run", sources=[str(good)])
    with pytest.raises(ValueError, match="segmentation-1.nii.gz"):
        train(config)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# ---- split and sampling -------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, fraction", [(2, 0.2), (10, 0.2), (25, 0.3)])
def test_split_is_by_case_disjoint_and_reproducible(n, fraction):
    names = [f"case{i}" for i in range(n)]
    tr, va = split_cases(names, val_fraction=fraction, seed=3)
    assert not set(tr) & set(va) and sorted(tr + va) == sorted(names)
    assert len(va) == max(1, round(fraction * n))
    assert split_cases(names, val_fraction=fraction, seed=3) == (tr, va)


def test_split_seed_changes_the_draw_and_forced_cases_stay_in_validation():
    names = [f"case{i}" for i in range(30)]
    draws = {tuple(split_cases(names, val_fraction=0.2, seed=s)[1]) for s in range(5)}
    assert len(draws) > 1
    tr, va = split_cases(names, val_fraction=0.1, seed=0, val_names=["case5"])
    assert "case5" in va and "case5" not in tr and len(va) == 3
    with pytest.raises(ValueError, match="val_cases"):
        split_cases(names, val_fraction=0.1, val_names=["nope"])


def _prepared(name: str, depth: int, liver: list[int], tumor: list[int], kind: str = "full") -> PreparedCase:
    return PreparedCase(name, kind, np.zeros((depth, 1, 4, 4), np.float16), np.zeros((depth, 4, 4), np.uint8),
                        np.zeros((depth, 4, 4), np.uint8), np.array(liver, np.int64), np.array(tumor, np.int64))


def test_sampling_oversamples_liver_and_tumor_and_repeats_per_epoch():
    cases = [_prepared("a", 100, liver=list(range(40, 60)), tumor=[50, 51]), _prepared("b", 50, [10, 11], [])]
    cfg = SamplingConfig(samples_per_epoch=4000, tumor_fraction=0.3, liver_fraction=0.4)
    table = sample_slices(cases, cfg, seed=1, epoch=2)
    is_tumor = (table[:, 0] == 0) & np.isin(table[:, 1], [50, 51])
    is_liver = ((table[:, 0] == 0) & (table[:, 1] >= 40) & (table[:, 1] < 60)) | (
        (table[:, 0] == 1) & np.isin(table[:, 1], [10, 11]))
    # natural shares would be 2/150 tumor and 22/150 liver slices
    assert 0.28 < is_tumor.mean() < 0.36
    assert 0.68 < is_liver.mean() < 0.80
    np.testing.assert_array_equal(table, sample_slices(cases, cfg, seed=1, epoch=2))
    assert not np.array_equal(table, sample_slices(cases, cfg, seed=1, epoch=3))


def test_sampling_without_tumor_slices_falls_back_to_liver():
    cases = [_prepared("a", 30, liver=[5, 6, 7], tumor=[])]
    table = sample_slices(cases, SamplingConfig(100, 0.5, 0.2), seed=0, epoch=0)
    assert len(table) == 100 and np.isin(table[:, 1], [5, 6, 7]).mean() >= 0.7


def test_label_resize_matches_torch_nearest_exact():
    labels = np.random.default_rng(0).integers(0, 3, (3, 37, 53)).astype(np.uint8)
    for size in ((64, 64), (20, 17), (37, 53)):
        want = torch.nn.functional.interpolate(torch.from_numpy(labels)[None].float(), size=size,
                                               mode="nearest-exact")[0].to(torch.uint8).numpy()
        np.testing.assert_array_equal(resize_labels_nearest(labels, size), want)


def test_prepared_case_matches_preprocess_and_indexes_slices(lits_small):
    from resunet_trt import kernels

    from training.data import Case

    hu, labels = lits_small
    prep = prepare_case(Case("s", hu, labels), window=(-200.0, 250.0), plane_size=(64, 64), context=3)
    np.testing.assert_array_equal(prep.x, kernels.preprocess(hu, out_size=(64, 64), context=3, dtype="float16"))
    np.testing.assert_array_equal(prep.tumor_slices, np.flatnonzero((labels == 2).any(axis=(1, 2))))
    np.testing.assert_array_equal(prep.liver_slices, np.flatnonzero((labels >= 1).any(axis=(1, 2))))


# ---- augmentation -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flip_lr, flip_ud, k", [(True, False, 0), (False, True, 0), (False, False, 1),
                                                (True, True, 3), (True, False, 2)])
def test_flips_and_quarter_turns_invert_exactly(flip_lr, flip_ud, k):
    rng = np.random.default_rng(0)
    img = rng.random((3, 16, 16), dtype=np.float32)
    lab = rng.integers(0, 3, (16, 16)).astype(np.uint8)
    a, b = flip_rot90(img, lab, flip_lr=flip_lr, flip_ud=flip_ud, k=k)
    # undo: quarter turns back, then the up-down flip, then the left-right flip (each flip is its own inverse)
    a3, b3 = flip_rot90(a, b, flip_lr=False, flip_ud=False, k=-k)
    a3, b3 = flip_rot90(a3, b3, flip_lr=False, flip_ud=flip_ud, k=0)
    a3, b3 = flip_rot90(a3, b3, flip_lr=flip_lr, flip_ud=False, k=0)
    np.testing.assert_array_equal(a3, img)
    np.testing.assert_array_equal(b3, lab)
    # and they are the numpy operations they claim to be
    want = img[..., ::-1] if flip_lr else img
    want = want[..., ::-1, :] if flip_ud else want
    np.testing.assert_array_equal(a, np.rot90(want, k, axes=(1, 2)))


@pytest.mark.parametrize("seed", range(6))
def test_label_marker_moves_with_its_image_marker(seed):
    cfg = AugmentConfig(flip_prob=0.5, flip_ud=True, rot90_prob=0.5, rotate_deg=40.0, scale=(0.8, 1.25),
                        translate=0.1, elastic_prob=1.0, elastic_alpha=3.0, affine_prob=1.0, intensity_prob=0.0)
    rng = np.random.default_rng(100 + seed)
    img = np.zeros((3, 64, 64), np.float32)
    lab = np.zeros((64, 64), np.uint8)
    r, c = rng.integers(20, 44, size=2)
    img[:, r - 2 : r + 3, c - 2 : c + 3] = 1.0
    lab[r - 2 : r + 3, c - 2 : c + 3] = 2
    out_img, out_lab = augment_sample(img, lab, cfg, np.random.default_rng(seed))
    assert set(np.unique(out_lab)) <= {0, 2} and (out_lab == 2).any()
    img_centroid = np.array(np.nonzero(out_img[1] > 0.5)).mean(1)
    lab_centroid = np.array(np.nonzero(out_lab == 2)).mean(1)
    assert np.abs(img_centroid - lab_centroid).max() < 1.0
    # the marker really moved in most draws (the test would be empty otherwise)
    if seed == 0:
        moved = [np.abs(np.array(np.nonzero(augment_sample(img, lab, cfg, np.random.default_rng(s))[1] == 2))
                        .mean(1) - [r, c]).max() > 1 for s in range(6)]
        assert sum(moved) >= 4


def test_disabled_augmentation_is_the_identity():
    rng = np.random.default_rng(0)
    img = rng.random((3, 32, 32), dtype=np.float32)
    lab = rng.integers(0, 3, (32, 32)).astype(np.uint8)
    a, b = augment_sample(img, lab, AugmentConfig.disabled(), np.random.default_rng(1))
    np.testing.assert_array_equal(a, img)
    np.testing.assert_array_equal(b, lab)


def test_augmentation_is_a_function_of_its_seed():
    rng = np.random.default_rng(0)
    img = rng.random((3, 32, 32), dtype=np.float32)
    lab = rng.integers(0, 3, (32, 32)).astype(np.uint8)
    a1, b1 = augment_sample(img, lab, AugmentConfig(elastic_prob=1.0), np.random.default_rng(9))
    a2, b2 = augment_sample(img, lab, AugmentConfig(elastic_prob=1.0), np.random.default_rng(9))
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(b1, b2)


def test_lowres_blur_is_area_average_then_bilinear():
    from training.augment import blur_lowres

    rng = np.random.default_rng(0)
    img = rng.random((3, 48, 48), dtype=np.float32)
    out = blur_lowres(img, 2.0)
    # reference: 2x2 block means (the area downsample at an integer factor), then bilinear back (half-pixel centres)
    blocks = img.reshape(3, 24, 2, 24, 2).mean(axis=(2, 4))
    c = (np.arange(48) + 0.5) / 2 - 0.5
    i0 = np.clip(np.floor(c).astype(int), 0, 23)
    i1 = np.clip(i0 + 1, 0, 23)
    t = np.clip(c - np.floor(c), 0, 1) * (c >= 0) * (c <= 23)
    rows = blocks[:, i0] * (1 - t)[None, :, None] + blocks[:, i1] * t[None, :, None]
    ref = rows[:, :, i0] * (1 - t)[None, None, :] + rows[:, :, i1] * t[None, None, :]
    np.testing.assert_allclose(out, ref, atol=1e-5)
    assert out.std() < 0.6 * img.std()  # the fine noise is gone
    flat = np.full((3, 40, 40), 0.37, np.float32)
    np.testing.assert_allclose(blur_lowres(flat, 3.3), flat, atol=1e-6)


def test_lowres_augmentation_blurs_the_image_not_the_label():
    rng = np.random.default_rng(1)
    img = rng.random((3, 32, 32), dtype=np.float32)
    lab = rng.integers(0, 3, (32, 32)).astype(np.uint8)
    off = AugmentConfig.disabled()
    on = AugmentConfig(**{**off.__dict__, "lowres_prob": 1.0, "lowres_factor": (2.0, 3.0)})
    a, b = augment_sample(img, lab, on, np.random.default_rng(3))
    np.testing.assert_array_equal(b, lab)
    assert a.std() < 0.7 * img.std()
    np.testing.assert_allclose(a.mean(), img.mean(), atol=0.02)
    with pytest.raises(ValueError, match="lowres_factor"):
        AugmentConfig.from_dict({"lowres_factor": [0.5, 2.0]})


def test_random_crop_keeps_image_and_label_aligned():
    img = np.arange(2 * 64 * 64, dtype=np.float32).reshape(2, 64, 64)
    lab = np.zeros((64, 64), np.uint8)
    lab[50:54, 5:9] = 1
    for s in range(5):
        ci, cl = random_crop(img, lab, (32, 32), np.random.default_rng(s), foreground_prob=1.0)
        assert ci.shape == (2, 32, 32) and cl.any()
        top, left = divmod(int(ci[0, 0, 0]), 64)
        np.testing.assert_array_equal(cl, lab[top : top + 32, left : left + 32])
    with pytest.raises(ValueError, match="crop size"):
        random_crop(img, lab, (80, 32), np.random.default_rng(0))


# ---- loss ---------------------------------------------------------------------------------------------------


def test_cross_entropy_part_equals_torch_weighted_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 3, 8, 8, generator=g)
    labels = torch.randint(0, 3, (3, 8, 8), generator=g)
    cfg = LossConfig(dice_weight=0.0, class_weights=(1.0, 2.0, 5.0))
    loss, _ = segmentation_loss(logits, labels, torch.zeros(3, dtype=torch.bool), cfg)
    want = torch.nn.functional.cross_entropy(logits, labels, weight=torch.tensor([1.0, 2.0, 5.0]))
    assert float(loss) == pytest.approx(float(want), rel=1e-6)


def _logits_for(classes: np.ndarray, margin: float = 8.0) -> torch.Tensor:
    t = torch.from_numpy(classes.astype(np.int64))
    return torch.nn.functional.one_hot(t, 3).permute(0, 3, 1, 2).float() * margin


def test_liver_only_samples_do_not_punish_tumor_inside_the_liver_mask():
    labels = np.zeros((1, 8, 8), np.int64)
    labels[0, 2:6, 2:6] = 1  # a liver-only mask (a tumor, if any, is labelled liver)
    as_liver = labels.copy()
    as_tumor = labels.copy()
    as_tumor[0, 3:5, 3:5] = 2
    tumor_outside = labels.copy()
    tumor_outside[0, 0, 0] = 2
    flag = torch.ones(1, dtype=torch.bool)
    cfg = LossConfig()
    loss_liver, _ = segmentation_loss(_logits_for(as_liver), torch.from_numpy(labels), flag, cfg)
    loss_tumor, _ = segmentation_loss(_logits_for(as_tumor), torch.from_numpy(labels), flag, cfg)
    loss_out, _ = segmentation_loss(_logits_for(tumor_outside), torch.from_numpy(labels), flag, cfg)
    assert float(loss_tumor) == pytest.approx(float(loss_liver), abs=1e-5)
    assert float(loss_out) > float(loss_liver) + 1e-3
    # the same tumor prediction is punished when the sample has full labels
    loss_full, _ = segmentation_loss(_logits_for(as_tumor), torch.from_numpy(labels), ~flag, cfg)
    assert float(loss_full) > float(loss_liver) + 0.1


def test_schedule_warms_up_then_decays_to_the_floor():
    kw = {"total": 100, "warmup": 10, "power": 0.9, "min_ratio": 0.01}
    for schedule in ("cosine", "poly"):
        f = [lr_factor(s, schedule=schedule, **kw) for s in range(101)]
        assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0) and f[10] == pytest.approx(1.0)
        assert all(a >= b for a, b in itertools.pairwise(f[10:]))
        assert f[100] == pytest.approx(0.01)
    with pytest.raises(ValueError, match="schedule"):
        lr_factor(50, schedule="step", **kw)


# ---- configuration ------------------------------------------------------------------------------------------


def test_config_file_and_overrides(tmp_path):
    (tmp_path / "c.yaml").write_text("optim: {lr: 0.01}\nmodel: {depth: 3}\n")
    cfg = load_config(tmp_path / "c.yaml", ["optim.epochs=7", "augment.rotate_deg=5", "sampling.crop_size=[64, 64]"])
    assert cfg["optim"]["lr"] == 0.01 and cfg["optim"]["epochs"] == 7 and cfg["model"]["depth"] == 3
    assert cfg["augment"]["rotate_deg"] == 5 and cfg["sampling"]["crop_size"] == [64, 64]
    assert cfg["optim"]["batch_size"] == DEFAULT_CONFIG["optim"]["batch_size"]
    with pytest.raises(ValueError, match="unknown key"):
        load_config(None, ["optim.learning_rate=1"])
    with pytest.raises(ValueError, match="key=value"):
        load_config(None, ["optim.lr"])
    (tmp_path / "bad.yaml").write_text("optimiser: {lr: 1}\n")
    with pytest.raises(ValueError, match="unknown config sections"):
        load_config(tmp_path / "bad.yaml")


@pytest.mark.parametrize("path", ["training/configs/default.yaml", "training/configs/default_model.yaml"])
def test_shipped_configs_load(path):
    cfg = load_config(ROOT / path)
    from resunet_trt.model import ResUNetConfig

    ResUNetConfig.from_dict({**cfg["model"], "in_channels": cfg["preprocess"]["context"]})
    AugmentConfig.from_dict(cfg["augment"])
    LossConfig.from_dict(cfg["loss"])


# ---- training runs ------------------------------------------------------------------------------------------


def _tiny_config(run_dir: Path, *, sources=(), **changes) -> dict:
    cfg = deep_update(DEFAULT_CONFIG, {
        "run_dir": str(run_dir),
        "progress": False,
        "data": {"sources": list(sources), "val_fraction": 0.0},
        "preprocess": {"plane_size": [32, 32]},
        "model": {"base_width": 4, "depth": 2, "max_width": 8},
        "sampling": {"samples_per_epoch": 16},
        "optim": {"epochs": 2, "batch_size": 4, "warmup_epochs": 0.5},
        "val": {"every": 1, "batch_size": 8},
        "loader": {"workers": 0},
    })
    return deep_update(cfg, changes)


@pytest.fixture()
def tiny_data(tmp_path, data_dir):
    d = tmp_path / "data"
    _link(data_dir / "lits_small64" / "ct.nii.gz", d / "volume-1.nii.gz")
    _link(data_dir / "lits_small64" / "label.nii.gz", d / "segmentation-1.nii.gz")
    return d


def test_resume_reproduces_the_uninterrupted_run(tmp_path, tiny_data, data_dir):
    extra = {"data": {"val_sources": [str(data_dir / "lits_small64")]}, "loader": {"workers": 1},
             "sampling": {"crop_size": [32, 32]}, "preprocess": {"plane_size": [64, 64]}}
    full = train(_tiny_config(tmp_path / "a", sources=[tiny_data], **extra))
    # the interrupted run stops after its first epoch of the same 2-epoch schedule, then resumes
    first = train(_tiny_config(tmp_path / "b", sources=[tiny_data], **extra), stop_after=1)
    assert len(first.history) == 1
    resumed = train(_tiny_config(tmp_path / "b", sources=[tiny_data], **extra), resume=True)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the first epoch really changed the weights (so equality after resuming is not trivial)
    assert any(not torch.equal(first.model.state_dict()[k], b[k]) for k in b)
    lines_a = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    lines_b = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert len(lines_a) == len(lines_b) == 2
    for la, lb in zip(lines_a, lines_b):
        ra, rb = json.loads(la), json.loads(lb)
        assert ra["train_loss"] == rb["train_loss"] and ra["lr"] == rb["lr"] and ra["val"] == rb["val"]


def test_resume_without_state_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="resume.pt"):
        train(_tiny_config(tmp_path / "none"), resume=True)


def test_run_folder_holds_loadable_checkpoints_and_logs(tmp_path, tiny_data, data_dir):
    import yaml
    from resunet_trt.model import load_checkpoint

    run = tmp_path / "run"
    rc = main(["--config", str(ROOT / "training/configs/default.yaml"), "--data", str(tiny_data),
               "--liver-only-data", str(data_dir / "totalseg_abdomen3mm"), "--run-dir", str(run), "--no-progress",
               "--override", "preprocess.plane_size=[32, 32]", "--override", "model.depth=2",
               "--override", "model.base_width=4", "--override", "model.max_width=8",
               "--override", "sampling.samples_per_epoch=8", "--override", "optim.epochs=1",
               "--override", "optim.batch_size=4", "--override", "loader.workers=0",
               "--override", "data.val_fraction=0.4",
               "--export", str(tmp_path / "exported.pt")])
    assert rc == 0
    assert {"best.pt", "last.pt", "resume.pt", "metrics.jsonl", "config.yaml", "command.txt"} <= {
        p.name for p in run.iterdir()}
    _, meta = load_checkpoint(tmp_path / "exported.pt")
    assert meta.plane_size == (32, 32) and meta.context == 3 and meta.window == (-200.0, 250.0)
    assert meta.class_names == ("background", "liver", "tumor")
    assert meta.model_config["depth"] == 2
    summary = meta.extra["training"]
    assert summary["epochs_done"] == 1 and "--export" in summary["command"]
    # the split holds one whole case out
    assert len(summary["val_cases"]) == 1 and not set(summary["val_cases"]) & set(summary["train_cases"])
    assert set(meta.extra["metrics"]["cases"]) == set(summary["val_cases"])
    for key in ("dice", "iou", "precision", "recall"):
        assert f"liver_{key}" in meta.extra["metrics"]
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert record["epoch"] == 1 and "val" in record and record["train_loss"] > 0
    assert yaml.safe_load((run / "config.yaml").read_text())["optim"]["epochs"] == 1
    torch.load(run / "resume.pt", weights_only=True)


def test_cli_reports_bad_data_with_exit_code_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["--data", str(tmp_path / "empty"), "--run-dir", str(tmp_path / "run"), "--no-progress"]) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, config: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    import torch.distributed as dist

    from training.train import train as run

    torch.set_num_threads(1)
    result = run(config, device="cpu")
    torch.save({k: v for k, v in result.model.named_parameters()}, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_ddp_two_gloo_processes_keep_weights_in_sync_and_only_rank0_writes(tmp_path, tiny_data, data_dir):
    import torch.multiprocessing as mp

    run = tmp_path / "run"
    config = _tiny_config(run, sources=[str(tiny_data)], data={"val_sources": [str(data_dir / "lits_small64")]},
                          optim={"epochs": 2, "batch_size": 2}, sampling={"samples_per_epoch": 8})
    mp.spawn(_ddp_worker, args=(2, _free_port(), config, str(tmp_path)), nprocs=2, join=True)
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    from resunet_trt.model import ResUNet, ResUNetConfig, load_checkpoint

    trained_config = load_checkpoint(run / "last.pt")[1].model_config  # the architecture the run trained
    assert trained_config["base_width"] == 4 and trained_config["depth"] == 2
    init = dict(ResUNet(ResUNetConfig.from_dict(trained_config)).named_parameters())
    assert any(not torch.equal(w0[k], init[k].detach()) for k in w0)  # training did happen
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]  # one writer, not two
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "config.yaml", "last.pt", "metrics.jsonl",
                                                     "resume.pt"]


# ---- overfitting a real case --------------------------------------------------------------------------------


@pytest.mark.slow
def test_overfits_one_real_case(tmp_path, data_dir):
    # 64x64 crops of the 128x128 plane (same pixel scale, 4x cheaper steps); scored on the whole 128^3 volume
    config = deep_update(DEFAULT_CONFIG, {
        "run_dir": str(tmp_path / "run"),
        "progress": False,
        "data": {"sources": [str(data_dir / "lits117_roi128")], "val_fraction": 0.0},
        "preprocess": {"plane_size": [128, 128]},
        "model": {"base_width": 8, "depth": 3, "max_width": 32},
        "sampling": {"samples_per_epoch": 96, "tumor_fraction": 0.5, "liver_fraction": 0.3,
                     "crop_size": [64, 64], "crop_foreground_prob": 0.9},
        "augment": {"flip_prob": 0.0, "affine_prob": 0.0, "intensity_prob": 0.0},
        "optim": {"epochs": 8, "batch_size": 8, "lr": 0.005, "warmup_epochs": 0.5},
        "val": {"every": 8, "on_train_cases": True},
        "loader": {"workers": 0},
    })
    result = train(config)
    scores = result.history[-1]["val"]["cases"]["lits117_roi128"]
    assert scores["liver"]["dice"] > 0.90
    assert scores["tumor"]["dice"] > 0.60
