"""Rendering in frame 0's grid and resampling into a moved frame's (gs_dfd.fit.resampling), against scipy."""

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from gs_dfd.fit.alignment import FrameWarp
from gs_dfd.fit.resampling import reference_box, resample_to_frame

W, H = 48, 36


def _warp(log_scale: float, angle_rad: float, tx: float, ty: float) -> FrameWarp:
    params = np.array([[0, 0, 0, 0], [log_scale, angle_rad, tx, ty]], np.float64)
    return FrameWarp(params, [False, True], (W / 2, H / 2), W, H)


def _box_of(image: np.ndarray, box) -> torch.Tensor:
    """The pixels of ``box`` of ``image`` (frame 0's grid), edge-padded where the box leaves the image."""
    bx0, by0, bw, bh = box
    ys = np.clip(np.arange(by0, by0 + bh), 0, H - 1)
    xs = np.clip(np.arange(bx0, bx0 + bw), 0, W - 1)
    return torch.from_numpy(image[np.ix_(ys, xs)].astype(np.float32))


@pytest.mark.parametrize("mode,order", [("linear", 1)])
def test_matches_scipy_interpolation_of_the_inverse_similarity(mode, order):
    rng = np.random.default_rng(0)
    image = rng.random((H, W, 2))
    log_s, ang, tx, ty = math.log(1.03), math.radians(0.7), 1.3, -0.6
    warp = _warp(log_s, ang, tx, ty)
    window = (6, 5, 30, 22)
    box = reference_box(warp, 1, window)
    got = resample_to_frame(_box_of(image, box), box, warp, 1, window, mode).detach().numpy()
    # scipy, pixel centres at integers: frame pixel (x, y) shows frame 0 at c + R(-a) (x - c - t) / s.
    c = np.array([(W - 1) / 2, (H - 1) / 2])
    xs, ys = np.meshgrid(np.arange(window[0], window[0] + window[2]), np.arange(window[1], window[1] + window[3]))
    d = np.stack([xs - c[0] - tx, ys - c[1] - ty])
    ref_x = c[0] + (math.cos(ang) * d[0] + math.sin(ang) * d[1]) / math.exp(log_s)
    ref_y = c[1] + (-math.sin(ang) * d[0] + math.cos(ang) * d[1]) / math.exp(log_s)
    want = np.stack([ndimage.map_coordinates(image[..., k], [ref_y, ref_x], order=order) for k in range(2)], -1)
    np.testing.assert_allclose(got, want, atol=2e-5)


@pytest.mark.parametrize("mode", ["linear", "cubic"])
def test_integer_shift_moves_pixels_exactly_and_keeps_linear_ramps(mode):
    rng = np.random.default_rng(1)
    image = rng.random((H, W, 1))
    window = (8, 6, 24, 20)
    warp = _warp(0.0, 0.0, 3.0, -2.0)
    box = reference_box(warp, 1, window)
    got = resample_to_frame(_box_of(image, box), box, warp, 1, window, mode).detach().numpy()
    np.testing.assert_allclose(got, image[6 + 2:6 + 2 + 20, 8 - 3:8 - 3 + 24], atol=1e-5)
    if mode == "cubic":  # Keys' kernel with a = -0.75 keeps constants (not ramps: that takes a = -0.5)
        warp = _warp(math.log(0.97), math.radians(-1.1), -0.4, 0.8)
        box = reference_box(warp, 1, window)
        flat = np.full((H, W, 1), 0.37)
        got = resample_to_frame(_box_of(flat, box), box, warp, 1, window, mode).detach().numpy()
        np.testing.assert_allclose(got, 0.37, atol=1e-6)
        return
    # A linear ramp is kept under any similarity: the value at the inverse-warped centre.
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    ramp = (0.02 * xx - 0.01 * yy + 0.3)[..., None]
    warp = _warp(math.log(0.97), math.radians(-1.1), -0.4, 0.8)
    box = reference_box(warp, 1, window)
    got = resample_to_frame(_box_of(ramp, box), box, warp, 1, window, mode).detach().numpy()[..., 0]
    xs, ys = np.meshgrid(np.arange(8, 32) + 0.5, np.arange(6, 26) + 0.5)
    ang, s = math.radians(-1.1), 0.97
    dx, dy = xs - W / 2 + 0.4, ys - H / 2 - 0.8
    ref_x = W / 2 + (math.cos(ang) * dx + math.sin(ang) * dy) / s - 0.5
    ref_y = H / 2 + (-math.sin(ang) * dx + math.cos(ang) * dy) / s - 0.5
    np.testing.assert_allclose(got, 0.02 * ref_x - 0.01 * ref_y + 0.3, atol=2e-5)


def test_gradient_reaches_the_warp():
    rng = np.random.default_rng(2)
    image = rng.random((H, W, 3))
    warp = _warp(0.01, 0.005, 0.3, 0.2)
    window = (4, 4, 32, 24)
    box = reference_box(warp, 1, window)
    out = resample_to_frame(_box_of(image, box), box, warp, 1, window, "cubic")
    out.square().sum().backward()
    assert warp.warp_px.grad is not None
    assert torch.all(warp.warp_px.grad[1] != 0) and torch.all(warp.warp_px.grad[0] == 0)



def test_a_frame_rendered_in_frame_0s_grid_and_resampled_matches_its_own_grid_render(tmp_path):
    """The wiring in render_frames: under an integer shift, interpolation at whole pixels reproduces the render
    in the frame's own grid; under a sub-pixel similarity it differs by the interpolation blur only."""
    from gs_dfd.cli import main
    from gs_dfd.data.scene import load_scene
    from gs_dfd.fit.gaussian_fit import GaussianFitSettings, build_state, render_frames

    out = tmp_path / "scene"
    assert main(["synth", "procedural", "--kind", "planes", "--seed", "3", "--width", "96", "--height", "72",
                 "--focus-distances", "1.0", "2.0", "--out", str(out), "--no-progress"]) == 0
    scene = load_scene(out)
    frames = scene.load_frames()
    state = build_state(scene, frames, GaussianFitSettings(align_frames=False, stride=1))
    state.warp = FrameWarp(np.array([[0, 0, 0, 0], [0, 0, 3.0, -2.0]]), [False, True], (scene.camera.cx,
                           scene.camera.cy), 96, 72)
    window = (16, 12, 48, 40)

    def render(mode: str) -> np.ndarray:
        state.frame_resampling = mode
        with torch.no_grad():
            return render_frames(state, scene, "cpu", [1], window)["rgb"][0].numpy()

    own = render("none")
    np.testing.assert_allclose(render("cubic"), own, atol=2e-4)
    np.testing.assert_allclose(render("linear"), own, atol=2e-4)
    with torch.no_grad():
        state.warp.warp_px[1] = torch.tensor([0.3, 0.2, 3.5, -1.5])
    own = render("none")
    for mode in ("linear", "cubic"):
        diff = np.abs(render(mode) - own)
        assert 1e-4 < diff.mean() < 0.02, (mode, diff.mean())
