"""What a first-time user meets: training defaults and run records, export output, the overlay, help texts."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).parent / "data"

torch = pytest.importorskip("torch")
yaml = pytest.importorskip("yaml")

from training.augment import AugmentConfig  # noqa: E402
from training.losses import LossConfig  # noqa: E402
from training.train import DEFAULT_CONFIG, load_config  # noqa: E402
from training.train import main as train_main  # noqa: E402

# A network and data small enough for a CPU test: 32x32 planes, 2-level net, 8 slices an epoch.
TINY = ["preprocess.plane_size=[32, 32]", "model.depth=2", "model.base_width=4", "model.max_width=8",
        "sampling.samples_per_epoch=8", "optim.batch_size=4", "loader.workers=0", "val.every=1",
        "val.batch_size=64"]


def _train_args(run: Path, *extra: str, epochs: int = 1) -> list[str]:
    args = ["--data", str(DATA / "lits_small64"), "--run-dir", str(run), "--no-progress"]
    for o in [*TINY, f"optim.epochs={epochs}"]:
        args += ["--override", o]
    return args + list(extra)


# ---- item 9: training defaults and what a run records -------------------------------------------------------


def test_defaults_without_config_are_the_shipped_yaml():
    shipped = yaml.safe_load((ROOT / "training/configs/default.yaml").read_text())
    assert load_config(None) == shipped
    assert DEFAULT_CONFIG == shipped
    # the defaults hold out cases for validation, so best.pt is chosen on held-out data
    assert shipped["data"]["val_fraction"] > 0
    # every augmentation and loss setting is written in the file (none hides in a dataclass default)
    assert set(shipped["augment"]) == set(AugmentConfig.__dataclass_fields__)
    assert set(shipped["loss"]) == set(LossConfig.__dataclass_fields__)


def test_a_config_file_changes_only_the_keys_it_sets(tmp_path):
    (tmp_path / "c.yaml").write_text("augment: {rotate_deg: 3.0}\n")
    shipped = yaml.safe_load((ROOT / "training/configs/default.yaml").read_text())
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg["augment"]["rotate_deg"] == 3.0
    cfg["augment"]["rotate_deg"] = shipped["augment"]["rotate_deg"]
    assert cfg == shipped
    with pytest.raises(ValueError, match="unknown key"):
        load_config(None, ["augment.rotation=3"])


def test_saved_config_records_the_augmentation_and_loss_values_used(tmp_path, capsys):
    run = tmp_path / "run"
    assert train_main(_train_args(run, "--override", "augment.rotate_deg=7.5", "--override", "loss.ce_weight=0.5")) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    used_aug = AugmentConfig.from_dict({**DEFAULT_CONFIG["augment"], "rotate_deg": 7.5})
    used_loss = LossConfig.from_dict({**DEFAULT_CONFIG["loss"], "ce_weight": 0.5})
    assert AugmentConfig.from_dict(saved["augment"]) == used_aug
    assert LossConfig.from_dict(saved["loss"]) == used_loss
    assert set(saved["augment"]) == set(asdict(used_aug)) and set(saved["loss"]) == set(asdict(used_loss))


def test_resume_keeps_the_command_history_and_a_finished_run_says_so(tmp_path, capsys, caplog):
    run = tmp_path / "run"
    assert train_main(_train_args(run, epochs=1)) == 0
    first = (run / "command.txt").read_text().splitlines()
    assert len(first) == 1 and "--resume" not in first[0]
    capsys.readouterr()
    with caplog.at_level(logging.WARNING, logger="resunet_trt.train"):
        assert train_main(["--run-dir", str(run), "--resume", "--no-progress"]) == 0
    lines = (run / "command.txt").read_text().splitlines()
    assert lines[0] == first[0] and len(lines) == 2 and "--resume" in lines[1]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("already finished" in m and "1 of 1 epochs" in m and "optim.epochs" in m for m in warnings), warnings
    assert "best checkpoint:" in capsys.readouterr().out
    # nothing was trained again
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


def test_resuming_a_run_recorded_with_empty_augment_and_loss_keeps_their_old_values(tmp_path):
    from training.train import load_run_config

    snapshot = yaml.safe_load((ROOT / "training/configs/default.yaml").read_text())
    snapshot["augment"], snapshot["loss"] = {}, {}  # how runs recorded them before the values were written out
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(snapshot))
    cfg = load_run_config(tmp_path, ["optim.epochs=3"])
    assert AugmentConfig.from_dict(cfg["augment"]) == AugmentConfig()
    assert LossConfig.from_dict(cfg["loss"]) == LossConfig()
    assert cfg["optim"]["epochs"] == 3


def test_the_end_of_training_says_where_best_is_and_what_best_meant(tmp_path, capsys):
    run = tmp_path / "run"
    args = _train_args(run, "--val-data", str(DATA / "lits117_roi128"), epochs=2)
    assert train_main(args) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("best checkpoint:"))
    records = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    scores = [r["val"]["mean_dice"] for r in records]
    best_epoch = records[int(np.argmax(scores))]["epoch"]
    assert str(run / "best.pt") in line
    assert f"epoch {best_epoch}," in line and "highest validation mean Dice" in line
    assert f"{max(scores):.4f}" in line and "1 validation case;" in line
    ckpt = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    assert ckpt["extra"]["training"]["epochs_done"] == best_epoch


def test_the_end_of_training_without_validation_says_nothing_chose_best(tmp_path, capsys):
    run = tmp_path / "run"
    assert train_main(_train_args(run, "--override", "data.val_fraction=0.0", epochs=1)) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("best checkpoint:"))
    assert str(run / "best.pt") in line and "last epoch" in line and "no validation case" in line


# ---- item 11: export prints what matters, not the exporter's chatter -----------------------------------------

_EXPORT_SCRIPT = r"""
import logging, sys, warnings
warnings.simplefilter("default")
from resunet_trt.export import export_model, main
from resunet_trt.metadata import ModelMetadata
from resunet_trt.model import ResUNet, ResUNetConfig, save_checkpoint

ckpt, out_dir, calib = sys.argv[1:4]
cfg = ResUNetConfig(base_width=4, depth=2, max_width=8)
meta = ModelMetadata(plane_size=(32, 32), context=3, model_config=cfg.to_dict())
save_checkpoint(ckpt, ResUNet(cfg), meta)
levels = {n: logging.getLogger(n).level for n in ("torch.onnx", "onnxscript", "onnx_ir")}
# the CLI, as a user runs it; fully int8, so that the lines below do not depend on the sensitivity search (whose
# progress lines are its own, tested in test_int8_sensitivity.py)
assert main([ckpt, "-o", out_dir, "--calib-data", calib, "--int8-float-nodes", "none"]) == 0
filters = list(warnings.filters)  # after the first export: importing torch.onnx adds filters of its own
logging.disable(logging.INFO)
export_model(ResUNet(cfg), meta, out_dir + "/again.onnx")
logging.disable(logging.NOTSET)
assert warnings.filters == filters, "warning filters changed for the caller"
assert {n: logging.getLogger(n).level for n in levels} == levels, "logger levels changed for the caller"
logging.getLogger("onnxscript").info("the caller's own onnxscript logging still shows")
"""


def test_export_cli_prints_its_own_lines_only(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "out"
    # lits_small64 has 33 slices: calibration batches of 8 would leave a short last batch
    proc = subprocess.run([sys.executable, "-c", _EXPORT_SCRIPT, str(tmp_path / "m.pt"), str(out),
                           str(DATA / "lits_small64")], capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"fp32: {out / 'model.onnx'}", f"fp16: {out / 'model.fp16.onnx'}",
                                        f"int8: {out / 'model.int8.onnx'}"]
    assert proc.stderr.splitlines() == [
        f"INFO resunet_trt.export: exported fp32 ONNX (opset 18) to {out / 'model.onnx'}",
        f"INFO resunet_trt.export: wrote fp16 ONNX to {out / 'model.fp16.onnx'}",
        f"INFO resunet_trt.export: wrote int8 Q/DQ ONNX to {out / 'model.int8.onnx'} (percentile calibration on "
        "33 slices)",
        "INFO onnxscript: the caller's own onnxscript logging still shows",
    ], proc.stderr


def test_equal_batches_keep_every_slice_in_order():
    from resunet_trt.export import equal_batches

    slices = np.arange(33, dtype=np.float32)[:, None, None, None] * np.ones((1, 3, 2, 2), np.float32)
    uneven = [slices[i : i + 8] for i in range(0, 33, 8)]  # 8, 8, 8, 8, 1
    even = equal_batches(uneven, 8)
    assert {len(b) for b in even} == {3}  # 33 = 11 x 3, the largest divisor <= 8
    np.testing.assert_array_equal(np.concatenate(even), slices)
    assert {len(b) for b in equal_batches([slices[:32]], 8)} == {8}
    assert {len(b) for b in equal_batches([slices[:31]], 8)} == {1}  # a prime count: one slice at a time


# ---- item 13: the overlay says what it shows -----------------------------------------------------------------

_GAP, _TITLE = 4, 14  # the overlay's layout: views side by side 4 px apart under a 14 px title strip


def _direction_letter(vec: np.ndarray) -> str:
    """Patient direction of a world vector in RAS+ (+x patient right, +y anterior, +z superior), by its largest
    component."""
    axis = int(np.argmax(np.abs(vec)))
    return ("RL", "AP", "SI")[axis][0 if vec[axis] > 0 else 1]


def test_overlay_letters_follow_the_affine_of_a_real_scan():
    from resunet_trt.io import load_ct
    from resunet_trt.overlay import overlay_views

    vol = load_ct(DATA / "totalseg_abdomen3mm" / "ct.nii.gz")
    hu = vol.hu
    d, h, w = (s // 2 for s in hu.shape)
    views = overlay_views(hu, np.zeros(hu.shape, np.uint8), vol.spacing, (d, h, w))
    step = vol.affine[:3, :3]  # columns: world mm per step along d, h, w
    # what each view shows (checked on the pixels) and hence the world direction of image down and right
    expected = [(hu[d], step[:, 1], step[:, 2]), (hu[::-1, h, :], -step[:, 0], step[:, 2]),
                (hu[::-1, :, w], -step[:, 0], step[:, 1])]
    assert [v.title.split()[0] for v in views] == ["axial", "coronal", "sagittal"]
    for view, (plane, down, right) in zip(views, expected):
        assert np.array_equal(view.ct, plane)
        top, bottom, left, right_letter = view.letters
        assert (bottom, right_letter) == (_direction_letter(down), _direction_letter(right)), view.title
        assert (top, left) == (_direction_letter(-down), _direction_letter(-right)), view.title


def test_overlay_titles_carry_one_based_slice_numbers():
    from resunet_trt.overlay import crossing_point, overlay_views, render_overlay

    labels = np.zeros((20, 30, 40), np.uint8)
    labels[4:7, 10:13, 20:23] = 1  # liver block centred at (5, 11, 21)

    at = crossing_point(labels, [])
    assert at == (5, 11, 21)
    views = overlay_views(np.zeros(labels.shape, np.int16), labels, (5.0, 1.0, 1.0), at)
    assert [v.title for v in views] == ["axial 6/20", "coronal 12/30", "sagittal 22/40"]
    render_overlay(np.zeros(labels.shape, np.int16), labels, (5.0, 1.0, 1.0))  # draws without error


def test_a_three_slice_series_shows_three_full_axial_views(data_dir):
    from resunet_trt.io import load_ct, load_label
    from resunet_trt.overlay import LIVER_RGB, render_overlay

    vol = load_ct(data_dir / "dicom_ct3slice" / "series")
    liver = (load_label(data_dir / "dicom_ct3slice" / "label_liver1_spine2.nii.gz", vol) == 1).astype(np.uint8)
    assert liver.shape[0] == 3
    image = np.asarray(render_overlay(vol.hu, liver, vol.spacing, view_size=192)).astype(np.int16)
    # a 512 x 512 plane of square pixels: three 192 x 192 views
    assert image.shape == (192 + _TITLE, 3 * 192 + 2 * _GAP, 3)
    green = (image[..., 1] - image[..., 0] > 40) & (image[..., 1] - image[..., 2] > 40)
    green[image[..., 1] == LIVER_RGB[1]] = False  # the legend swatch
    for k in range(3):
        panel = green[_TITLE:, k * (192 + _GAP) : k * (192 + _GAP) + 192]
        assert abs(panel.mean() - liver[k].mean()) < 0.01, k  # view k shows slice k's liver


def test_overlay_has_a_legend_and_a_scale_bar():
    from resunet_trt.overlay import LIVER_RGB, TUMOR_RGB, render_overlay

    # black CT, no labels: every coloured or white pixel is an annotation
    hu = np.full((40, 100, 100), -1000, np.int16)
    image = np.asarray(render_overlay(hu, np.zeros(hu.shape, np.uint8), (1.0, 1.0, 1.0), view_size=384))
    axial = image[_TITLE:, :384]
    lower_left = axial[192:, :192]
    for colour in (LIVER_RGB, TUMOR_RGB):
        assert (lower_left == colour).all(axis=-1).sum() >= 25, colour  # a swatch of at least 5 x 5
    assert not (axial[:, 192:] == LIVER_RGB).all(axis=-1).any()
    # 100 mm over 384 px; a round length of at most a quarter of the width: 20 mm = 76.8 px
    white = (axial == 255).all(axis=-1)
    runs = [np.diff(np.flatnonzero(np.diff(np.r_[0, row.astype(np.int8), 0]))) for row in white]
    longest = max((int(r[::2].max()) for r in runs if r.size), default=0)
    assert abs(longest - 20 * 384 / 100) <= 1.5, longest


def test_overlay_names_the_case_in_the_first_view_only():
    from resunet_trt.overlay import render_overlay

    hu = np.full((40, 100, 100), -1000, np.int16)
    labels = np.zeros(hu.shape, np.uint8)
    plain = np.asarray(render_overlay(hu, labels, (1.0, 1.0, 1.0), view_size=256))
    named = np.asarray(render_overlay(hu, labels, (1.0, 1.0, 1.0), view_size=256, case="liver_7"))
    changed = (plain != named).any(axis=-1)
    rows, cols = np.nonzero(changed)
    assert rows.size > 20
    assert rows.min() >= _TITLE and rows.max() < _TITLE + 40 and cols.max() < 128


# ---- item 14: every option's help says its default ----------------------------------------------------------

_PARSERS = [
    ("resunet-seg", "resunet_trt.cli.seg", "build_parser"),
    ("resunet-bench", "resunet_trt.cli.bench", "build_parser"),
    ("resunet-build", "resunet_trt.cli.build", "_parser"),
    ("resunet-eval", "resunet_trt.cli.eval", "build_parser"),
    ("resunet-demo", "resunet_trt.cli.demo", "build_parser"),
    ("resunet-cohort", "resunet_trt.cli.cohort", "build_parser"),
    ("python -m resunet_trt.export", "resunet_trt.export", "build_parser"),
    ("python training/train.py", "training.train", "build_parser"),
]


def _option_help(parser, action) -> str:
    """The help text of one option as ``--help`` prints it (``%(default)s`` and the like expanded)."""
    formatter = parser._get_formatter()  # noqa: SLF001 - argparse has no public per-action help
    formatter.add_argument(action)
    return " ".join(formatter.format_help().split())


@pytest.mark.parametrize(("prog", "module", "factory"), _PARSERS, ids=[p[0] for p in _PARSERS])
def test_help_of_every_option_with_a_default_names_it(prog, module, factory):
    import argparse
    import importlib

    parser = getattr(importlib.import_module(module), factory)()
    missing = []
    for action in parser._actions:  # noqa: SLF001
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:  # noqa: SLF001
            continue
        default = action.default
        if default is None or default is False or default == [] or default == argparse.SUPPRESS:
            continue  # "not given" needs no mention
        if isinstance(action, argparse._StoreTrueAction):  # noqa: SLF001
            continue
        if isinstance(default, (tuple, list)):  # as typed on the command line: 2.5,0.8,0.8
            shown = ",".join(str(v) for v in default)
        else:
            shown = str(default.name if hasattr(default, "name") and not isinstance(default, str) else default)
        text = _option_help(parser, action)
        if not any(form in text for form in (f"default: {shown}", f"default {shown}", f"{shown} (default)")):
            missing.append(f"{'/'.join(action.option_strings) or action.dest} (default {shown!r}): {text}")
    assert not missing, f"{prog}: help without its default:\n" + "\n".join(missing)
