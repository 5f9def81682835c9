"""gs-dfd fit end to end on a tiny synthetic stack: outputs, determinism, resume, Ctrl-C, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from gs_dfd.cli import main
from gs_dfd.data.scene import load_scene
from gs_dfd.eval.metrics import depth_metrics
from gs_dfd.export.gaussian_ply import read_gaussian_ply
from gs_dfd.fit.dff import depth_from_focus
from gs_dfd.utils.outputs import partial_dir

FAST = ["--iterations", "6", "--no-progress", "--checkpoint-every", "2"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fit") / "scene"
    assert main(["synth", "procedural", "--kind", "occlusion", "--seed", "11", "--width", "64", "--height", "48",
                 "--focus-distances", "1", "2", "4", "--out", str(out), "--no-progress"]) == 0
    return out


def test_fit_writes_the_output_contract(stack, tmp_path):
    out = tmp_path / "fit"
    assert main(["fit", "--scene", str(stack), "--out", str(out), *FAST]) == 0
    depth = np.load(out / "depth.npy")
    assert depth.shape == (48, 64) and depth.dtype == np.float32 and np.isfinite(depth).all() and depth.min() > 0
    for name in ("depth.png", "aif.png", "confidence.npy", "gaussians.ply", "checkpoint.pt", "config.json",
                 "summary.png", "renders/000.png", "renders/002.png", "coc/000.npy", "coc/001.png"):
        assert (out / name).is_file(), name
    assert np.load(out / "coc/001.npy").shape == (48, 64)
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["frames"]) == 3 and metrics["frames"][0]["psnr"] > 15
    assert metrics["alignment"] is None  # a synthetic stack's shots are registered: nothing to move
    assert set(metrics["depth"]) >= {"abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "delta1", "delta2", "delta3"}
    cloud = read_gaussian_ply(out / "gaussians.ply")
    assert cloud.means.shape[0] == metrics["n_gaussians"] == 32 * 24
    assert not list(out.rglob("*.tmp*"))  # no temp files left behind


def test_fitting_never_needs_ground_truth(stack, tmp_path):
    blind = tmp_path / "blind"
    shutil.copytree(stack, blind)
    data = json.loads((blind / "scene.json").read_text())
    for key in ("depth_gt", "all_in_focus"):
        (blind / data.pop(key)).unlink()
    (blind / "scene.json").write_text(json.dumps(data))
    assert main(["fit", "--scene", str(blind), "--out", str(tmp_path / "o"), *FAST]) == 0
    assert json.loads((tmp_path / "o/metrics.json").read_text())["depth"] is None


def test_same_seed_same_result(stack, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        assert main(["fit", "--scene", str(stack), "--out", str(out), *FAST]) == 0
    np.testing.assert_array_equal(np.load(a / "depth.npy"), np.load(b / "depth.npy"))


def test_ctrl_c_leaves_a_checkpoint_that_resumes_exactly(stack, tmp_path, interrupt_fit, capsys):
    interrupt_fit(4)
    out = tmp_path / "o"
    assert main(["fit", "--scene", str(stack), "--out", str(out), *FAST]) == 130
    assert "interrupted at step 3" in capsys.readouterr().err
    assert not out.exists() and (partial_dir(out) / "checkpoint.pt").is_file()
    interrupt_fit(None)
    assert main(["fit", "--scene", str(stack), "--out", str(out), *FAST, "--resume"]) == 0
    straight = tmp_path / "straight"
    assert main(["fit", "--scene", str(stack), "--out", str(straight), *FAST]) == 0
    np.testing.assert_array_equal(np.load(out / "depth.npy"), np.load(straight / "depth.npy"))


def test_dff_method_and_bad_input(stack, tmp_path, capsys):
    out = tmp_path / "dff"
    assert main(["fit", "--scene", str(stack), "--out", str(out), "--method", "dff", "--no-progress"]) == 0
    assert np.load(out / "depth.npy").shape == (48, 64) and (out / "aif.png").is_file()
    capsys.readouterr()
    assert main(["fit", "--scene", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "scene folder not found" in err and len(err.strip().splitlines()) == 1
    assert main(["fit", "--scene", str(stack), "--out", str(out), "--no-progress"]) == 2  # not empty
    assert "output folder exists" in capsys.readouterr().err
    assert main(["fit", "--scene", str(stack), "--out", str(tmp_path / "y"), "--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main(["fit", "--scene", str(stack), "--out", str(tmp_path / "z"), "--sigma-per-coc", "0"]) == 2
    err = capsys.readouterr().err
    assert "--sigma-per-coc" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "z").exists()


def test_the_blur_model_reaches_the_renderer(stack, tmp_path):
    """--sigma-per-coc is the width of every rendered blur: a wider one renders the defocused frames smoother."""
    import imageio.v3 as iio

    sharpness = {}
    for k in ("0.25", "0.5"):
        out = tmp_path / k
        assert main(["fit", "--scene", str(stack), "--out", str(out), "--iterations", "1", "--no-progress",
                     "--sigma-per-coc", k]) == 0
        assert json.loads((out / "config.json").read_text())["sigma_per_coc"] == float(k)
        frames = [iio.imread(p).astype(np.float64) for p in sorted((out / "renders").glob("*.png"))]
        sharpness[k] = [np.mean(np.abs(np.diff(f, axis=1))) for f in frames]
    assert all(b < a for a, b in zip(sharpness["0.25"], sharpness["0.5"])), sharpness


def test_fit_improves_on_its_dff_start(stack, tmp_path):
    """The Gaussians must add to the focus-measure estimate they start from."""
    scene = load_scene(stack)
    gt = scene.load_depth_gt()
    dff = depth_from_focus(scene.load_frames(), np.array([f.focus_distance_m for f in scene.frames]))
    out = tmp_path / "o"
    assert main(["fit", "--scene", str(stack), "--out", str(out), "--iterations", "60", "--no-progress"]) == 0
    fit_err = depth_metrics(np.load(out / "depth.npy"), gt, 0.5, 4.0)["abs_rel"]
    dff_err = depth_metrics(dff.depth_m, gt, 0.5, 4.0)["abs_rel"]
    assert fit_err < dff_err, (fit_err, dff_err)


def test_shared_non_identity_pose_gives_the_same_depth(stack, tmp_path):
    """Frames carrying one world_to_cam: the reference camera moves with them, the depth map must not change."""
    posed = tmp_path / "posed"
    shutil.copytree(stack, posed)
    data = json.loads((posed / "scene.json").read_text())
    angle = 0.3
    pose = [[np.cos(angle), 0.0, np.sin(angle), 0.2], [0.0, 1.0, 0.0, -0.1], [-np.sin(angle), 0.0, np.cos(angle), 0.5],
            [0.0, 0.0, 0.0, 1.0]]
    for frame in data["frames"]:
        frame["world_to_cam"] = pose
    (posed / "scene.json").write_text(json.dumps(data))
    a, b = tmp_path / "a", tmp_path / "b"
    # Without the depth propagation: it works on the screen-space grid whatever the pose, and its solve spreads
    # the pose's float32 round-off over the textureless pixels that only it decides (median 0.3% here).
    assert main(["fit", "--scene", str(stack), "--out", str(a), *FAST, "--propagate", "off"]) == 0
    assert main(["fit", "--scene", str(posed), "--out", str(b), *FAST, "--propagate", "off"]) == 0
    # Same up to float32 round-off of the pose transform, which a few optimisation steps amplify where a
    # splat sits on an alpha threshold.
    rel = np.abs(np.load(b / "depth.npy") / np.load(a / "depth.npy") - 1)
    assert np.median(rel) < 1e-3 and np.percentile(rel, 99) < 0.03, (np.median(rel), rel.max())
    # The exported Gaussians live in world coordinates: moved by the inverse pose.
    ga, gb = read_gaussian_ply(a / "gaussians.ply"), read_gaussian_ply(b / "gaussians.ply")
    c2w = np.linalg.inv(np.array(pose))
    moved = ga.means @ c2w[:3, :3].T + c2w[:3, 3]
    assert np.median(np.linalg.norm(gb.means - moved, axis=1)) < 2e-3


def test_network_initialisation_for_an_aperture_pair(tmp_path, capsys):
    import torch

    from gs_dfd.models.siamese import SiameseDepthModel
    from gs_dfd.train.checkpoint import export_weights

    pair = tmp_path / "pair"
    assert main(["synth", "procedural", "--kind", "planes", "--seed", "2", "--width", "48", "--height", "32",
                 "--camera", "d3net", "--focus-distances", "1.7", "--f-numbers", "2.8", "8", "--out", str(pair),
                 "--no-progress"]) == 0
    torch.manual_seed(0)
    weights = tmp_path / "model.pt"
    export_weights(weights, SiameseDepthModel(), {"method": "gs-siamese"})
    out = tmp_path / "fit"
    assert main(["fit", "--scene", str(pair), "--out", str(out), "--init", "network", "--init-checkpoint", str(weights),
                 "--iterations", "1", "--no-progress"]) == 0
    assert "starting depth from the network" in capsys.readouterr().out
    assert main(["fit", "--scene", str(pair), "--out", str(tmp_path / "dff"), "--init", "dff", "--no-progress"]) == 2
    assert "two distinct focus distances" in capsys.readouterr().err


def test_the_pipeline_runs_without_the_command_line(stack, tmp_path):
    """gs_dfd.fit.pipeline.fit_scene is the whole fit (what `gs-dfd fit` and the training cache run): the same
    outputs, folder rule and config.json, from a config built in code."""
    from gs_dfd.fit.gaussian_fit import GaussianFitSettings
    from gs_dfd.fit.pipeline import FitSceneConfig, fit_scene
    from gs_dfd.utils.outputs import MARKER_FILE

    out = tmp_path / "lib"
    result = fit_scene(FitSceneConfig(scene=stack, out=out, progress=False, checkpoint_every=2,
                                      fit=GaussianFitSettings(iterations=6)))
    assert result.out == out and (out / MARKER_FILE).is_file() and not partial_dir(out).exists()
    np.testing.assert_array_equal(np.load(out / "depth.npy"), result.depth)
    assert result.metrics == json.loads((out / "metrics.json").read_text())
    cli = tmp_path / "cli"
    assert main(["fit", "--scene", str(stack), "--out", str(cli), *FAST]) == 0
    np.testing.assert_array_equal(np.load(cli / "depth.npy"), result.depth)


def test_every_setting_is_one_flag_and_one_flat_config_key(stack, tmp_path):
    """GaussianFitSettings is declared once: each field is the `fit` flag of its name, and config.json records
    it at the top level beside the command's settings (what the training cache's is_cached reads)."""
    import dataclasses

    from gs_dfd.commands.fit import FitConfig
    from gs_dfd.fit.gaussian_fit import GaussianFitSettings

    out = tmp_path / "o"
    assert main(["fit", "--scene", str(stack), "--out", str(out), "--iterations", "2", "--no-progress",
                 "--lr-uv", "0.04", "--propagate-colour-sigma", "0.2"]) == 0
    saved = json.loads((out / "config.json").read_text())
    settings = {f.name for f in dataclasses.fields(GaussianFitSettings)}
    command = {f.name for f in dataclasses.fields(FitConfig)} - {"fit"}
    assert not settings & command and "fit" not in saved
    assert settings | command <= set(saved)
    assert saved["lr_uv"] == 0.04 and saved["propagate_colour_sigma"] == 0.2 and saved["iterations"] == 2
    assert saved["propagate"] == "auto" and saved["scene"] == str(stack)


@pytest.mark.parametrize("flag, value", [("--propagate-at-fraction", "1.5"), ("--lr-uv", "0"), ("--lr-uv", "nan"),
                                         ("--lr-final-ratio", "0"), ("--min-shift-px", "-1"),
                                         ("--checkpoint-every", "0")])
def test_every_setting_is_checked_up_front(stack, tmp_path, capsys, flag, value):
    assert main(["fit", "--scene", str(stack), "--out", str(tmp_path / "o"), flag, value]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and flag in err and "\n" not in err, err
    assert not (tmp_path / "o").exists() and not partial_dir(tmp_path / "o").exists()


def test_a_resume_with_a_changed_advanced_setting_is_refused(stack, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["fit", "--scene", str(stack), "--out", str(out), *FAST]) == 0
    assert main(["fit", "--scene", str(stack), "--out", str(out), *FAST, "--resume", "--lr-size", "0.02"]) == 2
    err = capsys.readouterr().err
    assert "--lr-size 0.01 -> 0.02" in err and len(err.strip().splitlines()) == 1, err
