"""Similarity registration of a focal stack (breathing, rotation, shake, gain) against frames made independently.

The frames are made here with ``scipy.ndimage.map_coordinates`` (cubic) from a procedural texture larger than
the frame, so the module's own warp is never used to make test data. Each is then blurred (a sweep's frames are
focused at different distances), given a gain and an offset, noise (std 0.01), and quantised to 8 bit.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter, map_coordinates

from gs_dfd.data.registration import (estimate_shift_px, estimate_similarity, params_from_matrix, register_stack,
                                      similarity_matrix, warp_images, warp_to_reference)

_PAD_PX = 16  # frames are made and blurred on a grid this much larger, then cropped (no border effects)


def _texture(h: int, w: int, margin_px: int, seed: int) -> np.ndarray:
    """``[h + 2 m, w + 2 m]`` grey world in [0.1, 0.9]: smooth blobs, sharp-edged rectangles, fine noise."""
    rng = np.random.default_rng(seed)
    hh, ww = h + 2 * margin_px, w + 2 * margin_px
    yy, xx = np.mgrid[0:hh, 0:ww].astype(np.float64)
    world = np.zeros((hh, ww))
    size_px = math.sqrt(hh * ww)
    for _ in range(30):
        cx, cy, r = rng.uniform(0, ww), rng.uniform(0, hh), rng.uniform(0.03, 0.15) * size_px
        world += rng.uniform(-0.3, 0.3) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
    for _ in range(int(40 * hh * ww / (160 * 120))):
        x0, y0, rw, rh = rng.uniform(-10, ww), rng.uniform(-10, hh), rng.uniform(4, 30), rng.uniform(4, 30)
        world[int(max(y0, 0)):int(y0 + rh), int(max(x0, 0)):int(x0 + rw)] += rng.uniform(-0.25, 0.25)
    world += 0.3 * gaussian_filter(rng.standard_normal((hh, ww)), 1.0)
    return 0.1 + 0.8 * (world - world.min()) / (world.max() - world.min())


def _frame(world: np.ndarray, margin_px: int, h: int, w: int, params, center, sigma_px: float, gain: float,
           offset: float, rng: np.random.Generator) -> np.ndarray:
    """``[h, w]`` frame with ``frame(x_frame) = ref(x_ref)`` (ref: the world's central crop), blurred by
    ``sigma_px``, then ``gain * . + offset``, noise and 8-bit quantisation."""
    log_s, ang, tx, ty = params
    ys, xs = np.mgrid[-_PAD_PX:h + _PAD_PX, -_PAD_PX:w + _PAD_PX].astype(np.float64) + 0.5  # frame px centres
    dx, dy = xs - center[0] - tx, ys - center[1] - ty
    x_ref = center[0] + (math.cos(ang) * dx + math.sin(ang) * dy) / math.exp(log_s)  # R^T (x_f - c - t) / s
    y_ref = center[1] + (-math.sin(ang) * dx + math.cos(ang) * dy) / math.exp(log_s)
    out = map_coordinates(world, [y_ref - 0.5 + margin_px, x_ref - 0.5 + margin_px], order=3, mode="reflect")
    if sigma_px > 0:
        out = gaussian_filter(out, sigma_px)
    out = out[_PAD_PX:_PAD_PX + h, _PAD_PX:_PAD_PX + w] * gain + offset + 0.01 * rng.standard_normal((h, w))
    return np.round(np.clip(out, 0, 1) * 255) / 255


def _corner_error_px(p_est, p_true, center, h: int, w: int) -> float:
    """Largest distance between where the two similarities put the image's four corners."""
    corners = np.array([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1]], np.float64).T  # [3, 4]
    diff = (similarity_matrix(p_est, center) - similarity_matrix(p_true, center)) @ corners
    return float(np.hypot(diff[0], diff[1]).max())


def test_matrix_round_trip_and_composition():
    rng = np.random.default_rng(0)
    center = (81.3, 57.9)
    for _ in range(20):
        p = rng.uniform([-0.1, -0.1, -20, -20], [0.1, 0.1, 20, 20])
        np.testing.assert_allclose(params_from_matrix(similarity_matrix(p, center), center), p, atol=1e-10)
    # composing two similarities = applying one after the other; the inverse composes to the identity
    p1, p2 = np.array([0.02, 0.01, 3.0, -1.0]), np.array([-0.01, -0.03, 0.5, 2.5])
    m12 = similarity_matrix(p2, center) @ similarity_matrix(p1, center)
    x = np.array([10.0, 100.0, 1.0])
    np.testing.assert_allclose(m12 @ x, similarity_matrix(p2, center) @ (similarity_matrix(p1, center) @ x))
    inv = params_from_matrix(np.linalg.inv(similarity_matrix(p1, center)), center)
    np.testing.assert_allclose(similarity_matrix(inv, center) @ similarity_matrix(p1, center), np.eye(3),
                               atol=1e-12)


def test_matrix_convention():
    center = (50.0, 40.0)
    m = similarity_matrix([math.log(2.0), math.pi / 2, 1.0, -3.0], center)
    np.testing.assert_allclose(m @ [50.0, 40.0, 1.0], [51.0, 37.0, 1.0])  # the centre moves by t only
    np.testing.assert_allclose(m @ [51.0, 40.0, 1.0], [51.0, 39.0, 1.0])  # +x turns toward +y (y down), x2


@pytest.fixture(scope="module")
def world_small() -> tuple[np.ndarray, int]:
    return _texture(120, 160, 64, seed=1), 64


@pytest.fixture(scope="module")
def world_large() -> tuple[np.ndarray, int]:
    return _texture(360, 640, 64, seed=2), 64


@pytest.mark.parametrize("size", ["small", "large"])
@pytest.mark.parametrize("sigmas_px", [(0.0, 2.5), (2.5, 0.0)])
def test_pair_scale_rotation_shift_under_blur_difference(size, sigmas_px, request):
    world, margin = request.getfixturevalue(f"world_{size}")
    h, w = (120, 160) if size == "small" else (360, 640)
    center = (w / 2 + 3.2, h / 2 - 2.1)
    truth = (math.log(1.03), math.radians(0.5), 7.3, -4.1)
    rng = np.random.default_rng(0)
    ref = _frame(world, margin, h, w, (0, 0, 0, 0), center, sigmas_px[0], 1.0, 0.0, rng)
    img = _frame(world, margin, h, w, truth, center, sigmas_px[1], 1.2, -0.05, rng)
    params, gain, residual = estimate_similarity(np.repeat(ref[..., None], 3, -1), img, center)
    assert params.shape == (4,)
    assert _corner_error_px(params, truth, center, h, w) < 0.3
    assert abs(gain / 1.2 - 1) < 0.03, gain
    assert 0 < residual < 0.03, residual


def test_pure_shift_agrees_with_phase_correlation(world_small):
    world, margin = world_small
    h, w, center = 120, 160, (80.0, 60.0)
    rng = np.random.default_rng(1)
    ref = _frame(world, margin, h, w, (0, 0, 0, 0), center, 0.0, 1.0, 0.0, rng)
    img = _frame(world, margin, h, w, (0, 0, 4.6, -2.3), center, 1.0, 0.9, 0.02, rng)
    params, _, _ = estimate_similarity(ref, img, center)
    shift = estimate_shift_px(ref, img)
    assert np.sign(shift[0]) == np.sign(params[2]) == 1 and np.sign(shift[1]) == np.sign(params[3]) == -1
    np.testing.assert_allclose(params[2:], shift, atol=0.3)
    np.testing.assert_allclose(params[2:], [4.6, -2.3], atol=0.1)
    assert abs(params[0]) < 2e-3 and abs(params[1]) < 2e-3


def test_warp_to_reference_gives_back_the_reference(world_small):
    world, margin = world_small
    h, w, center = 120, 160, (77.0, 63.0)
    truth = (math.log(1.04), math.radians(-0.8), -5.2, 3.7)
    rng = np.random.default_rng(2)
    ref = _frame(world, margin, h, w, (0, 0, 0, 0), center, 0.0, 1.0, 0.0, rng)
    img = _frame(world, margin, h, w, truth, center, 0.0, 1.0, 0.0, rng)
    back = warp_to_reference(img, truth, center)
    assert back.shape == (h, w) and back.dtype == np.float32
    interior = (slice(12, -12), slice(12, -12))
    assert np.abs(back - ref)[interior].mean() < 0.02
    assert np.abs(img - ref)[interior].mean() > 0.04  # (the warp is not a no-op)
    back_rgb = warp_to_reference(np.stack([img, img], -1), truth, center)
    assert back_rgb.shape == (h, w, 2)
    np.testing.assert_allclose(back_rgb[..., 1], back, atol=1e-6)


def _sweep(world: np.ndarray, margin: int, h: int, w: int, n: int, seed: int):
    """A synthetic focus sweep: breathing 0 -> 5 %, shake, small rotations, gains, blur strong at both ends."""
    rng = np.random.default_rng(seed)
    center = (w / 2 - 1.7, h / 2 + 2.4)
    truth = np.zeros((n, 4))
    truth[:, 0] = np.log(np.linspace(1.0, 1.05, n))
    truth[1:, 1] = np.radians(rng.uniform(-0.3, 0.3, n - 1))
    truth[1:, 2:] = rng.uniform(-6, 6, (n - 1, 2))
    truth[1::3, 2:] = rng.uniform(-0.6, 0.6, (len(truth[1::3]), 2))  # some sub-pixel shake
    sigmas_px = 3.0 * np.abs(np.linspace(-1, 1, n))
    gains = np.r_[1.0, rng.uniform(0.8, 1.25, n - 1)]
    offsets = np.r_[0.0, rng.uniform(-0.05, 0.05, n - 1)]
    frames = np.stack([_frame(world, margin, h, w, truth[i], center, sigmas_px[i], gains[i], offsets[i], rng)
                       for i in range(n)])
    return np.repeat(frames[..., None], 3, -1).astype(np.float32), truth, center


def test_register_stack_focus_sweep(world_small):
    world, margin = world_small
    h, w, n = 120, 160, 12
    frames, truth, center = _sweep(world, margin, h, w, n, seed=3)
    params = register_stack(frames, center, [True] * n)
    assert params.shape == (n, 4)
    assert np.all(params[0] == 0)
    errors_px = [_corner_error_px(params[i], truth[i], center, h, w) for i in range(n)]
    assert max(errors_px) < 0.5, np.round(errors_px, 3)


def test_register_stack_not_movable_frames_stay_zero_and_break_the_chain(world_small):
    world, margin = world_small
    h, w, n = 120, 160, 6
    frames, truth, center = _sweep(world, margin, h, w, n, seed=4)
    movable = [True, True, False, True, False, True]
    frames[2] = np.random.default_rng(5).random(frames[2].shape)  # not an anchor: anything may be there
    frames[4] = frames[4, ::-1]
    params = register_stack(torch.from_numpy(frames), center, movable)
    assert np.all(params[[0, 2, 4]] == 0)
    for i in (1, 3, 5):
        assert _corner_error_px(params[i], truth[i], center, h, w) < 0.5, i


def test_warp_images_gradients_reach_params(world_small):
    world, margin = world_small
    h, w, center = 120, 160, (80.0, 60.0)
    ref = world[margin:margin + h, margin:margin + w]
    images = torch.tensor(np.stack([ref, ref[::-1]])[..., None], dtype=torch.float32)  # [2, H, W, 1]
    params = torch.tensor([[0.01, 0.005, 0.3, -0.2], [-0.02, 0.0, 1.5, 0.7]], requires_grad=True)
    images.requires_grad_(True)
    out = warp_images(images, params, center)
    assert out.shape == (2, h, w, 1)
    loss = (out - torch.from_numpy(ref).float()[None, ..., None]).square().mean()
    loss.backward()
    assert torch.isfinite(params.grad).all() and (params.grad.abs() > 0).all(), params.grad
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    with torch.no_grad():  # the numpy wrapper is the same warp
        np.testing.assert_allclose(warp_to_reference(images[1, ..., 0].numpy(), params[1].numpy(), center),
                                   out[1, ..., 0].numpy(), atol=1e-6)
