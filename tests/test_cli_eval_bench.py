"""resunet-eval, resunet-bench and benchmarks/gpu_check.sh end to end on the real cases in tests/data."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import resunet_trt
from resunet_trt.cli import bench
from resunet_trt.cli import eval as eval_cli
from resunet_trt.cli.eval import case_key, data_cases, discover, file_kind, json_safe, label_files

REPO = Path(__file__).resolve().parents[1]


def _strict_json(path: Path) -> dict:
    """Parse JSON refusing NaN/Infinity tokens, as a strict parser (a browser, jq) would."""

    def refuse(token: str) -> None:
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.sum(a & b) / (np.sum(a) + np.sum(b))


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


# ---------------------------------------------------------------- case naming and discovery


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("segmentation-12.nii", "12"),
        ("volume-12.nii", "12"),
        ("volume-012.nii.gz", "12"),
        ("liver_12.nii.gz", "12"),
        ("liver_12_0000.nii.gz", "12"),
        ("volume-12_mask.nii.gz", "12"),
        ("case7_mask.nii.gz", "case7"),
        ("case7-label.nii.gz", "case7"),
        ("case7_seg.nii", "case7"),
        ("case7.nii.gz", "case7"),
        ("patient_3_ct.nii.gz", "patient_3"),
    ],
)
def test_case_key(name, key):
    assert case_key(name) == key


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("x/segmentation-3.nii", "label"),
        ("x/volume-3.nii", "image"),
        ("x/case_mask.nii.gz", "label"),
        ("x/label.nii.gz", "label"),
        ("x/ct.nii.gz", "image"),
        ("x/liver_3_0000.nii.gz", "image"),
        ("labelsTr/liver_3.nii.gz", "label"),
        ("imagesTr/liver_3.nii.gz", "image"),
        ("x/liver_3.nii.gz", "unknown"),
    ],
)
def test_file_kind(path, kind):
    assert file_kind(Path(path)) == kind


def test_discover_lits_flat_folder(tmp_path):
    for i in (0, 1, 10):
        _touch(tmp_path / f"volume-{i}.nii")
        _touch(tmp_path / f"segmentation-{i}.nii")
    cases, problems = data_cases(tmp_path)
    assert sorted(cases) == ["0", "1", "10"]
    assert cases["10"] == (tmp_path / "volume-10.nii", tmp_path / "segmentation-10.nii")
    assert problems == []


def test_discover_msd_layout(tmp_path):
    for i in (3, 4):
        _touch(tmp_path / "imagesTr" / f"liver_{i}.nii.gz")
        _touch(tmp_path / "labelsTr" / f"liver_{i}.nii.gz")
    _touch(tmp_path / "imagesTs" / "liver_99.nii.gz")  # no label: reported, skipped
    cases, problems = data_cases(tmp_path)
    assert sorted(cases) == ["3", "4"]
    assert cases["3"] == (tmp_path / "imagesTr" / "liver_3.nii.gz", tmp_path / "labelsTr" / "liver_3.nii.gz")
    assert any("99" in p for p in problems)


def test_discover_case_folders(tmp_path):
    for name in ("a", "b"):
        _touch(tmp_path / name / "ct.nii.gz")
        _touch(tmp_path / name / "label.nii.gz")
    cases, _ = data_cases(tmp_path)
    assert cases == {n: (tmp_path / n / "ct.nii.gz", tmp_path / n / "label.nii.gz") for n in ("a", "b")}


def test_discover_the_case_folder_itself(tmp_path):
    case = tmp_path / "lits_small64"
    _touch(case / "ct.nii.gz")
    _touch(case / "label.nii.gz")
    cases, _ = data_cases(case)
    assert cases == {"lits_small64": (case / "ct.nii.gz", case / "label.nii.gz")}


def test_discover_case_and_mask_suffix(tmp_path):
    _touch(tmp_path / "p1.nii.gz")
    _touch(tmp_path / "p1_mask.nii.gz")
    cases, _ = data_cases(tmp_path)
    assert cases == {"p1": (tmp_path / "p1.nii.gz", tmp_path / "p1_mask.nii.gz")}


def test_prediction_names_match_reference_names(tmp_path):
    # resunet-seg writes <case>_mask.nii.gz for volume-N.nii; the references are segmentation-N.nii (LiTS) or
    # liver_N.nii.gz (MSD labelsTr).
    preds, _ = label_files(_touch(tmp_path / "pred" / "volume-5_mask.nii.gz").parent)
    lits, _ = label_files(_touch(tmp_path / "lits" / "segmentation-5.nii").parent)
    msd, _ = label_files(_touch(tmp_path / "msd" / "labelsTr" / "liver_5.nii.gz").parents[1])
    assert set(preds) == set(lits) == set(msd) == {"5"}


def test_discover_reports_duplicates(tmp_path):
    _touch(tmp_path / "segmentation-1.nii")
    _touch(tmp_path / "segmentation-001.nii.gz")
    _, problems = discover(tmp_path)
    assert any("two label files" in p for p in problems)


def test_discover_rejects_a_file(tmp_path):
    with pytest.raises(ValueError, match="folder"):
        discover(_touch(tmp_path / "x.nii"))


def test_json_safe_makes_strict_json():
    doc = json_safe({"a": math.nan, "b": [math.inf, -math.inf], "c": np.float32(0.5), "d": np.int64(3)})
    assert doc == {"a": None, "b": ["inf", "-inf"], "c": 0.5, "d": 3}
    json.dumps(doc, allow_nan=False)


# ---------------------------------------------------------------- resunet-eval --pred/--gt (no model)


def _save_like(path: Path, data: np.ndarray, like: nib.Nifti1Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(np.uint8), like.affine, like.header), str(path))


@pytest.fixture()
def pred_gt_dirs(tmp_path, data_dir):
    """gt: lits_small64's label as LiTS segmentation-1 and -2; pred: an exact copy (1) and a perturbed copy (2)."""
    img = nib.load(str(data_dir / "lits_small64" / "label.nii.gz"))
    gt = np.rint(np.asanyarray(img.dataobj)).astype(np.uint8)
    perturbed = gt.copy()
    perturbed[perturbed == 2] = 1  # every tumor missed
    perturbed[:20] = 0  # and part of the liver cut off (x < 20 on disk)
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    for i in (1, 2):
        _save_like(gt_dir / f"segmentation-{i}.nii.gz", gt, img)
    _save_like(pred_dir / "volume-1_mask.nii.gz", gt, img)
    _save_like(pred_dir / "volume-2_mask.nii.gz", perturbed, img)
    return pred_dir, gt_dir, gt, perturbed


def test_eval_folders_end_to_end(pred_gt_dirs, tmp_path, capsys):
    pred_dir, gt_dir, gt, perturbed = pred_gt_dirs
    out = tmp_path / "out"
    rc = eval_cli.main(["--pred", str(pred_dir), "--gt", str(gt_dir), "-o", str(out), "--no-progress"])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "metrics.json",
        "metrics_aggregate.csv",
        "metrics_per_case.csv",
    ]
    rows = {r["case"]: r for r in _rows(out / "metrics_per_case.csv")}
    assert set(rows) == {"1", "2"}
    assert float(rows["1"]["liver_dice"]) == 1.0 and float(rows["1"]["tumor_dice"]) == 1.0
    assert float(rows["1"]["liver_hd95"]) == 0.0
    expected = _dice(perturbed >= 1, gt >= 1)
    assert float(rows["2"]["liver_dice"]) == pytest.approx(expected)
    assert float(rows["2"]["tumor_dice"]) == 0.0
    assert rows["2"]["tumor_hd95"] == "inf"  # tumor predicted empty: documented as infinite
    assert int(rows["2"]["lesion_detected"]) == 0 and int(rows["2"]["lesion_n_gt"]) > 0

    doc = _strict_json(out / "metrics.json")
    liver = doc["aggregate"]["voxel"]["liver"]
    assert liver["dice_per_case"] == pytest.approx((1.0 + expected) / 2)
    pooled = (
        2
        * (np.sum(gt >= 1) + np.sum((perturbed >= 1) & (gt >= 1)))
        / (2 * np.sum(gt >= 1) + np.sum(perturbed >= 1) + np.sum(gt >= 1))
    )
    assert liver["dice_global"] == pytest.approx(pooled)
    assert doc["aggregate"]["voxel"]["tumor"]["scores"]["hd95"]["n_inf"] == 1
    lesions = doc["aggregate"]["lesions"]
    assert lesions["recall"] == pytest.approx(0.5)  # all found in case 1, none in case 2
    assert {"versions", "machine", "build", "cases"} <= set(doc)
    assert doc["n_ok"] == 2 and doc["n_failed"] == 0
    assert doc["cases"][1]["scores"]["tumor"]["hd95"] == "inf"
    aggregate_rows = {(r["group"], r["metric"]): r for r in _rows(out / "metrics_aggregate.csv")}
    assert float(aggregate_rows[("liver", "dice_global")]["mean"]) == pytest.approx(pooled)
    screen = capsys.readouterr().out
    assert "Dice per case" in screen and "lesions:" in screen


def test_eval_reference_against_itself_is_perfect(data_dir, tmp_path):
    out = tmp_path / "out"
    rc = eval_cli.main(
        ["--pred", str(data_dir), "--gt", str(data_dir), "-o", str(out), "--no-progress", "-q"]
    )
    assert rc == 0
    rows = _rows(out / "metrics_per_case.csv")
    assert {r["case"] for r in rows} >= {"lits117_roi128", "lits_small64", "totalseg_abdomen3mm"}
    for r in rows:
        assert r["status"] == "ok"
        assert float(r["liver_dice"]) == 1.0 and float(r["tumor_dice"]) == 1.0
        assert float(r["burden_error"]) == 0.0 or r["burden_error"] == "nan"


def test_eval_as_a_program(pred_gt_dirs, tmp_path):
    pred_dir, gt_dir, _, _ = pred_gt_dirs
    # The child imports the same resunet_trt as this process (the installed package in CI, the tree here).
    package_root = str(Path(resunet_trt.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": package_root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "resunet_trt.cli.eval",
            "--pred",
            str(pred_dir),
            "--gt",
            str(gt_dir),
            "--no-surface",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Dice global" in proc.stdout


def test_eval_nothing_matched_exits_2(tmp_path, data_dir):
    img = nib.load(str(data_dir / "lits_small64" / "label.nii.gz"))
    _save_like(tmp_path / "pred" / "alpha_mask.nii.gz", np.zeros(img.shape), img)
    _save_like(tmp_path / "gt" / "beta.nii.gz", np.zeros(img.shape), img)
    rc = eval_cli.main(["--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--no-progress"])
    assert rc == 2


def test_eval_failed_case_exits_1_and_others_are_scored(pred_gt_dirs, tmp_path, data_dir):
    pred_dir, gt_dir, _, _ = pred_gt_dirs
    other = nib.load(str(data_dir / "lits117_roi128" / "label.nii.gz"))  # another grid
    _save_like(pred_dir / "volume-2_mask.nii.gz", np.asanyarray(other.dataobj), other)
    out = tmp_path / "out"
    rc = eval_cli.main(["--pred", str(pred_dir), "--gt", str(gt_dir), "-o", str(out), "--no-progress", "-q"])
    assert rc == 1
    rows = {r["case"]: r for r in _rows(out / "metrics_per_case.csv")}
    assert rows["1"]["status"] == "ok" and rows["2"]["status"] == "failed"
    assert "shape" in rows["2"]["error"]
    assert _strict_json(out / "metrics.json")["n_failed"] == 1


def test_eval_strict_counts_a_missing_prediction_as_failure(pred_gt_dirs):
    pred_dir, gt_dir, _, _ = pred_gt_dirs
    (pred_dir / "volume-2_mask.nii.gz").unlink()
    args = ["--pred", str(pred_dir), "--gt", str(gt_dir), "--no-progress", "-q", "--no-surface"]
    assert eval_cli.main(args) == 0
    assert eval_cli.main([*args, "--strict"]) == 1


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--pred", "x"],
        ["--gt", "x"],
        ["--pred", "x", "--gt", "y", "--data", "z"],
        ["--pred", "/nonexistent/folder", "--gt", "/nonexistent/other"],
        ["--pred", "x", "--gt", "y", "--save-masks"],
    ],
)
def test_eval_bad_arguments_exit_2(argv, capsys):
    assert eval_cli.main(argv) == 2
    assert "resunet-eval: error" in capsys.readouterr().err


# ---------------------------------------------------------------- resunet-eval --data --model (segment, then score)


def _case_folder(tmp_path: Path, data_dir: Path, name: str = "lits_small64") -> Path:
    root = tmp_path / "data"
    (root / name).mkdir(parents=True)
    for f in ("ct.nii.gz", "label.nii.gz"):
        shutil.copy(data_dir / name / f, root / name / f)
    return root


def test_eval_model_on_data_and_masks_round_trip(trained_checkpoint, data_dir, tmp_path):
    root = _case_folder(tmp_path, data_dir)
    out = tmp_path / "out"
    rc = eval_cli.main(
        [
            "--data",
            str(root),
            "--model",
            str(trained_checkpoint),
            "--device",
            "cpu",
            "--save-masks",
            "-o",
            str(out),
            "--no-progress",
            "-q",
        ]
    )
    assert rc == 0
    row = _rows(out / "metrics_per_case.csv")[0]
    assert row["case"] == "lits_small64" and row["status"] == "ok"
    mask = out / "masks" / "lits_small64_mask.nii.gz"
    ct = nib.load(str(root / "lits_small64" / "ct.nii.gz"))
    saved = nib.load(str(mask))
    assert saved.shape == ct.shape
    assert np.allclose(saved.affine, ct.affine, atol=1e-3)
    # The Dice reported equals the Dice of the written mask against the label, computed here on the raw files.
    pred = np.asanyarray(saved.dataobj).astype(np.uint8)
    gt = np.rint(np.asanyarray(nib.load(str(root / "lits_small64" / "label.nii.gz")).dataobj)).astype(
        np.uint8
    )
    assert float(row["liver_dice"]) == pytest.approx(_dice(pred >= 1, gt >= 1))
    doc = _strict_json(out / "metrics.json")
    assert doc["mode"] == "model"
    assert "infer" in doc["cases"][0]["scores"]["timings"]
    # Scoring the written masks as folders gives the same numbers.
    out2 = tmp_path / "out2"
    assert (
        eval_cli.main(
            ["--pred", str(out / "masks"), "--gt", str(root), "-o", str(out2), "--no-progress", "-q"]
        )
        == 0
    )
    again = _rows(out2 / "metrics_per_case.csv")[0]
    for key in ("liver_dice", "tumor_dice", "liver_assd", "lesion_detected"):
        assert again[key] == row[key], key


def test_eval_unreadable_model_exits_2(data_dir, tmp_path, capsys):
    root = _case_folder(tmp_path, data_dir)
    bad = _touch(tmp_path / "broken.onnx")
    assert eval_cli.main(["--data", str(root), "--model", str(bad), "--device", "cpu", "--no-progress"]) == 2
    assert "cannot open the model" in capsys.readouterr().err


# ---------------------------------------------------------------- resunet-bench


def test_bench_engine_without_tensorrt_says_how_to_install(tmp_path, capsys):
    if bench.tensorrt_available():
        pytest.skip("TensorRT is installed here")
    plan = _touch(tmp_path / "model.plan")
    assert bench.main(["--engine", str(plan)]) == 2
    err = capsys.readouterr().err
    assert "TensorRT is not installed" in err and "pip install tensorrt" in err


def _cropped_case(data_dir: Path, root: Path, slices: slice = slice(12, 20)) -> Path:
    """lits_small64 cut to a few slices (with tumor) through nibabel's slicer, which keeps the affine right."""
    case = root / "lits_small64_crop"
    case.mkdir(parents=True)
    for f in ("ct.nii.gz", "label.nii.gz"):
        nib.save(nib.load(str(data_dir / "lits_small64" / f)).slicer[:, :, slices], str(case / f))
    return case


def test_bench_checkpoint_on_labelled_data(trained_checkpoint, data_dir, tmp_path, capsys):
    out = tmp_path / "bench.json"
    case = _cropped_case(data_dir, tmp_path)
    rc = bench.main(
        [
            "--checkpoint",
            str(trained_checkpoint),
            "--data",
            str(case),
            "--device",
            "cpu",
            "--warmup",
            "1",
            "--repeats",
            "1",
            "--batch-size",
            "8",
            "--json",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    doc = _strict_json(out)
    assert {"machine", "device", "versions", "build", "inputs", "results", "arguments"} <= set(doc)
    assert doc["build"]["core_available"] is True
    (res,) = doc["results"]
    assert res["ok"] and res["backend"] == "torch" and res["device"] == "cpu"
    assert res["n_runs"] == 1 and len(res["runs"]) == 1
    for stage in ("preprocess", "infer", "decode", "postprocess", "read"):
        st = res["stages"][stage]
        assert 0 <= st["median"] <= st["p90"] <= st["max"]
    assert res["stages"]["infer"]["median"] > 0
    depth = doc["inputs"][0]["shape"][0]
    assert depth == 8
    assert res["slices_per_s"] == pytest.approx(depth / res["runs"][0]["wall_s"])
    assert res["peak_host_mib"] > 50
    assert res["gpu_memory"] is None
    acc = res["accuracy"]["lits_small64_crop"]
    assert set(acc) == {"liver_dice", "liver_iou", "tumor_dice", "tumor_iou"}
    assert 0.0 <= acc["liver_iou"] <= acc["liver_dice"] <= 1.0
    # IoU and Dice are tied by IoU = D / (2 - D).
    assert acc["liver_iou"] == pytest.approx(acc["liver_dice"] / (2 - acc["liver_dice"]))
    screen = capsys.readouterr().out
    assert "slices/s" in screen and "infer" in screen


def test_bench_compare_on_phantoms(trained_checkpoint, onnx_fp32, tmp_path, capsys):
    out = tmp_path / "cmp.json"
    rc = bench.main(
        [
            "--compare",
            f"{trained_checkpoint},{onnx_fp32}",
            "--synthetic",
            "8,64,64",
            "--device",
            "cpu",
            "--warmup",
            "0",
            "--repeats",
            "2",
            "--json",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    doc = _strict_json(out)
    assert [r["backend"] for r in doc["results"]] == ["torch", "onnxruntime"]
    assert doc["inputs"][0]["shape"] == [8, 64, 64]
    assert [r["n_runs"] for r in doc["results"]] == [2, 2]
    rel = doc["ratios"]
    assert [r["label"] for r in rel] == [Path(trained_checkpoint).name, Path(onnx_fp32).name]
    assert rel[0]["speedup_wall_median"] == 1.0
    base, other = doc["results"]
    assert rel[1]["speedup_wall_median"] == pytest.approx(
        base["wall_s"]["median"] / other["wall_s"]["median"]
    )
    # The fp32 export computes the same network: the phantom's Dice agrees closely.
    assert abs(rel[1]["liver_dice_minus_baseline"]) < 0.02
    assert "relative to" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["--data", "x", "--synthetic", "4,4,4"],
        ["--repeats", "0"],
        ["--warmup", "-1"],
        ["--compare", "onlyone.onnx"],
        ["--compare", "a.onnx,b.xyz"],
        ["--onnx", "/nonexistent/model.onnx"],
        ["--onnx", "a.onnx", "--checkpoint", "b.pt"],
        ["--data", "/nonexistent/folder"],
    ],
)
def test_bench_bad_arguments_exit_2(argv, capsys):
    assert bench.main(argv) == 2
    assert "resunet-bench: error" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "file", "backend"),
    [
        ("torch", "resunet_default.pt", "torch"),
        ("onnx", "resunet_default.onnx", "onnxruntime"),
        ("fp16", "resunet_default.fp16.onnx", "onnxruntime"),
        ("int8", "resunet_default.int8.onnx", "onnxruntime"),
    ],
)
def test_bench_compare_names_the_bundled_variants(monkeypatch, tmp_path, name, file, backend):
    monkeypatch.setattr("resunet_trt.backends.DEFAULT_MODEL_DIR", tmp_path)
    with pytest.raises(bench.UsageError, match="missing"):
        bench.parse_variant(name)
    _touch(tmp_path / file)
    variant = bench.parse_variant(name)
    assert (variant.model, variant.backend) == (tmp_path / file, backend)


@pytest.mark.parametrize(
    ("item", "backend"),
    [("m.plan", "tensorrt"), ("m.engine", "tensorrt"), ("m.onnx", "onnxruntime"), ("m.pt", "torch")],
)
def test_bench_compare_backend_follows_the_suffix(item, backend):
    assert bench.parse_variant(item).backend == backend


@pytest.mark.parametrize("text", ["4,4", "0,4,4", "a,b,c", "4,4,4,4"])
def test_bench_rejects_bad_shapes(text):
    with pytest.raises(SystemExit):
        bench.build_parser().parse_args(["--synthetic", text])


def test_percentile_summary_against_numpy():
    values = [0.3, 0.1, 0.2, 0.9, 0.5]
    s = bench.percentile_summary(values)
    assert s["median"] == 0.3 and s["p90"] == pytest.approx(np.percentile(values, 90)) and s["max"] == 0.9


def test_bench_load_probe_subtracts_its_own_cpu_time(monkeypatch):
    # Hand-computed: 6 busy CPU-seconds on the machine, 2 of them ours, over 2 s on 4 cores -> 4 / 8 = 0.5.
    busy = iter([100.0, 106.0])
    own = iter([10.0, 12.0])
    clock = iter([50.0, 52.0])
    monkeypatch.setattr(bench, "_cpu_busy_seconds", lambda: next(busy))
    monkeypatch.setattr(bench, "_own_cpu_seconds", lambda: next(own))
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(clock))
    probe = bench.LoadProbe()
    probe.cores = 4
    probe.start()
    out = probe.stop()
    assert out["other_cpu_fraction"] == pytest.approx(0.5)
    assert out["disturbed"] is True
    assert len(out["load_before"]) == len(out["load_after"]) == 3


def test_bench_load_probe_without_proc_stat_falls_back_to_load_average(monkeypatch):
    monkeypatch.setattr(bench, "_cpu_busy_seconds", lambda: None)
    probe = bench.LoadProbe()
    monkeypatch.setattr(bench.LoadProbe, "load_average", staticmethod(lambda: (0.6 * probe.cores, 0.0, 0.0)))
    probe.start()
    out = probe.stop()
    assert out["other_cpu_fraction"] is None
    assert out["disturbed"] is True
    monkeypatch.setattr(bench.LoadProbe, "load_average", staticmethod(lambda: (0.4 * probe.cores, 0.0, 0.0)))
    probe.start()
    assert probe.stop()["disturbed"] is False


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs Linux /proc/stat")
def test_bench_load_probe_sees_a_busy_neighbour():
    # Real processes spinning while this one sleeps: their CPU time is counted, ours (idle) is not.
    cores = os.cpu_count() or 1
    spin = "import time\nt = time.time()\nwhile time.time() - t < 1.5: pass"
    procs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(cores)]
    try:
        import time

        time.sleep(0.3)  # let them start
        probe = bench.LoadProbe()
        probe.start()
        time.sleep(0.8)
        out = probe.stop()
    finally:
        for p in procs:
            p.wait(timeout=30)
    assert out["other_cpu_fraction"] > 0.5
    assert out["disturbed"] is True


def test_bench_json_records_load_per_run(trained_checkpoint, tmp_path):
    out = tmp_path / "load.json"
    argv = ["--checkpoint", str(trained_checkpoint), "--synthetic", "4,64,64", "--device", "cpu"]
    rc = bench.main([*argv, "--warmup", "0", "--repeats", "2", "--json", str(out), "--no-progress"])
    assert rc == 0
    (res,) = _strict_json(out)["results"]
    assert len(res["runs"]) == 2
    for run in res["runs"]:
        assert len(run["load_before"]) == len(run["load_after"]) == 3
        assert all(v >= 0 for v in run["load_before"] + run["load_after"])
        assert isinstance(run["disturbed"], bool)
        assert run["other_cpu_fraction"] is None or run["other_cpu_fraction"] >= 0
    assert res["disturbed_runs"] == sum(run["disturbed"] for run in res["runs"])


# ---------------------------------------------------------------- benchmarks/gpu_check.sh

SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def test_gpu_check_is_valid_bash():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    if shutil.which("shellcheck"):
        proc = subprocess.run(
            ["shellcheck", "-S", "warning", str(SCRIPT)], capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, proc.stdout


def test_gpu_check_dry_run_lists_every_step(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "DRY_RUN": "1", "OUT": str(out)}
    proc = subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    for step in (
        "install",
        "build",
        "pytest_gpu",
        "bench_kernels",
        "bench_backends",
        "bench_pipeline",
        "resunet_bench",
    ):
        assert f"step {step}" in proc.stdout
    assert "pytest -m gpu" in proc.stdout
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all(p.is_file() for p in out.iterdir())
    summary = _strict_json(out / "gpu_check_summary.json")
    assert summary["dry_run"] is True and summary["failed"] == []
    assert {s["step"] for s in summary["steps"]} >= {"install", "build", "pytest_gpu", "resunet_bench"}
    assert all(s["status"] == "dry-run" for s in summary["steps"])
    assert "device" in summary


def test_gpu_check_needs_out(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "DRY_RUN")}
    proc = subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert proc.returncode == 2
    assert "OUT" in proc.stderr
