"""Frame registration of the per-scene fit: phase correlation, the similarity warp of the Gaussians, and fits
of stacks whose shots moved between exposures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from gs_dfd.cli import main
from gs_dfd.data.images import read_image, write_png
from gs_dfd.data.registration import estimate_shift_px, translate_images
from gs_dfd.fit.alignment import FrameWarp, estimate_frame_warps


def _texture(h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random((h, w, 3)), (1.5, 1.5, 0))


def _moved(img: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """``out(x) = img(x - (dx, dy))``, by scipy (an independent implementation of the convention)."""
    return ndimage.shift(img, (dy, dx, 0), order=3, mode="nearest")


@pytest.mark.parametrize("dx, dy", [(2.3, -1.6), (-7.0, 0.4), (0.0, 0.0)])
def test_phase_correlation_finds_a_subpixel_shift_between_differently_blurred_shots(dx, dy):
    ref = _texture()
    shot = ndimage.gaussian_filter(_moved(ref, dx, dy), (2.0, 2.0, 0))  # the other shot is more defocused
    est = estimate_shift_px(ref, shot)
    assert abs(est[0] - dx) < 0.2 and abs(est[1] - dy) < 0.2, est


def test_shifts_beyond_the_search_range_are_not_found():
    ref = _texture()
    est = estimate_shift_px(ref, _moved(ref, 20.0, 0.0), max_shift_px=8)
    assert abs(est[0]) <= 8.5 and abs(est[0] - 20.0) > 5


def test_translate_images_follows_the_convention_and_passes_gradients():
    img = _texture(40, 50)
    shift = torch.tensor([[3.0, -2.0]], requires_grad=True)
    out = translate_images(torch.from_numpy(img).float()[None], shift)[0]
    np.testing.assert_allclose(out.detach().numpy()[5:-5, 5:-5], _moved(img, 3.0, -2.0)[5:-5, 5:-5], atol=1e-5)
    out.sum().backward()
    assert shift.grad is not None and torch.isfinite(shift.grad).all()


def test_reference_and_frames_with_their_own_pose_never_move():
    init = np.array([[0.01, 0.0, 1.0, 1.0], [0.0, 0.0, 2.0, -1.0], [0.02, 0.01, 4.0, 4.0]])
    warp = FrameWarp(init, movable=[True, True, False], center=(25.0, 20.0), width=50, height=40)
    np.testing.assert_allclose(warp.params().detach().numpy(), [[0, 0, 0, 0], [0, 0, 2, -1], [0, 0, 0, 0]],
                               atol=1e-6)
    assert [r["frame"] for r in warp.report()] == [1, 2] and warp.moved(1) and not warp.moved(2)
    img = _texture(40, 50)
    back = warp.to_reference(_moved(img, 2.0, -1.0).astype(np.float32), 1)
    np.testing.assert_allclose(back[5:-5, 5:-5], img[5:-5, 5:-5], atol=1e-3)
    assert warp.to_reference(img, 2) is img
    off = FrameWarp(init, movable=[True, False, False], center=(25.0, 20.0), width=50, height=40)
    assert not off.enabled and off.to_reference(img, 1) is img and bool(off.valid_mask(1, 0, 0, 50, 40).all())
    assert np.all(estimate_frame_warps(np.stack([img, img]), [True, False], (25.0, 20.0)) == 0)


def test_a_warped_gaussian_lands_where_the_similarity_puts_it():
    """model.world(warp=...) moves each Gaussian's projection by x' = c + s R(a) (x - c) + t at unchanged depth,
    and the frame's valid mask marks the pixels that map inside the reference view."""
    from gs_dfd.data.scene import Camera
    from gs_dfd.fit.model import grid_gaussians

    cam = Camera(width=40, height=30, fx=60.0, fy=60.0, cx=20.0, cy=15.0, focal_length_m=0.05, f_number=2.0,
                 pixel_pitch_m=1e-5)
    model, _ = grid_gaussians(np.full((30, 40), 0.5, np.float32), np.full((30, 40, 3), 0.5, np.float32), cam, 2)
    s, a, t = 1.04, 0.02, torch.tensor([1.5, -2.0])
    g = model.world(warp=(torch.tensor(s), torch.tensor(a), t))
    proj = torch.stack([g.means[:, 0] / g.means[:, 2] * cam.fx + cam.cx, g.means[:, 1] / g.means[:, 2] * cam.fy + cam.cy], -1)
    d = model.uv.detach() - torch.tensor([cam.cx, cam.cy])
    rot = torch.tensor([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]], dtype=torch.float32)
    expected = torch.tensor([cam.cx, cam.cy]) + s * d @ rot.T + t
    np.testing.assert_allclose(proj.detach().numpy(), expected.numpy(), atol=1e-4)
    np.testing.assert_allclose(g.depth_ref.detach().numpy(), 2.0, rtol=1e-6)  # depth, hence CoC, unchanged
    warp = FrameWarp(np.array([[0, 0, 0, 0], [np.log(0.9), 0, 0, 0]]), [True, True], (20.0, 15.0), 40, 30)
    mask = warp.valid_mask(1, 0, 0, 40, 30).numpy()  # a shrunk frame's border shows what frame 0 does not
    assert not mask[0, 0] and mask[15, 20] and 0.6 < mask.mean() < 0.9


@pytest.fixture(scope="module")
def moved_pair(tmp_path_factory) -> tuple[Path, tuple[int, int]]:
    """An aperture pair whose second shot is moved by (3, -2) px, as a real camera between exposures."""
    out = tmp_path_factory.mktemp("align") / "scene"
    assert main(["synth", "procedural", "--kind", "planes", "--seed", "3", "--width", "96", "--height", "72",
                 "--focus-distances", "1.5", "1.5", "--out", str(out), "--no-progress"]) == 0
    data = json.loads((out / "scene.json").read_text())
    data["frames"][1]["f_number"] = 8.0
    (out / "scene.json").write_text(json.dumps(data))
    second = out / data["frames"][1]["image"]
    write_png(second, np.roll(read_image(second), (-2, 3), axis=(0, 1)))
    return out, (3, -2)


def test_the_fit_registers_moved_shots_and_reports_the_shift(moved_pair, tmp_path):
    scene, (dx, dy) = moved_pair
    flags = ["--iterations", "20", "--no-progress", "--init", "constant", "--init-depth-m", "2"]
    assert main(["fit", "--scene", str(scene), "--out", str(tmp_path / "a"), *flags]) == 0
    assert main(["fit", "--scene", str(scene), "--out", str(tmp_path / "b"), *flags, "--no-align-frames"]) == 0
    aligned = json.loads((tmp_path / "a/metrics.json").read_text())
    plain = json.loads((tmp_path / "b/metrics.json").read_text())
    (shift,) = aligned["alignment"]
    assert shift["frame"] == 1 and np.allclose(shift["shift_px"], [dx, dy], atol=0.3), shift
    assert plain["alignment"] is None
    assert aligned["frames"][1]["psnr"] > plain["frames"][1]["psnr"] + 3


def test_an_interrupted_aligned_fit_resumes_exactly(moved_pair, tmp_path, interrupt_fit):
    scene, _ = moved_pair
    flags = ["--iterations", "6", "--no-progress", "--checkpoint-every", "2", "--init", "constant"]
    interrupt_fit(4)
    out = tmp_path / "o"
    assert main(["fit", "--scene", str(scene), "--out", str(out), *flags]) == 130
    interrupt_fit(None)
    assert main(["fit", "--scene", str(scene), "--out", str(out), *flags, "--resume"]) == 0
    straight = tmp_path / "straight"
    assert main(["fit", "--scene", str(scene), "--out", str(straight), *flags]) == 0
    np.testing.assert_array_equal(np.load(out / "depth.npy"), np.load(straight / "depth.npy"))
    resumed, direct = (json.loads((d / "metrics.json").read_text())["alignment"] for d in (out, straight))
    assert resumed == direct and resumed[0]["shift_px"] != [0.0, 0.0]
