"""The thin lens: closed forms, inverses, the batched form, validation, presets."""

import ast
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gs_dfd.optics import PRESETS, CameraPreset, LensBatch, LensError, ThinLens, blur_sigma_px, get_preset

focal = st.floats(1e-3, 0.3)
fnum = st.floats(0.7, 32)
pitch = st.floats(1e-6, 1e-4)


@st.composite
def lenses(draw) -> ThinLens:
    f = draw(focal)
    return ThinLens(f, draw(fnum), f * draw(st.floats(1.05, 500)), draw(pitch))


@st.composite
def lens_and_depth(draw) -> tuple[ThinLens, float]:
    lens = draw(lenses())
    return lens, draw(st.floats(1.01 * lens.focal_length_m, 1000 * lens.focus_distance_m))


def test_coc_matches_design_formula():
    # nyu camera at 640 px: d = 2 m, s = 1 m -> A f |d-s| / (d (s-f)) / p
    f, n, s, p, d = 0.05, 8.0, 1.0, 12e-6, 2.0
    expected = (f / n) * f * abs(d - s) / (d * (s - f)) / p
    lens = ThinLens(f, n, s, p)
    assert lens.coc_px(d) == pytest.approx(expected, rel=1e-12)
    assert lens.coc_px(d) == pytest.approx(13.706, abs=1e-3)
    assert lens.aperture_m == pytest.approx(f / n)


@settings(max_examples=200, deadline=None)
@given(lenses())
def test_coc_scale_is_the_formula_and_the_coc_at_infinity(lens):
    f, n, s, p = lens.focal_length_m, lens.f_number, lens.focus_distance_m, lens.pixel_pitch_m
    assert lens.coc_scale_px == pytest.approx((f / n) * f / ((s - f) * p), rel=1e-12)
    assert lens.coc_scale_px == pytest.approx(lens.aperture_m * f / ((s - f) * p), rel=1e-12)
    assert lens.signed_coc_px(1e300) == pytest.approx(lens.coc_scale_px, rel=1e-12)
    assert lens.coc_px_per_dioptre == pytest.approx(lens.coc_scale_px * s, rel=1e-12)


def test_signed_coc_sign_and_zero_at_focus():
    lens = ThinLens(0.05, 8.0, 1.5, 12e-6)
    assert lens.signed_coc_px(1.0) < 0 < lens.signed_coc_px(3.0)
    assert lens.signed_coc_px(1.5) == pytest.approx(0.0, abs=1e-12)


@settings(max_examples=300, deadline=None)
@given(lens_and_depth())
def test_inverse_undoes_forward(args):
    lens, d = args
    c = lens.signed_coc_px(d)
    assert lens.depth_from_signed_coc_px(c) == pytest.approx(d, rel=1e-7)
    assert lens.inverse_depth_from_signed_coc_px(c) == pytest.approx(1 / d, rel=1e-7)


@settings(max_examples=300, deadline=None)
@given(lens_and_depth())
def test_unsigned_coc_gives_two_depths_one_of_them_true(args):
    lens, d = args
    near, far = lens.depths_from_coc_px(lens.coc_px(d))
    assert near <= lens.focus_distance_m * (1 + 1e-9) and far >= lens.focus_distance_m * (1 - 1e-9)
    assert (near if d < lens.focus_distance_m else far) == pytest.approx(d, rel=1e-7)
    for other in (near, far):  # both have this CoC
        if math.isfinite(other):
            assert lens.coc_px(other) == pytest.approx(lens.coc_px(d), rel=1e-6, abs=1e-9 * lens.coc_scale_px)


@settings(max_examples=200, deadline=None)
@given(lens_and_depth())
def test_signed_and_unsigned_agree(args):
    lens, d = args
    c = lens.signed_coc_px(d)
    assert lens.coc_px(d) == abs(c)
    assert np.sign(c) == np.sign(d - lens.focus_distance_m) or c == pytest.approx(0.0, abs=1e-9 * lens.coc_scale_px)


@settings(max_examples=200, deadline=None)
@given(lens_and_depth(), st.floats(1.1, 50.0), st.floats(0.02, 0.98))
def test_coc_is_affine_in_inverse_depth(args, ratio, t):
    lens, d = args
    q1, q2 = 1 / d, 1 / (d * ratio)
    q = (1 - t) * q1 + t * q2
    c1, c2, cq = (lens.signed_coc_px(1 / x) for x in (q1, q2, q))
    assert cq == pytest.approx((1 - t) * c1 + t * c2, rel=1e-9, abs=1e-9 * lens.coc_scale_px)
    assert (c2 - c1) / (q2 - q1) == pytest.approx(-lens.coc_px_per_dioptre, rel=1e-6)


@settings(max_examples=100, deadline=None)
@given(st.lists(lenses(), min_size=1, max_size=5), st.integers(0, 2**31 - 1))
def test_lens_batch_equals_thin_lens_element_wise(items, seed):
    batch = LensBatch.from_lenses(items, dtype=torch.float64)
    rng = np.random.default_rng(seed)
    depth = torch.from_numpy(np.stack([rng.uniform(1.01 * lens.focal_length_m, 100 * lens.focus_distance_m, (2, 3))
                                       for lens in items]))  # [B, 2, 3]
    signed = batch.signed_coc_px(depth)
    assert signed.shape == depth.shape
    near, far = batch.depths_from_coc_px(signed.abs())
    for i, lens in enumerate(items):
        for name in ("aperture_m", "coc_scale_px", "coc_px_per_dioptre"):
            assert float(getattr(batch, name)[i]) == pytest.approx(getattr(lens, name), rel=1e-12)
        want = lens.signed_coc_px(depth[i].numpy())
        np.testing.assert_allclose(signed[i].numpy(), want, rtol=1e-12, atol=1e-12 * lens.coc_scale_px)
        np.testing.assert_allclose(batch.coc_px(depth)[i].numpy(), np.abs(want), rtol=1e-12,
                                   atol=1e-12 * lens.coc_scale_px)
        np.testing.assert_allclose(batch.depth_from_signed_coc_px(signed)[i].numpy(),
                                   lens.depth_from_signed_coc_px(signed[i].numpy()), rtol=1e-12)
        for got, ref in zip((near, far), lens.depths_from_coc_px(np.abs(want))):
            np.testing.assert_allclose(got[i].numpy(), ref, rtol=1e-9)
        assert batch.lens(i) == lens
    # rows: one column order, round trip; index / cat / to keep the lenses
    rows = batch.as_rows()
    assert rows.shape == (len(items), 4)
    torch.testing.assert_close(LensBatch.from_rows(rows).as_rows(), rows)
    assert batch.lenses() == items
    assert LensBatch.cat([batch, batch.index(slice(0, 1))]).lenses() == items + items[:1]
    assert batch.index(-1).lenses() == items[-1:]
    assert batch.index(torch.tensor([0])).lens(0) == items[0]
    assert batch.to(dtype=torch.float32).dtype == torch.float32


def test_rows_follow_the_field_order():
    lens = ThinLens(0.05, 8.0, 1.5, 12e-6)
    row = LensBatch.from_lenses([lens], dtype=torch.float64).as_rows()[0].tolist()
    assert row == [lens.focal_length_m, lens.f_number, lens.focus_distance_m, lens.pixel_pitch_m]
    assert LensBatch.ROW_FIELDS == ("focal_length_m", "f_number", "focus_distance_m", "pixel_pitch_m")


def test_lens_batch_is_differentiable_in_its_fields():
    focus = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    one = torch.ones(2, dtype=torch.float64)
    batch = LensBatch(0.05 * one, 4.0 * one, focus, 1e-5 * one)
    depth = torch.tensor([[3.0], [0.5]], dtype=torch.float64)
    batch.coc_px(depth).sum().backward()
    # |K (1 - s/d)|, K = A f / ((s - f) p): d/ds by hand
    f, n, p = 0.05, 4.0, 1e-5
    for i, (s, d) in enumerate(((1.0, 3.0), (2.0, 0.5))):
        k = (f / n) * f / ((s - f) * p)
        dk = -k / (s - f)
        grad = dk * (1 - s / d) - k / d
        assert float(focus.grad[i]) == pytest.approx(grad * np.sign(1 - s / d), rel=1e-9)


def test_lens_batch_shapes_are_asserted():
    one = torch.ones(2)
    with pytest.raises(AssertionError):
        LensBatch(one, one, one, torch.ones(3))
    with pytest.raises(AssertionError):
        LensBatch(one, one, one, one.double())
    with pytest.raises(AssertionError):
        LensBatch.from_rows(torch.ones(2, 3))
    batch = LensBatch.from_lenses([ThinLens(0.05, 8.0, 1.5, 12e-6)] * 2)
    with pytest.raises(AssertionError):
        batch.coc_px(torch.ones(3, 4))  # [B, ...] with B = 2


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
        ThinLens(f, n, s, p).coc_px(d)
    if which != "d":  # the batch refuses the same values when checked
        t = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
        with pytest.raises(LensError):
            LensBatch(t(f), t(n), t(s), t(p)).check()


@settings(max_examples=100, deadline=None)
@given(focal, st.floats(0.01, 1.0))
def test_focus_at_or_inside_focal_length_refused(f, ratio):
    with pytest.raises(LensError, match="focus_distance_m must be greater than focal_length_m"):
        ThinLens(f, 2.0, f * ratio, 1e-5)
    with pytest.raises(LensError, match="focus_distance_m must be greater than focal_length_m"):
        ThinLens(f, 2.0, 2 * f, 1e-5).with_focus(f * ratio)


def test_depth_from_coc_beyond_infinity_is_inf():
    lens = ThinLens(0.05, 8.0, 1.0, 12e-6)
    c_inf = lens.coc_scale_px
    assert math.isinf(lens.depth_from_signed_coc_px(c_inf * 1.5))
    arr = lens.depth_from_signed_coc_px(np.array([0.0, c_inf * 2]))
    assert arr[0] == pytest.approx(1.0) and np.isinf(arr[1])
    near, far = lens.depths_from_coc_px(np.array([c_inf * 2]))
    assert np.isinf(far[0]) and near[0] == pytest.approx(1.0 / 3.0)
    batch = LensBatch.from_lenses([lens], dtype=torch.float64)
    assert torch.isinf(batch.depth_from_signed_coc_px(torch.tensor([[c_inf * 1.5]], dtype=torch.float64))).all()


def test_torch_path_is_differentiable_and_matches_numpy():
    lens = ThinLens(0.05, 8.0, 1.5, 12e-6)
    d = torch.tensor([0.7, 1.3, 4.0], dtype=torch.float64, requires_grad=True)
    c = lens.signed_coc_px(d)
    c.sum().backward()
    np.testing.assert_allclose(c.detach().numpy(), lens.signed_coc_px(d.detach().numpy()))
    # dc/dd = K s / d^2
    np.testing.assert_allclose(d.grad.numpy(), lens.coc_px_per_dioptre / d.detach().numpy() ** 2, rtol=1e-10)
    back = lens.depth_from_signed_coc_px(c)
    np.testing.assert_allclose(back.detach().numpy(), d.detach().numpy(), rtol=1e-10)
    with pytest.raises(LensError):
        lens.signed_coc_px(torch.tensor([1.0, float("nan")]))


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


def test_preset_and_camera_make_the_lens():
    from gs_dfd.data.scene import Camera

    nyu = get_preset("nyu")
    assert nyu.lens(2.5) == ThinLens(0.05, 8.0, 2.5, 12e-6)
    assert nyu.lens(2.5, f_number=2.8, width_px=320) == ThinLens(0.05, 2.8, 2.5, 24e-6)
    with pytest.raises(LensError):
        nyu.lens(0.01)
    cam = Camera(width=320, height=240, **nyu.intrinsics(320, 240), focal_length_m=0.05, f_number=8.0,
                 pixel_pitch_m=nyu.pixel_pitch_at(320))
    assert cam.lens(1.5) == nyu.lens(1.5, width_px=320)
    assert cam.lens(1.5, f_number=4.0).f_number == 4.0
    assert isinstance(nyu, CameraPreset)


def test_coc_range_includes_zero_when_focus_inside():
    lens = ThinLens(0.05, 8.0, 1.5, 24e-6)
    lo, hi = lens.coc_px_range(0.5, 4.0)
    assert lo == 0.0 and hi == pytest.approx(lens.coc_px(0.5))
    lo2, _ = lens.coc_px_range(2.0, 4.0)
    assert lo2 == pytest.approx(lens.coc_px(2.0))


def test_optics_imports_nothing_else_of_the_project():
    """The lens is the bottom layer: everything may import it, it imports only numpy / torch / itself."""
    folder = Path(__file__).resolve().parents[1] / "gs_dfd" / "optics"
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert not name.startswith("gs_dfd") or name.startswith("gs_dfd.optics"), (path.name, name)
