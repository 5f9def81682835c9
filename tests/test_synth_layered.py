"""Layered disk-PSF defocus: the PSF, exactness on planes, seams, occlusion, noise."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from gs_dfd.optics.thin_lens import ThinLens
from gs_dfd.synth.layered import add_sensor_noise, disk_psf, render_focal_stack

F_M, N, PITCH = 0.05, 8.0, 24e-6  # nyu lens at 320 px width
FOCI = (1.0, 1.5, 2.5, 4.0, 6.0)


def _lens(focus_m: float, f_number: float = N) -> ThinLens:
    return ThinLens(F_M, f_number, focus_m, PITCH)


FRAMES = [_lens(s) for s in FOCI]


def _coc(depth_m: float, focus_m: float) -> float:
    return float(_lens(focus_m).signed_coc_px(depth_m))


def _reference_blur(img: np.ndarray, diameter: float) -> np.ndarray:
    """Direct spatial convolution with reflect borders, independent of the FFT path."""
    k = disk_psf(diameter)
    return np.stack([ndimage.convolve(img[..., c].astype(np.float64), k, mode="reflect")
                     for c in range(img.shape[2])], axis=-1)


def _texture(h: int, w: int, c: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0.05, 0.95, (h, w, c)).astype(np.float32)


# ---------------------------------------------------------------------------
# disk_psf


@pytest.mark.parametrize("d", [0.0, 0.3, 1.0, 1.7, 4.2, 9.0, 25.0])
def test_disk_psf_normalised_and_symmetric(d):
    k = disk_psf(d)
    assert k.ndim == 2 and k.shape[0] == k.shape[1] and k.shape[0] % 2 == 1
    assert k.dtype == np.float64
    assert abs(k.sum() - 1.0) < 1e-12
    assert np.all(k >= 0)
    np.testing.assert_allclose(k, k[::-1, :], atol=1e-15)
    np.testing.assert_allclose(k, k.T, atol=1e-15)
    np.testing.assert_array_equal(disk_psf(-d), k)


def test_disk_psf_small_is_delta():
    for d in (0.0, 0.5, 0.99):
        np.testing.assert_array_equal(disk_psf(d), np.ones((1, 1)))


@pytest.mark.parametrize("d", [10.0, 16.0, 25.0])
def test_disk_psf_second_moment(d):
    k = disk_psf(d)
    half = k.shape[0] // 2
    x = np.arange(-half, half + 1)
    var_x = float((k.sum(axis=0) * x**2).sum())
    var_y = float((k.sum(axis=1) * x**2).sum())
    want = (d / 2) ** 2 / 4
    assert abs(var_x / want - 1) < 0.02 and abs(var_y / want - 1) < 0.02


def test_disk_psf_grows_continuously():
    widths = [float((disk_psf(d) > 0).sum()) for d in np.linspace(1.0, 6.0, 26)]
    assert all(b >= a for a, b in zip(widths, widths[1:]))
    # a hair above 1 px the kernel is still almost a delta
    assert disk_psf(1.02)[1, 1] > 0.99


def test_disk_psf_rejects_bad_input():
    with pytest.raises(ValueError, match="finite"):
        disk_psf(float("nan"))
    with pytest.raises(ValueError, match="supersample"):
        disk_psf(3.0, supersample=0)


# ---------------------------------------------------------------------------
# Fronto-parallel planes: the output is a plain disk blur


@pytest.mark.parametrize("depth_m", [0.7, 3.0])
def test_constant_depth_matches_direct_convolution(depth_m):
    aif = _texture(48, 64)
    out = render_focal_stack(aif, np.full((48, 64), depth_m, np.float32), FRAMES)
    assert out.shape == (len(FRAMES), 48, 64, 3) and out.dtype == np.float32
    for i, s in enumerate(FOCI):
        ref = _reference_blur(aif, _coc(depth_m, s))
        assert np.abs(out[i] - ref).max() < 1e-3, f"focus {s}"


def test_plane_at_focus_is_unchanged():
    aif = _texture(40, 50, c=1)
    out = render_focal_stack(aif, np.full((40, 50), 2.5, np.float32), [_lens(2.5)])
    np.testing.assert_allclose(out[0], aif, atol=1e-6)


def test_constant_depth_preserves_mean():
    aif = _texture(50, 70, seed=3)
    out = render_focal_stack(aif, np.full((50, 70), 0.6, np.float32), FRAMES)
    for i in range(len(FRAMES)):
        np.testing.assert_allclose(out[i].mean(axis=(0, 1)), aif.mean(axis=(0, 1)), atol=1e-4)


def test_blur_grows_with_coc():
    aif = _texture(48, 48, c=1, seed=5)
    depth = 0.8
    out = render_focal_stack(aif, np.full((48, 48), depth, np.float32), FRAMES)
    coc = np.abs([_coc(depth, s) for s in FOCI])
    hf = [float(np.abs(np.diff(o[..., 0], axis=1)).mean()) for o in out]
    order = np.argsort(coc)
    hf_sorted = np.asarray(hf)[order]
    assert np.all(np.diff(hf_sorted) < 0), (coc[order], hf_sorted)
    assert hf_sorted[-1] < 0.5 * hf_sorted[0]


# ---------------------------------------------------------------------------
# Slanted surfaces: soft layers without seams


def _slanted_inverse_depth(h: int, w: int, q_near: float, q_far: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    t = (xx + 0.6 * yy) / (w - 1 + 0.6 * (h - 1))
    return q_far + (q_near - q_far) * t


@pytest.mark.parametrize("q_range", [(0.25, 2.0), (0.8, 1.1)])
def test_slanted_constant_plane_has_no_seams(q_range):
    h, w = 60, 90
    q = _slanted_inverse_depth(h, w, q_range[1], q_range[0])
    colour = np.array([0.7, 0.4, 0.2], np.float32)
    aif = np.broadcast_to(colour, (h, w, 3)).copy()
    out = render_focal_stack(aif, (1.0 / q).astype(np.float32), FRAMES)
    assert np.abs(out - colour).max() < 1e-3


def test_slanted_plane_blur_follows_local_coc():
    """On a gently slanted textured plane each column looks like a disk blur of its own CoC.

    Fitting the blur diameter column by column recovers the thin-lens CoC; a
    CoC staircase (hard layers) or a wrong layer ordering would not.
    """
    h, w = 48, 160
    rng = np.random.default_rng(4)
    aif = ndimage.gaussian_filter(rng.random((h, w)), 0.7)[..., None]
    aif = ((aif - aif.min()) / (aif.max() - aif.min())).astype(np.float32)
    q = np.broadcast_to(np.linspace(0.5, 1.0, w)[None, :], (h, w))
    out = render_focal_stack(aif, (1.0 / q).astype(np.float32), [_lens(6.0)])[0, ..., 0]
    candidates = np.arange(0.0, 16.0, 0.1)
    blurred = [ndimage.convolve(aif[..., 0].astype(np.float64), disk_psf(c), mode="reflect") for c in candidates]
    for col in range(20, w - 20, 15):
        truth = abs(_coc(1.0 / q[0, col], 6.0))
        errs = [np.mean((out[8:-8, col - 2:col + 3] - b[8:-8, col - 2:col + 3]) ** 2) for b in blurred]
        fitted = candidates[int(np.argmin(errs))]
        assert abs(fitted - truth) < 0.5, (col, truth, fitted)


@pytest.mark.parametrize("step_px", [0.1, 2.0])
def test_slanted_plane_matches_local_blur_for_any_layer_step(step_px):
    """Every pixel of a slanted plane is blurred by the disk of its own CoC, however thin the layers.

    Thin layers that over-composite each other would make the surface hide
    part of itself (error growing as layers thin out); hard layer masks
    would leave a CoC staircase at coarse steps.
    """
    h, w = 48, 160
    rng = np.random.default_rng(4)
    aif = ndimage.gaussian_filter(rng.random((h, w)), 0.7)[..., None]
    aif = ((aif - aif.min()) / (aif.max() - aif.min())).astype(np.float32)
    q = np.broadcast_to(np.linspace(0.5, 1.0, w)[None, :], (h, w))
    out = render_focal_stack(aif, (1.0 / q).astype(np.float32), [_lens(6.0)],
                             max_layer_step_px=step_px)[0, ..., 0]
    local = np.stack([_reference_blur(aif[:, :, :], _coc(1.0 / q[0, col], 6.0))[:, col, 0] for col in range(w)], axis=1)
    assert np.abs(out - local)[:, 16:-16].mean() < 0.0035


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), style=st.sampled_from(["pixel noise", "blocks", "smooth"]),
       grey=st.floats(0.05, 0.95))
def test_uniform_scene_stays_uniform_for_any_depth(seed, style, grey):
    """Coverage is complete for every depth map: a one-colour scene renders as that colour, no halos."""
    rng = np.random.default_rng(seed)
    h, w = 24, 30
    if style == "pixel noise":
        q = rng.uniform(0.25, 2.0, (h, w))
    elif style == "blocks":
        q = np.kron(rng.uniform(0.25, 2.0, (4, 5)), np.ones((6, 6)))
    else:
        q = 0.25 + 1.75 * ndimage.gaussian_filter(rng.random((h, w)), 2.0, mode="wrap")
    aif = np.full((h, w, 1), grey, np.float32)
    out = render_focal_stack(aif, (1.0 / q).astype(np.float32), FRAMES)
    assert np.abs(out - np.float32(grey)).max() < 1e-5


# ---------------------------------------------------------------------------
# Occlusion


def _square_scene(fg_depth: float, bg_depth: float, fg_value: float, bg_value: float):
    h, w = 64, 80
    aif = np.full((h, w, 1), bg_value, np.float32)
    depth = np.full((h, w), bg_depth, np.float32)
    mask = np.zeros((h, w), bool)
    mask[20:44, 28:52] = True
    aif[mask] = fg_value
    depth[mask] = fg_depth
    return aif, depth, mask


def test_sharp_foreground_does_not_bleed_into_blurred_background():
    aif, depth, mask = _square_scene(fg_depth=1.0, bg_depth=4.0, fg_value=1.0, bg_value=0.0)
    # focus on the square: background CoC is about 10 px
    out = render_focal_stack(aif, depth, [_lens(1.0)])[0, ..., 0]
    assert abs(_coc(4.0, 1.0)) > 8
    assert out[~mask].max() < 1e-3  # not even the pixel next to the edge
    np.testing.assert_allclose(out[mask], 1.0, atol=1e-4)


def test_small_depth_gap_still_occludes():
    """A depth step smaller than a slab (1.5 px of CoC) is still an occlusion, not a blend."""
    bg_depth = 1.0 / (1.0 - 1.5 / _coc(1e9, 1.0))  # CoC 1.5 px when focused at 1 m
    aif, depth, mask = _square_scene(fg_depth=1.0, bg_depth=bg_depth, fg_value=1.0, bg_value=0.0)
    out = render_focal_stack(aif, depth, [_lens(1.0)])[0, ..., 0]
    assert abs(_coc(bg_depth, 1.0) - 1.5) < 1e-6
    assert out[~mask].max() < 1e-3
    np.testing.assert_allclose(out[mask], 1.0, atol=1e-4)


def test_occluder_detected_without_depth_gap():
    """The background also reaches the occluder's depth elsewhere (no empty depth band): the
    local depth jump alone must make the square an occluder, so its colour stays out of the
    blurred background."""
    h, w = 64, 80
    q = np.broadcast_to(np.linspace(0.3, 1.0, h)[:, None], (h, w)).copy()
    aif = np.zeros((h, w, 1), np.float32)
    mask = np.zeros((h, w), bool)
    mask[6:22, 28:52] = True
    q[mask] = 1.0
    aif[mask] = 1.0
    out = render_focal_stack(aif, (1.0 / q).astype(np.float32), [_lens(1.0)])[0, ..., 0]
    assert abs(_coc(1.0 / q[10, 0], 1.0)) > 8  # the background beside the square is blurred
    assert out[~mask].max() < 1e-3
    np.testing.assert_allclose(out[mask], 1.0, atol=1e-4)


def test_hidden_background_is_filled_with_background():
    """Textured background behind a sharp occluder: the occluder's rim shows background, not black."""
    aif, depth, mask = _square_scene(fg_depth=1.0, bg_depth=4.0, fg_value=0.5, bg_value=0.8)
    out = render_focal_stack(aif, depth, [_lens(1.0)])[0, ..., 0]
    np.testing.assert_allclose(out[~mask], 0.8, atol=1e-3)
    np.testing.assert_allclose(out[mask], 0.5, atol=1e-3)


def test_blurred_foreground_spreads_over_sharp_background():
    aif, depth, mask = _square_scene(fg_depth=1.0, bg_depth=4.0, fg_value=1.0, bg_value=0.0)
    out = render_focal_stack(aif, depth, [_lens(4.0)])[0, ..., 0]
    radius = abs(_coc(1.0, 4.0)) / 2
    dist_out = ndimage.distance_transform_edt(~mask)
    ring = (dist_out > 0) & (dist_out < radius - 1)
    assert out[ring].min() > 0.02 and out[ring].mean() > 0.15  # partial occlusion of the background
    assert out[dist_out > radius + 1].max() < 1e-3  # nothing beyond the blur radius
    # far from the edges the square keeps its value; at the edge it is about half-covered
    inner = ndimage.distance_transform_edt(mask) > radius + 1
    np.testing.assert_allclose(out[inner], 1.0, atol=1e-3)
    assert 0.35 < out[32, 28] < 0.65


# ---------------------------------------------------------------------------
# Validation


def test_input_validation():
    aif = _texture(10, 12)
    depth = np.ones((10, 12), np.float32)
    ok = dict(lenses=FRAMES)
    with pytest.raises(ValueError, match=r"aif must have shape"):
        render_focal_stack(aif[..., :2], depth, **ok)
    with pytest.raises(ValueError, match=r"aif must have shape"):
        render_focal_stack(aif[..., 0], depth, **ok)
    with pytest.raises(ValueError, match=r"aif must have shape"):
        render_focal_stack(aif[:0], depth[:0], **ok)
    with pytest.raises(ValueError, match=r"depth_m must have shape"):
        render_focal_stack(aif, depth[:5], **ok)
    bad = depth.copy(); bad[3, 3] = 0.0
    with pytest.raises(ValueError, match=r"depth_m must be finite and > 0"):
        render_focal_stack(aif, bad, **ok)
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match=r"depth_m must be finite and > 0"):
        render_focal_stack(aif, bad, **ok)
    img = aif.copy(); img[0, 0, 0] = 1.5
    with pytest.raises(ValueError, match=r"aif must be finite with values in \[0, 1\]"):
        render_focal_stack(img, depth, **ok)
    img[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match=r"aif must be finite"):
        render_focal_stack(img, depth, **ok)
    with pytest.raises(ValueError, match=r"lenses must hold"):
        render_focal_stack(aif, depth, [])
    with pytest.raises(ValueError, match=r"lenses\[0\] must be a ThinLens"):
        render_focal_stack(aif, depth, [(1.0, 8.0)])
    with pytest.raises(ValueError, match=r"focus_distance_m must be greater than focal_length_m"):
        render_focal_stack(aif, depth, [_lens(0.01)])
    with pytest.raises(ValueError, match=r"f_number"):
        render_focal_stack(aif, depth, [_lens(1.0, 0.0)])
    with pytest.raises(ValueError, match=r"max_layer_step_px"):
        render_focal_stack(aif, depth, FRAMES, max_layer_step_px=0.0)


def test_grayscale_and_float64_inputs():
    aif = _texture(20, 24, c=1).astype(np.float64)
    out = render_focal_stack(aif, np.full((20, 24), 2.0), FRAMES[:2])
    assert out.shape == (2, 20, 24, 1) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1


# ---------------------------------------------------------------------------
# Noise


def test_noise_zero_std_is_identity():
    img = _texture(8, 9)
    out = add_sensor_noise(img, 0.0, np.random.default_rng(0))
    np.testing.assert_array_equal(out, img)


def test_noise_level_and_signal_dependence():
    rng = np.random.default_rng(0)
    mid = np.full((200, 200, 3), 0.5, np.float32)
    out = add_sensor_noise(mid, 0.02, rng)
    assert out.dtype == np.float32 and out.shape == mid.shape
    assert abs(float((out - mid).std()) / 0.02 - 1) < 0.05
    bright = add_sensor_noise(np.full((200, 200), 0.9, np.float32), 0.02, rng)
    dark = add_sensor_noise(np.full((200, 200), 0.1, np.float32), 0.02, rng)
    assert (bright - 0.9).std() > 1.5 * (dark - 0.1).std()  # shot noise grows with signal
    assert (dark - 0.1).std() > 0.005  # read noise floor


def test_noise_is_deterministic_and_clipped():
    img = _texture(30, 30, seed=9)
    a = add_sensor_noise(img, 0.2, np.random.default_rng(7))
    b = add_sensor_noise(img, 0.2, np.random.default_rng(7))
    c = add_sensor_noise(img, 0.2, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.min() >= 0.0 and a.max() <= 1.0


def test_noise_validation():
    with pytest.raises(ValueError, match="std"):
        add_sensor_noise(np.zeros((2, 2)), -0.1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="rng"):
        add_sensor_noise(np.zeros((2, 2)), 0.1, 0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        add_sensor_noise(np.full((2, 2), 2.0), 0.1, np.random.default_rng(0))
