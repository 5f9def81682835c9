"""Thin-lens model: closed forms, inverse, validation, presets."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gs_dfd.optics import (
    PRESETS, LensError, ThinLens, blur_sigma_px, coc_m, coc_px, depth_from_signed_coc_m, depth_from_signed_coc_px,
    get_preset, signed_coc_m, signed_coc_px,
)

focal = st.floats(1e-3, 0.3)
fnum = st.floats(0.7, 32)
pitch = st.floats(1e-6, 1e-4)


@st.composite
def lens_and_depth(draw):
    f = draw(focal)
    s = f * draw(st.floats(1.05, 500))
    d = draw(st.floats(1.01 * f, 1000 * s))
    return f, draw(fnum), s, draw(pitch), d


def test_coc_matches_design_formula():
    # nyu camera at 640 px: d = 2 m, s = 1 m -> A f |d-s| / (d (s-f)) / p
    f, n, s, p, d = 0.05, 8.0, 1.0, 12e-6, 2.0
    expected = (f / n) * f * abs(d - s) / (d * (s - f))
    assert coc_m(d, f, n, s) == pytest.approx(expected, rel=1e-12)
    assert coc_px(d, f, n, s, p) == pytest.approx(expected / p, rel=1e-12)
    assert coc_px(d, f, n, s, p) == pytest.approx(13.706, abs=1e-3)


def test_signed_coc_sign_and_zero_at_focus():
    lens = ThinLens(0.05, 8.0, 1.5, 12e-6)
    assert lens.signed_coc_px(1.0) < 0 < lens.signed_coc_px(3.0)
    assert lens.signed_coc_px(1.5) == pytest.approx(0.0, abs=1e-12)


@settings(max_examples=300, deadline=None)
@given(lens_and_depth())
def test_inverse_undoes_forward(args):
    f, n, s, p, d = args
    c = signed_coc_px(d, f, n, s, p)
    assert depth_from_signed_coc_px(c, f, n, s, p) == pytest.approx(d, rel=1e-7)
    cm = signed_coc_m(d, f, n, s)
    assert depth_from_signed_coc_m(cm, f, n, s) == pytest.approx(d, rel=1e-7)


@settings(max_examples=200, deadline=None)
@given(lens_and_depth())
def test_unsigned_is_abs_of_signed_and_affine_in_inverse_depth(args):
    f, n, s, p, d = args
    assert coc_px(d, f, n, s, p) == pytest.approx(abs(signed_coc_px(d, f, n, s, p)), rel=1e-12)
    d2 = 2 * d
    lens = ThinLens(f, n, s, p)
    slope = (lens.signed_coc_px(d2) - lens.signed_coc_px(d)) / (1 / d2 - 1 / d)
    assert slope == pytest.approx(-lens.coc_px_per_inverse_metre(), rel=1e-6)


@settings(max_examples=200, deadline=None)
@given(focal, fnum, pitch, st.floats(0.05, 1.0), st.sampled_from(["f", "n", "p", "d"]),
       st.sampled_from([0.0, -1.0, math.nan, math.inf, -math.inf]))
def test_invalid_values_are_refused(f, n, p, ratio, which, bad):
    s = f / ratio * 1.01  # valid focus (> f)
    d = 2 * s
    if which == "f":
        f = bad
    elif which == "n":
        n = bad
    elif which == "p":
        p = bad
    else:
        d = bad
    if which == "d" and bad == math.inf:
        return  # infinitely far is a valid depth
    with pytest.raises(LensError):
        coc_px(d, f, n, s, p)


@settings(max_examples=100, deadline=None)
@given(focal, st.floats(0.01, 1.0))
def test_focus_at_or_inside_focal_length_refused(f, ratio):
    with pytest.raises(LensError, match="focus_distance_m must be greater than focal_length_m"):
        ThinLens(f, 2.0, f * ratio, 1e-5)


def test_depth_from_coc_beyond_infinity_is_inf():
    lens = ThinLens(0.05, 8.0, 1.0, 12e-6)
    c_inf = lens.signed_coc_px(1e12)
    assert math.isinf(lens.depth_from_signed_coc_px(c_inf * 1.5))
    arr = lens.depth_from_signed_coc_px(np.array([0.0, c_inf * 2]))
    assert arr[0] == pytest.approx(1.0) and np.isinf(arr[1])


def test_torch_path_is_differentiable_and_matches_numpy():
    d = torch.tensor([0.7, 1.3, 4.0], dtype=torch.float64, requires_grad=True)
    c = signed_coc_px(d, 0.05, 8.0, 1.5, 12e-6)
    c.sum().backward()
    np.testing.assert_allclose(c.detach().numpy(), signed_coc_px(d.detach().numpy(), 0.05, 8.0, 1.5, 12e-6))
    # dc/dd = scale * s / d^2 / p
    scale = (0.05 / 8) * 0.05 / (1.5 - 0.05)
    np.testing.assert_allclose(d.grad.numpy(), scale * 1.5 / d.detach().numpy() ** 2 / 12e-6, rtol=1e-10)
    back = depth_from_signed_coc_px(c, 0.05, 8.0, 1.5, 12e-6)
    np.testing.assert_allclose(back.detach().numpy(), d.detach().numpy(), rtol=1e-10)
    with pytest.raises(LensError):
        signed_coc_px(torch.tensor([1.0, float("nan")]), 0.05, 8.0, 1.5, 12e-6)


def test_blur_sigma_matches_disk_second_moment():
    # A uniform disk of radius R has per-axis variance R^2 / 4, so sigma = R / 2 = c / 4.
    rng = np.random.default_rng(0)
    r = 10.0
    pts = rng.uniform(-r, r, (400_000, 2))
    pts = pts[np.hypot(pts[:, 0], pts[:, 1]) <= r]
    assert blur_sigma_px(2 * r) == pytest.approx(pts[:, 0].std(), rel=0.01)
    assert blur_sigma_px(-4.0, sigma_per_coc=0.3) == pytest.approx(1.2)
    with pytest.raises(LensError):
        blur_sigma_px(1.0, sigma_per_coc=0.0)


def test_least_squares_gaussian_for_a_disk_blur_is_wider_than_the_second_moment():
    """Why the fit's blur model defaults to sigma = 0.275 c, not the disk's second moment (0.25 c): on 1/f
    (natural-image-like) texture the Gaussian closest to a disk blur of CoC 4-10 px has sigma 0.26-0.30 c."""
    from scipy import ndimage, signal

    from gs_dfd.optics.thin_lens import LSQ_DISK_SIGMA_PER_COC
    from gs_dfd.synth.layered import disk_psf

    rng = np.random.default_rng(3)
    size = 160
    radius = np.hypot(np.fft.fftfreq(size)[:, None], np.fft.rfftfreq(size)[None, :])
    texture = np.fft.irfft2(np.fft.rfft2(rng.standard_normal((size, size))) / np.maximum(radius, 1 / size),
                            s=(size, size))
    ks = np.arange(0.22, 0.341, 0.005)
    fit_k = LSQ_DISK_SIGMA_PER_COC
    for coc in (4.0, 6.0, 10.0):
        disk = signal.fftconvolve(np.pad(texture, 20, mode="wrap"), disk_psf(coc), mode="same")[20:-20, 20:-20]
        err = [np.mean((ndimage.gaussian_filter(texture, k * coc, mode="wrap", truncate=5.0) - disk) ** 2) for k in ks]
        best = ks[int(np.argmin(err))]
        assert 0.26 <= best <= 0.30, (coc, best)
        assert np.interp(fit_k, ks, err) < np.interp(0.25, ks, err), coc


def test_presets():
    assert set(PRESETS) == {"nyu", "defocusnet", "d3net"}
    nyu = get_preset("nyu")
    assert nyu.focus_distances_m == (1.0, 1.5, 2.5, 4.0, 6.0)
    assert nyu.pixel_pitch_at(320) == pytest.approx(24e-6)
    assert nyu.intrinsics(320, 240)["fx"] == pytest.approx(2083.333, abs=1e-3)  # DESIGN.md's example
    dn = get_preset("defocusnet")
    assert (dn.focal_length_m, dn.f_number, dn.reference_width_px) == (0.0029, 1.0, 256)
    assert dn.focus_distances_m == (0.1, 0.15, 0.3, 0.7, 1.5)
    d3 = get_preset("d3net")
    assert (d3.focal_length_m, d3.f_number, d3.pixel_pitch_m, d3.focus_distances_m) == (0.035, 2.8, 36e-6, (1.7,))
    with pytest.raises(KeyError, match="unknown camera preset"):
        get_preset("nope")


def test_coc_range_includes_zero_when_focus_inside():
    lens = ThinLens(0.05, 8.0, 1.5, 24e-6)
    lo, hi = lens.coc_px_range(0.5, 4.0)
    assert lo == 0.0 and hi == pytest.approx(lens.coc_px(0.5))
    lo2, _ = lens.coc_px_range(2.0, 4.0)
    assert lo2 == pytest.approx(lens.coc_px(2.0))
