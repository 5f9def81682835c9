"""A fit whose step cost depends on neither the stack's length nor the frame size: a few frames and one window
per step, with only the Gaussians that can reach it, and an optimiser step that leaves the others alone."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from gs_dfd.cli import main
from gs_dfd.data.scene import load_scene
from gs_dfd.eval.metrics import depth_metrics
from gs_dfd.fit import gaussian_fit as gf
from gs_dfd.fit.gaussian_fit import GaussianFitSettings, build_state, render_frames, total_steps


@pytest.fixture(scope="module")
def long_stack(tmp_path_factory) -> Path:
    """Eight frames, 96x72: longer than a step's frames and wider than a small window."""
    out = tmp_path_factory.mktemp("windows") / "scene"
    assert main(["synth", "procedural", "--kind", "occlusion", "--seed", "5", "--width", "96", "--height", "72",
                 "--focus-distances", "0.8", "1", "1.3", "1.7", "2.2", "3", "4", "6", "--out", str(out),
                 "--no-progress"]) == 0
    return out


def test_default_steps_grow_with_the_windows_a_frame_holds():
    s = GaussianFitSettings()
    assert total_steps(s, 320, 240) == gf.BASE_ITERATIONS  # one window: the steps of a small fit
    assert total_steps(s, 768, 768) == 2 * gf.BASE_ITERATIONS  # four windows: twice the steps
    assert total_steps(s, 1536, 1536) == 4 * gf.BASE_ITERATIONS
    assert total_steps(replace(s, iterations=7), 4000, 3000) == 7  # an explicit count is kept


def test_step_frames_take_one_from_each_part_of_the_sweep(long_stack):
    scene = load_scene(long_stack)
    torch.manual_seed(0)
    draws = [gf.step_frames(scene, 4) for _ in range(200)]
    order = gf._focus_order(scene)
    parts = [set(p.tolist()) for p in np.array_split(np.array(order), 4)]
    assert all(len(d) == 4 and all(len(set(d) & p) == 1 for p in parts) for d in draws)
    assert set().union(*map(set, draws)) == set(range(8))  # every frame is visited
    assert gf.step_frames(scene, 8) == list(range(8))


def test_windows_cover_the_whole_frame_borders_included(long_stack):
    scene = load_scene(long_stack)
    settings = GaussianFitSettings(tile_px=40)
    torch.manual_seed(0)
    seen = np.zeros((72, 96), int)
    for _ in range(400):
        x0, y0, w, h = gf.step_window(scene, settings)
        assert (w, h) == (40, 40) and 0 <= x0 <= 56 and 0 <= y0 <= 32
        seen[y0:y0 + h, x0:x0 + w] += 1
    assert seen.min() > 0.2 * seen.mean()  # corners are visited, not only the middle


def test_a_window_rendered_with_its_active_gaussians_matches_the_full_render(long_stack):
    scene = load_scene(long_stack)
    frames = scene.load_frames()
    state = build_state(scene, frames, GaussianFitSettings(iterations=1, tile_px=40))
    window = (30, 20, 40, 40)
    ids = [0, 3, 7]
    picked = gf.active_gaussians(state, scene, ids, window)
    assert picked is not None and 0 < len(picked[0]) < state.model.n
    with torch.no_grad():
        full = render_frames(state, scene, "cpu", ids)["rgb"][:, 20:60, 30:70]
        part = render_frames(state, scene, "cpu", ids, window, active=picked[0])["rgb"]
    assert part.shape == full.shape
    assert float((part - full).abs().max()) < 2e-3  # the Gaussians left out cannot reach the window


def test_the_optimiser_step_leaves_gaussians_outside_the_window_untouched(long_stack):
    scene = load_scene(long_stack)
    frames = scene.load_frames()
    settings = GaussianFitSettings(iterations=3, tile_px=40, frames_per_step=2, propagate_smoothness=0.0)
    state = build_state(scene, frames, settings)
    before = {name: getattr(state.model, name).detach().clone() for name in gf._PER_GAUSSIAN}
    touched = torch.zeros(state.model.n, dtype=torch.bool)
    torch.manual_seed(1)

    def on_step(st, rec):
        pass

    real_active = gf.active_gaussians

    def spy(*args, **kw):
        picked = real_active(*args, **kw)
        touched[picked[0]] = True
        return picked

    gf.active_gaussians = spy
    try:
        gf.fit_gaussians(state, scene, frames, settings, on_step=on_step)
    finally:
        gf.active_gaussians = real_active
    assert touched.any() and not touched.all()
    for name, old in before.items():
        new = getattr(state.model, name).detach()
        assert torch.equal(new[~touched], old[~touched]), name
        assert not torch.equal(new[touched], old[touched]), name


def test_a_windowed_fit_of_a_long_stack_is_as_good_and_resumes_exactly(long_stack, tmp_path, interrupt_fit):
    """Two frames and a 48x48 window per step against every frame whole: the same depth quality."""
    whole, windowed = tmp_path / "whole", tmp_path / "windowed"
    common = ["--no-progress", "--checkpoint-every", "5"]
    assert main(["fit", "--scene", str(long_stack), "--out", str(whole), "--iterations", "60",
                 "--frames-per-step", "8", *common]) == 0
    assert main(["fit", "--scene", str(long_stack), "--out", str(windowed), "--iterations", "150",
                 "--frames-per-step", "2", "--tile-px", "48", *common]) == 0
    gt = load_scene(long_stack).load_depth_gt()
    err = {d.name: depth_metrics(np.load(d / "depth.npy"), gt, 0.5, 8.0)["abs_rel"] for d in (whole, windowed)}
    dff = depth_metrics(np.load(whole / "depth.npy") * 0 + np.median(gt[gt > 0]), gt, 0.5, 8.0)["abs_rel"]
    assert err["windowed"] < 1.25 * err["whole"] + 0.01 and err["windowed"] < 0.7 * dff, err
    assert json.loads((windowed / "metrics.json").read_text())["iterations"] == 150
    interrupt_fit(7)
    out = tmp_path / "resumed"
    flags = ["--iterations", "12", "--frames-per-step", "2", "--tile-px", "48", *common]
    assert main(["fit", "--scene", str(long_stack), "--out", str(out), *flags]) == 130
    interrupt_fit(None)
    assert main(["fit", "--scene", str(long_stack), "--out", str(out), *flags, "--resume"]) == 0
    straight = tmp_path / "straight"
    assert main(["fit", "--scene", str(long_stack), "--out", str(straight), *flags]) == 0
    np.testing.assert_array_equal(np.load(out / "depth.npy"), np.load(straight / "depth.npy"))
