"""Coarse start: a large stack is fitted block-averaged first, and the full-resolution fit starts from that fit's
depth, warps, lens and exposure (gs_dfd.fit.coarse_start)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gs_dfd.cli import main
from gs_dfd.data.registration import warp_to_reference
from gs_dfd.data.scene import load_scene
from gs_dfd.errors import InputError
from gs_dfd.fit.coarse_start import FitStart, block_averaged_scene, fit_start, start_factor, upsample_map
from gs_dfd.fit.gaussian_fit import GaussianFitSettings, build_state
from gs_dfd.fit.model import block_mean


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Path:
    """128x96, four focus distances, content 0.6-4 m."""
    out = tmp_path_factory.mktemp("coarse_start") / "scene"
    assert main(["synth", "procedural", "--kind", "occlusion", "--seed", "2", "--width", "128", "--height", "96",
                 "--focus-distances", "0.8", "1.2", "2", "4", "--out", str(out), "--no-progress"]) == 0
    return out


def test_the_factor_brings_the_larger_side_under_the_limit():
    assert start_factor(512, 1920, 1080) == 4
    assert start_factor(512, 960, 540) == 2
    assert start_factor(512, 1024, 768) == 2
    assert start_factor(512, 512, 384) == 1
    assert start_factor(0, 6000, 4000) == 1  # off


def test_the_block_averaged_camera_sees_the_same_world_in_larger_pixels(stack):
    scene = load_scene(stack)
    frames = scene.load_frames()
    small, small_frames = block_averaged_scene(scene, frames, 4)
    cam, cc = scene.camera, small.camera
    assert (cc.width, cc.height) == (32, 24) and small_frames.shape == (4, 24, 32, 3)
    np.testing.assert_allclose(small_frames[2, 5, 7], frames[2, 20:24, 28:32].mean(axis=(0, 1)), atol=1e-6)
    point = np.array([0.21, -0.13, 1.7])  # metres, camera frame
    fine = [cam.fx * point[0] / point[2] + cam.cx, cam.fy * point[1] / point[2] + cam.cy]
    coarse = [cc.fx * point[0] / point[2] + cc.cx, cc.fy * point[1] / point[2] + cc.cy]
    np.testing.assert_allclose(np.array(coarse) * 4, fine, rtol=1e-12)  # pixel edges at 0 in both grids
    for i in range(4):  # every CoC shrinks with the pixels
        assert small.lens(i).coc_px(2.5) == pytest.approx(scene.lens(i).coc_px(2.5) / 4, rel=1e-9)
    assert small.depth_gt is None and small.all_in_focus is None  # the coarse fit cannot read ground truth


def test_upsampling_interpolates_between_block_centres():
    y, x = np.mgrid[0:12, 0:16].astype(np.float32)
    fine = 0.3 * x + 0.1 * y + 2.0  # linear: bilinear interpolation must reproduce it inside
    coarse = block_mean(fine, 4)  # [3, 4], the values at the block centres
    up = upsample_map(coarse, 4, 18, 13)  # two ragged columns and one row beyond the blocks
    assert up.shape == (13, 18)
    np.testing.assert_allclose(up[2:10, 2:14], fine[2:10, 2:14], atol=1e-5)
    np.testing.assert_array_equal(up[12], up[11])  # the ragged border repeats the last row
    np.testing.assert_allclose(upsample_map(np.full((3, 4), 0.7, np.float32), 4, 16, 12), 0.7, atol=1e-6)


def test_the_start_carries_depth_warps_lens_and_exposure_to_full_resolution(stack, tmp_path):
    scene = load_scene(stack)
    frames = scene.load_frames()
    # Frame 2 shifted by (4, -2) px and 20 % brighter; the others registered.
    frames[2] = np.clip(1.2 * warp_to_reference(frames[2], np.array([0.0, 0.0, -4.0, 2.0]),
                                                (scene.camera.cx, scene.camera.cy)), 0, 1)
    settings = GaussianFitSettings(iterations=40, start_max_px=64, calibrate_sweep=True, propagate_smoothness=0.0)
    start = fit_start(scene, frames, settings)
    assert start.factor == 2 and start.inv_depth.shape == (48, 64) and start.steps == 40  # both sizes: 360 by default
    assert start.moved == [False, False, True, False]
    np.testing.assert_allclose(start.warps[2, 2:], [4.0, -2.0], atol=0.5)  # full-resolution pixels
    assert float(torch.exp(start.exposure["log_gain"][1]).mean()) > 1.05  # frame 2's gain was learned
    # Save and load: the same start, read without running code.
    start.save(tmp_path / "start.pt")
    back = FitStart.load(tmp_path / "start.pt")
    np.testing.assert_array_equal(back.inv_depth, start.inv_depth)
    assert back.moved == start.moved and back.factor == 2
    # The full-resolution state starts where the coarse fit ended.
    state = build_state(scene, frames, settings, start=back)
    assert state.warp.moved(2) and not state.warp.moved(1)
    np.testing.assert_allclose(state.warp.params()[2, 2:].detach().numpy(), start.warps[2, 2:], atol=1e-5)
    gh, gw = state.grid_hw
    expected = block_mean(start.inv_depth_at(128, 96), settings.stride)
    np.testing.assert_allclose(state.model.inv_depth.detach().numpy().reshape(gh, gw), expected, rtol=1e-5)
    for key, value in start.lens.items():
        torch.testing.assert_close(state.lens.state_dict()[key], value)
    torch.testing.assert_close(state.exposure.log_gain.detach(), start.exposure["log_gain"])


def test_a_broken_start_file_is_one_line(tmp_path):
    bad = tmp_path / "coarse_start.pt"
    torch.save({"format": "gs_dfd.fit_start/1", "factor": 2}, bad)
    with pytest.raises(InputError, match="not a complete coarse start"):
        FitStart.load(bad)
    torch.save({"format": "something else"}, bad)
    with pytest.raises(InputError, match="not a gs_dfd coarse start"):
        FitStart.load(bad)


def test_fit_starts_coarse_and_resumes_from_the_saved_start(stack, tmp_path, interrupt_fit):
    common = ["--scene", str(stack), "--start-max-px", "64", "--no-progress", "--checkpoint-every", "5",
              "--propagate", "off"]
    out = tmp_path / "fit"
    interrupt_fit(30)  # the coarse fit takes 24 steps too (both sizes default to 360): the 30th loss is in the full fit
    assert main(["fit", "--out", str(out), "--iterations", "24", *common]) == 130
    interrupt_fit(None)
    assert main(["fit", "--out", str(out), "--iterations", "24", *common, "--resume"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["coarse_start"]["factor"] == 2 and metrics["coarse_start"]["size"] == [64, 48]
    assert metrics["iterations"] == 24
    straight = tmp_path / "straight"
    assert main(["fit", "--out", str(straight), "--iterations", "24", *common]) == 0
    np.testing.assert_array_equal(np.load(out / "depth.npy"), np.load(straight / "depth.npy"))
    assert (straight / "coarse_start.pt").is_file()
    off = tmp_path / "off"
    assert main(["fit", "--out", str(off), "--iterations", "4", *common[:2], "--start-max-px", "0",
                 "--no-progress"]) == 0
    assert json.loads((off / "metrics.json").read_text())["coarse_start"] is None


def test_the_full_resolution_fit_refines_depth_with_a_smaller_step(stack):
    scene = load_scene(stack)
    frames = scene.load_frames()
    settings = GaussianFitSettings(iterations=2, start_max_px=64, lr_inv_depth=0.02, start_lr_inv_depth_ratio=0.25)
    start = fit_start(scene, frames, settings)
    lr = {g["name"]: g["initial_lr"] for g in build_state(scene, frames, settings, start=start).optimizer.param_groups}
    assert lr["inv_depth"] == pytest.approx(0.005) and lr["uv"] == settings.lr_uv
    plain = {g["name"]: g["initial_lr"] for g in build_state(scene, frames, settings).optimizer.param_groups}
    assert plain["inv_depth"] == pytest.approx(0.02)


def test_each_pixel_takes_its_colour_from_the_frame_focused_nearest_its_depth(stack):
    from gs_dfd.fit.gaussian_fit import colours_in_focus
    from gs_dfd.fit.lens_calibration import LensModel

    scene = load_scene(stack)  # focus 0.8, 1.2, 2, 4 m
    frames = np.stack([np.full((96, 128, 3), k / 10, np.float32) for k in range(4)])  # frame k is grey k / 10
    depth = np.full((96, 128), 4.5, np.float32)
    depth[:, :40], depth[:, 40:80] = 0.85, 1.9
    colours = colours_in_focus(frames, LensModel.from_scene(scene), 1.0 / depth)
    np.testing.assert_allclose(colours[0, [0, 60, 100], 0], [0.0, 0.2, 0.3])


def test_a_checkpoint_from_before_the_coarse_start_resumes_only_without_it(stack, tmp_path, capsys):
    """A fit that ran without a start (an earlier version, or --start-max-px 0) has no coarse_start.pt: resuming it
    with a start would rebuild another problem, so it is refused in one line, and resumes with the start off."""
    out = tmp_path / "fit"
    common = ["--scene", str(stack), "--out", str(out), "--no-progress", "--propagate", "off"]
    assert main(["fit", *common, "--iterations", "3", "--start-max-px", "0"]) == 0
    assert main(["fit", *common, "--iterations", "5", "--start-max-px", "64", "--resume"]) == 2  # config.json differs
    config = json.loads((out / "config.json").read_text())
    del config["start_max_px"], config["start_lr_inv_depth_ratio"]  # as an earlier gs-dfd wrote it
    (out / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["fit", *common, "--iterations", "5", "--start-max-px", "64", "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "without a coarse start" in err and "--start-max-px 0" in err and len(err.splitlines()) == 1
    assert main(["fit", *common, "--iterations", "5", "--start-max-px", "0", "--resume"]) == 0
    assert json.loads((out / "metrics.json").read_text())["iterations"] == 5
