"""Coarse to fine by blur: a frame whose every Gaussian in the window is blurred wide enough is rendered on a grid of
pixel blocks and compared with the frame's block means, which must agree with the full-resolution render."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from gs_dfd.cli import main
from gs_dfd.data.scene import load_scene
from gs_dfd.errors import InputError
from gs_dfd.fit import gaussian_fit as gf
from gs_dfd.fit.gaussian_fit import GaussianFitSettings, build_state, render_frames


@pytest.fixture(scope="module")
def blurred_stack(tmp_path_factory) -> Path:
    """128x96, content at 0.76-4 m: frame 0 (focus 0.3 m) blurs every surface by 10-19 px of CoC, frame 1
    (1 m) has surfaces in focus."""
    out = tmp_path_factory.mktemp("coarse") / "scene"
    assert main(["synth", "procedural", "--kind", "occlusion", "--seed", "5", "--width", "128", "--height", "96",
                 "--focus-distances", "0.3", "1", "3", "--out", str(out), "--no-progress"]) == 0
    return out


def _state(scene_dir: Path, **kw):
    scene = load_scene(scene_dir)
    frames = scene.load_frames()
    settings = GaussianFitSettings(iterations=1, **kw)
    return scene, frames, settings, build_state(scene, frames, settings)


@pytest.mark.parametrize("coarse", [2, 4])
def test_a_coarse_render_matches_the_block_means_of_the_full_render(blurred_stack, coarse):
    scene, _, _, state = _state(blurred_stack)
    with torch.no_grad():
        full = render_frames(state, scene, "cpu", [0])["rgb"]
        part = render_frames(state, scene, "cpu", [0], coarse=coarse)["rgb"]
        blocks = gf.downsample_blocks(full, coarse)
        assert part.shape == (1, 96 // coarse, 128 // coarse, 3) == blocks.shape
        err = float((part - blocks).abs().mean())
        # Without the block average's variance in the blur (and the dilation counted in frame pixels), the
        # coarse render is visibly sharper than the block means.
        plain_coc = gf.coarse_coc_px
        try:
            gf.coarse_coc_px = lambda coc, r, spc: coc / r
            naive = render_frames(state, scene, "cpu", [0], coarse=coarse)["rgb"]
        finally:
            gf.coarse_coc_px = plain_coc
    assert err < 1.2e-3
    assert err < 0.75 * float((naive - blocks).abs().mean())


def test_block_means_and_the_coarse_camera_share_pixel_centres():
    img = torch.arange(4 * 6, dtype=torch.float32).reshape(1, 4, 6, 1)
    blocks = gf.downsample_blocks(img, 2)
    assert blocks.shape == (1, 2, 3, 1)
    assert float(blocks[0, 0, 0, 0]) == pytest.approx((0 + 1 + 6 + 7) / 4)
    assert gf.coarse_coc_px(torch.tensor([8.0]), 1, 0.275).item() == 8.0  # full resolution: unchanged


def test_coarse_factors_follow_the_least_blur_that_reaches_the_window(blurred_stack):
    scene, _, settings, state = _state(blurred_stack)
    window = gf._full_window(scene)
    # Frame 0 is blurred everywhere by sigma >= 0.275 x 9.6 px: one halving keeps >= 1.3 px, so with a threshold
    # of 1 px it is rendered at half resolution; frames 1 and 2 have surfaces in focus.
    loose = replace(settings, coarse_blur_sigma_px=1.0)
    assert gf.coarse_factors(state, scene, [0, 1, 2], window, None, loose) == [2, 1, 1]
    assert gf.coarse_factors(state, scene, [0, 1, 2], window, None, settings) == [1, 1, 1]  # 1.5 px: too little
    assert gf.coarse_factors(state, scene, [0], window, None, replace(loose, max_coarse_factor=1)) == [1]
    # A blur wider than the window allows stops where the window would drop under 32 px a side.
    assert gf.coarse_factors(state, scene, [0], window, None, replace(loose, coarse_blur_sigma_px=0.01)) == [2]


def test_a_quantile_of_sharper_gaussians_may_be_rendered_coarse(blurred_stack):
    scene, _, settings, state = _state(blurred_stack)
    window = gf._full_window(scene)
    # Frame 0's blur sigma: 10% quantile 2.85 px, 30% quantile 3.16 px: halving keeps >= 1.5 px only for the
    # Gaussians above the 30% quantile.
    assert gf.coarse_factors(state, scene, [0, 1, 2], window, None, settings, quantile=0.1) == [1, 1, 1]
    assert gf.coarse_factors(state, scene, [0, 1, 2], window, None, settings, quantile=0.3) == [2, 1, 1]
    assert gf.coarse_factors(state, scene, [0, 1, 2], window, None, settings, quantile=0.9) == [2, 1, 1]


def test_a_fit_step_renders_strongly_blurred_frames_coarse(blurred_stack):
    scene, frames, settings, _ = _state(blurred_stack, coarse_blur_sigma_px=1.0, propagate_smoothness=0.0,
                                        coarse_blur_quantile=0.0)
    settings = replace(settings, iterations=2)
    state = build_state(scene, frames, settings)
    gf.fit_gaussians(state, scene, frames, settings)
    assert [rec["coarse"] for rec in state.history] == [[2, 1, 1], [2, 1, 1]]
    # Early steps let the least blurred 30% be rendered coarser than their blur merits; the last steps do not.
    early = replace(settings, iterations=4, coarse_blur_sigma_px=2.0, coarse_blur_quantile=0.5,
                    coarse_until_fraction=0.5)
    state = build_state(scene, frames, early)
    gf.fit_gaussians(state, scene, frames, early)
    assert [rec["coarse"] for rec in state.history] == [[2, 1, 1], [2, 1, 1], [1, 1, 1], [1, 1, 1]]
    assert all(torch.isfinite(torch.tensor(rec["loss"])) for rec in state.history)
    whole = gf.render_frame_whole(state, scene, settings, 0)
    assert whole.shape == (96, 128, 3)
    with torch.no_grad():
        full = render_frames(state, scene, "cpu", [0])["rgb"][0]
    assert float((whole - full).abs().mean()) < 2e-3  # interpolated back, it is the full render


def test_max_coarse_factor_must_be_a_power_of_two():
    with pytest.raises(InputError, match="max-coarse-factor"):
        GaussianFitSettings(max_coarse_factor=3).check()
    with pytest.raises(InputError, match="coarse-blur-sigma-px"):
        GaussianFitSettings(coarse_blur_sigma_px=0.0).check()


def test_the_reach_from_the_nearest_and_farthest_gaussian_is_the_reach_over_all(blurred_stack):
    """_reach_px takes the largest CoC from the two extreme inverse depths; over every Gaussian it is the same,
    for a calibrated lens too (the CoC grows with the distance in inverse depth from each frame's focus)."""
    scene, _, _, state = _state(blurred_stack, calibrate_lens=True, frame_blur=True)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(3)
        state.model.inv_depth.copy_(0.2 + 3.0 * torch.rand(state.model.n, generator=gen))  # 0.3-5 m
        state.lens.log_aperture_scale.fill_(0.1)
        state.frame_blur.sigma_px.fill_(0.3)
    for ids in ([0], [1, 2], [0, 1, 2]):
        with torch.no_grad():
            coc = state.lens.coc_px(state.model.depth_ref(), ids)
            coc_max = float(state.frame_blur(coc, ids, state.sigma_per_coc).max())
            size_max = float(torch.exp(state.model.log_size_px[:, :2]).max())
        brute = 3.0 * (state.sigma_per_coc * coc_max + size_max) + 2.0 * state.stride + 2.0
        assert gf._reach_px(state, ids, 1.0) == pytest.approx(brute, rel=1e-6)
