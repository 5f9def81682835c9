"""``gs-dfd eval`` against an independent, written-out computation of the eight depth metrics."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from conftest import edit_scene_json, write_tiny_scene
from gs_dfd.cli import main
from test_cli import test_help_documents_every_flag as _check_help

KEYS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "delta1", "delta2", "delta3")
LO, HI = 0.5, 4.0


def reference_metrics(pred: np.ndarray, gt: np.ndarray, lo: float = LO, hi: float = HI, clamp: bool = True) -> dict:
    """Pixel by pixel, from the definitions (Eigen et al. 2014; monodepth2's clamping; natural-log RMSE-log)."""
    pairs = []
    for i in range(gt.shape[0]):
        for j in range(gt.shape[1]):
            g = float(gt[i, j])
            if not math.isfinite(g) or g <= 0 or g < lo or g > hi:
                continue
            p = float(pred[i, j])
            if clamp:
                p = hi if not math.isfinite(p) else min(max(p, lo), hi)
            pairs.append((p, g))
    n = len(pairs)
    thresh = [sum(max(p / g, g / p) < 1.25**k for p, g in pairs) / n for k in (1, 2, 3)]
    return {
        "abs_rel": sum(abs(p - g) / g for p, g in pairs) / n,
        "sq_rel": sum((p - g) ** 2 / g for p, g in pairs) / n,
        "rmse": math.sqrt(sum((p - g) ** 2 for p, g in pairs) / n),
        "rmse_log": math.sqrt(sum((math.log(p) - math.log(g)) ** 2 for p, g in pairs) / n),
        "log10": sum(abs(math.log10(p) - math.log10(g)) for p, g in pairs) / n,
        "delta1": thresh[0], "delta2": thresh[1], "delta3": thresh[2],
        "valid_px": n,
    }


def random_gt(rng: np.random.Generator, invalid_fraction: float = 0.1) -> np.ndarray:
    """[24, 32] metres with zeros, NaN and depths outside 0.5-4 m."""
    gt = rng.uniform(0.3, 5.0, (24, 32)).astype(np.float32)
    gt[rng.random(gt.shape) < invalid_fraction] = 0.0
    gt[rng.random(gt.shape) < 0.05] = np.nan
    return gt


def random_pred(rng: np.random.Generator, gt: np.ndarray, holes: bool = True) -> np.ndarray:
    """The ground truth times log-normal noise; with holes: NaN, inf, 0, negative and far predictions."""
    base = np.where(np.isfinite(gt) & (gt > 0), gt, 2.0)
    pred = (base * np.exp(0.3 * rng.standard_normal(gt.shape))).astype(np.float32)
    if holes:
        flat = pred.reshape(-1)
        idx = rng.choice(flat.size, 25, replace=False)
        flat[idx[:5]] = np.nan
        flat[idx[5:10]] = np.inf
        flat[idx[10:15]] = 0.0
        flat[idx[15:20]] = -1.0
        flat[idx[20:25]] = 12.0
    return pred


def make_scene(root: Path, gt: np.ndarray, seed: int = 0) -> Path:
    write_tiny_scene(root, n_frames=2, seed=seed)
    np.save(root / "depth_gt.npy", gt)  # NaN is allowed in the file: the loader treats it as invalid
    return root


def assert_matches(got: dict, want: dict) -> None:
    for k in KEYS:
        assert got[k] == pytest.approx(want[k], abs=1e-3, rel=1e-3), k
    if "valid_px" in want and "valid_px" in got:
        assert got["valid_px"] == want["valid_px"]


def run_eval(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["eval", "--no-progress", *map(str, args)])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture
def single(tmp_path):
    rng = np.random.default_rng(1)
    gt = random_gt(rng)
    pred = random_pred(rng, gt)
    scene = make_scene(tmp_path / "scene", gt)
    np.save(tmp_path / "pred.npy", pred)
    return scene, tmp_path / "pred.npy", gt, pred


# --------------------------------------------------------------------------- single form


def test_single_matches_reference(single, tmp_path, capsys):
    scene, pred_path, gt, pred = single
    out = tmp_path / "ev"
    code, stdout, _ = run_eval(capsys, "--scene", scene, "--depth", pred_path, "--min-depth", LO, "--max-depth", HI,
                               "--out", out)
    assert code == 0 and "AbsRel" in stdout
    m = json.loads((out / "metrics.json").read_text())
    want = reference_metrics(pred, gt)
    assert_matches(m["depth"], want)
    assert m["valid_px"] == m["depth"]["valid_px"] == want["valid_px"] < gt.size
    assert m["range_m"] == [LO, HI] and m["clamp_prediction"] is True
    assert "natural log" in m["conventions"]["rmse_log"] and "per image" in m["conventions"]["averaging"]
    valid = np.isfinite(gt) & (gt >= LO) & (gt <= HI)
    outside = valid & ~(np.isfinite(pred) & (pred >= LO) & (pred <= HI))
    assert m["depth"]["out_of_range_px"] == int(outside.sum()) > 0
    panel = iio.imread(out / "panel.png")
    assert panel.ndim == 3 and panel.shape[1] >= 600 and panel.shape[0] >= 150
    assert (out / "config.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ev.")]  # no temp left behind


def test_single_range_flags_change_the_mask(single, tmp_path, capsys):
    scene, pred_path, gt, pred = single
    code, _, _ = run_eval(capsys, "--scene", scene, "--depth", pred_path, "--min-depth", 1.0, "--max-depth", 3.0,
                          "--out", tmp_path / "ev")
    assert code == 0
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert_matches(m["depth"], reference_metrics(pred, gt, 1.0, 3.0))
    assert m["range_m"] == [1.0, 3.0]


def test_no_clamp_uses_raw_predictions_and_refuses_holes(single, tmp_path, capsys):
    scene, pred_path, gt, _ = single
    rng = np.random.default_rng(5)
    clean = random_pred(rng, gt, holes=False)
    clean.reshape(-1)[:40] = 9.0  # far beyond the range, kept as is
    np.save(tmp_path / "clean.npy", clean)
    code, _, _ = run_eval(capsys, "--scene", scene, "--depth", tmp_path / "clean.npy", "--no-clamp-prediction",
                          "--out", tmp_path / "ev")
    assert code == 0
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert_matches(m["depth"], reference_metrics(clean, gt, clamp=False))
    assert m["depth"]["abs_rel"] != pytest.approx(reference_metrics(clean, gt)["abs_rel"], abs=1e-3)

    code, _, err = run_eval(capsys, "--scene", scene, "--depth", pred_path, "--no-clamp-prediction",
                            "--out", tmp_path / "ev2")
    assert_one_line_error(code, err, str(pred_path), "non-finite or <= 0")
    assert not (tmp_path / "ev2").exists()


def test_single_aif_image_metrics(single, tmp_path, capsys):
    from gs_dfd.data.images import read_image, write_png
    from gs_dfd.eval.metrics import psnr

    scene, pred_path, _, _ = single
    target = read_image(scene / "aif.png")
    noisy = np.clip(target + 0.05 * np.random.default_rng(2).standard_normal(target.shape), 0, 1)
    write_png(tmp_path / "aif_pred.png", noisy)
    code, stdout, _ = run_eval(capsys, "--scene", scene, "--depth", pred_path, "--aif", tmp_path / "aif_pred.png",
                               "--out", tmp_path / "ev")
    assert code == 0 and "PSNR" in stdout
    img = json.loads((tmp_path / "ev" / "metrics.json").read_text())["image"]
    assert img["psnr"] == pytest.approx(psnr(read_image(tmp_path / "aif_pred.png"), target), abs=1e-6)
    assert 0 < img["ssim"] < 1
    assert img["lpips"] == "unavailable" and img["lpips_reason"] or isinstance(img["lpips"], float)


# --------------------------------------------------------------------------- folder form


@pytest.fixture
def folder(tmp_path):
    """Three scenes with very different numbers of valid pixels; two prediction layouts."""
    rng = np.random.default_rng(7)
    scenes, preds = tmp_path / "scenes", tmp_path / "preds"
    data = {}
    for k, (name, invalid) in enumerate((("alpha", 0.05), ("beta", 0.9), ("gamma", 0.3))):
        gt = random_gt(rng, invalid)
        pred = random_pred(rng, gt)
        make_scene(scenes / name, gt, seed=k)
        target = preds / name / "depth.npy" if name != "gamma" else preds / f"{name}.npy"
        target.parent.mkdir(parents=True, exist_ok=True)
        np.save(target, pred)
        data[name] = (gt, pred)
    (scenes / "notes").mkdir()  # a folder without scene.json is not a scene
    return scenes, preds, data


def test_folder_matches_reference_per_image_then_mean(folder, tmp_path, capsys):
    scenes, preds, data = folder
    out = tmp_path / "ev"
    code, stdout, _ = run_eval(capsys, "--scenes", scenes, "--predictions", preds, "--out", out)
    assert code == 0 and "3 scenes" in stdout
    per = {name: reference_metrics(pred, gt) for name, (gt, pred) in data.items()}
    mean = {k: float(np.mean([per[n][k] for n in per])) for k in KEYS}

    m = json.loads((out / "metrics.json").read_text())
    assert m["count"] == 3 and m["range_m"] == [LO, HI] and m["missing"] == []
    assert_matches(m["depth"], mean)
    assert [s["scene"] for s in m["per_scene"]] == ["alpha", "beta", "gamma"]
    for s in m["per_scene"]:
        assert_matches(s, per[s["scene"]])
    assert m["per_scene"][2]["prediction"].endswith("gamma.npy")

    # Averaging over images differs from pooling all pixels (beta has few valid pixels).
    pooled = reference_metrics(np.concatenate([p for _, p in data.values()]),
                               np.concatenate([g for g, _ in data.values()]))
    assert abs(pooled["abs_rel"] - mean["abs_rel"]) > 1e-3 or abs(pooled["rmse"] - mean["rmse"]) > 1e-3

    with open(out / "per_scene.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["scene"] for r in rows] == ["alpha", "beta", "gamma"]
    assert set(KEYS) | {"valid_px"} <= set(rows[0])
    for r in rows:
        assert_matches({k: float(r[k]) for k in KEYS}, per[r["scene"]])
        assert int(r["valid_px"]) == per[r["scene"]]["valid_px"]

    report = (out / "report.md").read_text()
    assert "| scene | valid px | AbsRel |" in report
    for name in data:
        assert f"| {name} | {per[name]['valid_px']} | {per[name]['abs_rel']:.4f} |" in report
    assert "**mean of 3 scenes**" in report and f"**{mean['abs_rel']:.4f}**" in report
    assert "natural log" in report and "0.5-4 m" in report
    assert f"gs-dfd eval --scenes {scenes} --predictions {preds}" in report

    for name in data:
        panel = iio.imread(out / "panels" / f"{name}.png")
        assert panel.ndim == 3 and panel.shape[1] >= 600
    assert sorted(p.name for p in (out / "panels").iterdir()) == ["alpha.png", "beta.png", "gamma.png"]


def test_folder_missing_prediction(folder, tmp_path, capsys):
    scenes, preds, data = folder
    (preds / "beta" / "depth.npy").unlink()
    code, _, err = run_eval(capsys, "--scenes", scenes, "--predictions", preds, "--out", tmp_path / "ev")
    assert_one_line_error(code, err, str(preds), "beta", "--allow-missing")
    assert not (tmp_path / "ev").exists()

    code, _, err = run_eval(capsys, "--scenes", scenes, "--predictions", preds, "--allow-missing",
                            "--out", tmp_path / "ev")
    assert code == 0 and "beta" in err  # a warning
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["missing"] == ["beta"] and m["count"] == 2
    per = [reference_metrics(p, g) for n, (g, p) in data.items() if n != "beta"]
    assert_matches(m["depth"], {k: float(np.mean([r[k] for r in per])) for k in KEYS})
    assert "`beta`" in (tmp_path / "ev" / "report.md").read_text()


def test_folder_scene_without_depth_gt(folder, tmp_path, capsys):
    scenes, preds, _ = folder
    edit_scene_json(scenes / "gamma", lambda d: d.pop("depth_gt"))
    code, _, err = run_eval(capsys, "--scenes", scenes, "--predictions", preds, "--out", tmp_path / "ev")
    assert_one_line_error(code, err, str(scenes / "gamma" / "scene.json"), "depth_gt")
    assert not (tmp_path / "ev").exists()


def test_folder_wrong_size_prediction(folder, tmp_path, capsys):
    scenes, preds, _ = folder
    np.save(preds / "beta" / "depth.npy", np.ones((20, 32), np.float32))
    code, _, err = run_eval(capsys, "--scenes", scenes, "--predictions", preds, "--out", tmp_path / "ev")
    assert_one_line_error(code, err, str(preds / "beta" / "depth.npy"), "32x20", "32x24")
    assert not (tmp_path / "ev").exists()


def test_overwrite(folder, tmp_path, capsys):
    scenes, preds, _ = folder
    out = tmp_path / "ev"
    assert run_eval(capsys, "--scenes", scenes, "--predictions", preds, "--out", out)[0] == 0
    (out / "old.txt").write_text("old")
    code, _, err = run_eval(capsys, "--scenes", scenes, "--predictions", preds, "--out", out)
    assert_one_line_error(code, err, str(out), "--overwrite")
    assert (out / "old.txt").is_file()
    code, _, _ = run_eval(capsys, "--scenes", scenes, "--predictions", preds, "--out", out, "--overwrite")
    assert code == 0 and (out / "report.md").is_file() and not (out / "old.txt").exists()  # no stale file
    mine = tmp_path / "mine"  # a folder gs-dfd did not write is never replaced
    mine.mkdir()
    (mine / "keep.txt").write_text("keep")
    code, _, err = run_eval(capsys, "--scenes", scenes, "--predictions", preds, "--out", mine, "--overwrite")
    assert_one_line_error(code, err, str(mine), "did not write")
    assert (mine / "keep.txt").read_text() == "keep"


# --------------------------------------------------------------------------- bad input


def test_single_wrong_size(single, tmp_path, capsys):
    scene, _, _, _ = single
    np.save(tmp_path / "small.npy", np.ones((12, 16), np.float32))
    code, _, err = run_eval(capsys, "--scene", scene, "--depth", tmp_path / "small.npy", "--out", tmp_path / "ev")
    assert_one_line_error(code, err, str(tmp_path / "small.npy"), "16x12", "32x24", "--depth")
    assert not (tmp_path / "ev").exists()


@pytest.mark.parametrize("make, needles", [
    (lambda t: np.save(t / "bad.npy", np.ones((24, 32), np.int32)), ("bad.npy", "float")),
    (lambda t: np.save(t / "bad.npy", np.ones((24, 32, 3), np.float32)), ("bad.npy", "H x W")),
    (lambda t: (t / "bad.npy").write_bytes(b"not numpy"), ("bad.npy", "cannot read")),
    (lambda t: None, ("bad.npy", "not found")),
])
def test_single_bad_prediction_file(single, tmp_path, capsys, make, needles):
    scene, _, _, _ = single
    make(tmp_path)
    code, _, err = run_eval(capsys, "--scene", scene, "--depth", tmp_path / "bad.npy", "--out", tmp_path / "ev")
    assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "ev").exists()


def test_single_without_depth_gt(single, tmp_path, capsys):
    scene, pred_path, _, _ = single
    edit_scene_json(scene, lambda d: d.pop("depth_gt"))
    code, _, err = run_eval(capsys, "--scene", scene, "--depth", pred_path, "--out", tmp_path / "ev")
    assert_one_line_error(code, err, str(scene / "scene.json"), "field 'depth_gt'")
    assert not (tmp_path / "ev").exists()


def test_aif_without_scene_all_in_focus(single, tmp_path, capsys):
    scene, pred_path, _, _ = single
    edit_scene_json(scene, lambda d: d.pop("all_in_focus"))
    code, _, err = run_eval(capsys, "--scene", scene, "--depth", pred_path, "--aif", scene / "aif.png",
                            "--out", tmp_path / "ev")
    assert_one_line_error(code, err, "scene.json", "all_in_focus")
    assert not (tmp_path / "ev").exists()


@pytest.mark.parametrize("args, needle", [
    (["--scene", "S", "--depth", "D", "--scenes", "S", "--predictions", "P"], "exactly one"),
    ([], "either"),
    (["--scene", "S"], "--depth"),
    (["--predictions", "P"], "--scenes"),
    (["--scenes", "S", "--predictions", "P", "--aif", "A.png"], "--aif"),
    (["--scene", "S", "--depth", "D", "--min-depth", "4", "--max-depth", "1"], "--min-depth"),
    (["--scene", "S", "--depth", "D", "--frame", "-1"], "--frame"),
])
def test_wrong_flag_combinations(tmp_path, capsys, args, needle):
    args = [str(tmp_path / a) if a in ("S", "D", "P", "A.png") else a for a in args]
    code, _, err = run_eval(capsys, *args, "--out", tmp_path / "ev")
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "ev").exists()


def test_frame_out_of_range_and_output_inside_input(single, tmp_path, capsys):
    scene, pred_path, _, _ = single
    code, _, err = run_eval(capsys, "--scene", scene, "--depth", pred_path, "--frame", 5, "--out", tmp_path / "ev")
    assert_one_line_error(code, err, "scene.json", "--frame 5", "2 frames")
    code, _, err = run_eval(capsys, "--scene", scene, "--depth", pred_path, "--out", scene, "--overwrite")
    assert_one_line_error(code, err, "--out")
    assert (scene / "scene.json").is_file()


def test_help_documents_every_flag(capsys):
    _check_help(["eval", "--help"], capsys)
