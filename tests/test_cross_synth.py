"""tools/validation/cross_synth.py and make_cross_set.py: the independent, validation-only defocus synthesiser.

Fast: tiny synthetic RGB-D made here. The tests that read ../shared/data skip cleanly without it.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import shared_path

REPO = Path(__file__).resolve().parents[1]


def _load(name: str, rel: str):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / rel)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


cs = _load("cross_synth", "tools/validation/cross_synth.py")
mcs = _load("make_cross_set", "tools/validation/make_cross_set.py")

# 64 px wide with the nyu camera's 320-px pitch: CoCs as large as in the real set, on a tiny image.
CAM = cs.NominalCamera(width=64, height=48, focal_length_m=0.05, f_number=8.0, pixel_pitch_m=24e-6)


def _texture(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0.05, 0.95, (h, w, 3))


def _point_spread(depth_m: float, focus_m: float = 1.0, effects=()) -> np.ndarray:
    """The rendered image (gray) of one bright pixel on a black plane at depth_m."""
    img = np.zeros((48, 64, 3))
    img[24, 32] = 1.0
    params = cs.draw_params(0, "point", [focus_m], effects)
    coc = cs.signed_coc_px(np.full((48, 64), depth_m), focus_m, CAM.focal_length_m, CAM.f_number, CAM.pixel_pitch_m)
    out = cs.defocus_layers(img, coc, params.aperture, np.random.default_rng(0))
    return out.mean(axis=2)


def _rms_radius(spot: np.ndarray) -> float:
    yy, xx = np.mgrid[0:spot.shape[0], 0:spot.shape[1]]
    m = spot.sum()
    cy, cx = (spot * yy).sum() / m, (spot * xx).sum() / m
    return float(np.sqrt((spot * ((yy - cy) ** 2 + (xx - cx) ** 2)).sum() / m))


# --------------------------------------------------------------------------- thin lens


def test_coc_zero_in_focus_and_affine_in_inverse_depth():
    f, n, p, s = 0.05, 8.0, 24e-6, 1.0
    assert cs.signed_coc_px(s, s, f, n, p) == pytest.approx(0.0, abs=1e-12)
    d = np.array([0.5, 0.8, 1.0, 1.5, 4.0, 100.0])
    c = cs.signed_coc_px(d, s, f, n, p)
    slope = (f / n) * f * s / ((s - f) * p)  # px per dioptre of (1/s - 1/d)
    np.testing.assert_allclose(c, slope * (1 / s - 1 / d), rtol=1e-12, atol=1e-12)
    assert np.all(np.sign(c) == np.sign(d - s))  # behind focus > 0


def test_coc_agrees_with_the_projects_thin_lens():
    """Written independently, the formula must still be the same physics as the camera scene.json states."""
    from gs_dfd.optics.thin_lens import ThinLens

    lens = ThinLens(0.05, 8.0, 1.5, 24e-6)
    d = np.linspace(0.5, 6.0, 23)
    np.testing.assert_allclose(cs.signed_coc_px(d, 1.5, 0.05, 8.0, 24e-6), lens.signed_coc_px(d), rtol=1e-9)


def test_nominal_camera_reads_the_nyu_preset():
    cam = cs.NominalCamera.from_preset(320, 240)
    assert (cam.focal_length_m, cam.f_number) == (0.05, 8.0)
    assert cam.pixel_pitch_m == pytest.approx(24e-6)  # 12 um at 640 px
    assert cam.fx == pytest.approx(0.05 / 24e-6)


# --------------------------------------------------------------------------- PSF


def test_psf_is_normalised_polygonal_and_flips_through_focus():
    ap = cs.Aperture(blades=5, rotation_rad=0.3, spherical=0.3, edge_px=0.5)
    k_behind, k_front = cs.aperture_psf(9.0, ap), cs.aperture_psf(-9.0, ap)
    assert k_behind.sum() == pytest.approx(1.0) and k_front.sum() == pytest.approx(1.0)
    assert k_behind.min() >= 0
    # odd blade count: in front of focus the polygon is point-reflected, and the rim/core profile flips
    assert not np.allclose(k_behind, k_front)
    assert not np.allclose(k_behind, k_behind[::-1, ::-1])
    # behind focus: bright rim (spherical > 0); in front: bright core
    c = k_behind.shape[0] // 2
    assert k_behind[c, c] < k_behind[c, c + 3] and k_front[c, c] > k_front[c, c + 3]
    # equal area with the thin-lens disk: a hard polygon's support covers about pi (c/2)^2 pixels
    hard = cs.aperture_psf(9.0, cs.Aperture(blades=7))
    area = (hard / hard.max()).sum()
    assert area == pytest.approx(math.pi * 4.5 ** 2, rel=0.05)


def test_psf_of_a_tiny_coc_is_a_delta():
    for c in (0.0, 0.2, -0.3):
        k = cs.aperture_psf(c, cs.Aperture(blades=6, edge_px=0.8, spherical=0.4))
        assert k[k.shape[0] // 2, k.shape[1] // 2] == pytest.approx(1.0, abs=1e-9)


# --------------------------------------------------------------------------- rendering


def test_in_focus_plane_is_left_sharp():
    aif = _texture()
    depth = np.full((48, 64), 1.0)
    params = cs.draw_params(3, "plane", [1.0], effects=("aberration",))  # no misfocus, noise, tone, JPEG
    frames, rec = cs.synthesize_frames(aif, depth, CAM, params)
    assert abs(rec[0]["coc_px_max"]) < 1e-9
    np.testing.assert_allclose(frames[0] / 255.0, aif, atol=0.5 / 255 + 1e-9)


def test_blur_grows_with_thin_lens_defocus():
    """The spot's RMS radius follows |c| = slope |1/d - 1/s| (an equal-area polygon's RMS radius is close to the
    disk's c / (2 sqrt 2))."""
    depths = [0.55, 0.7, 0.85, 1.25, 2.0, 4.0]
    radii, cocs = [], []
    for d in depths:
        radii.append(_rms_radius(_point_spread(d)))
        cocs.append(abs(float(cs.signed_coc_px(d, 1.0, CAM.focal_length_m, CAM.f_number, CAM.pixel_pitch_m))))
    order = np.argsort(cocs)
    assert np.all(np.diff(np.asarray(radii)[order]) > 0)
    for r, c in zip(radii, cocs):
        if c >= 3:
            assert r == pytest.approx(c / (2 * math.sqrt(2)), rel=0.12)
    # the focus plane itself: a single pixel stays a single pixel
    assert _rms_radius(_point_spread(1.0)) == pytest.approx(0.0, abs=1e-9)


def test_plane_blur_matches_the_psf_and_keeps_the_mean():
    """A fronto-parallel plane is a plain convolution with the PSF (mirrored borders): no seams, no darkening."""
    from scipy import signal

    aif = _texture(seed=2)
    depth = np.full((48, 64), 0.6)
    ap = cs.Aperture(blades=6, rotation_rad=0.2, spherical=0.2, edge_px=0.5)
    coc = cs.signed_coc_px(depth, 1.0, CAM.focal_length_m, CAM.f_number, CAM.pixel_pitch_m)
    out = cs.defocus_layers(aif, coc, ap, None)
    k = cs.aperture_psf(round(coc[0, 0] / cs.BIN_PX) * cs.BIN_PX, ap)
    r = k.shape[0] // 2
    padded = np.pad(aif, ((r, r), (r, r), (0, 0)), mode="symmetric")
    ref = signal.fftconvolve(padded, k[:, :, None], mode="valid", axes=(0, 1))
    np.testing.assert_allclose(out, ref, atol=1e-9)
    uniform = cs.defocus_layers(np.full((48, 64, 3), 0.4), coc, ap, np.random.default_rng(0))
    np.testing.assert_allclose(uniform, 0.4, atol=1e-9)


def test_occlusion_sharp_occluder_stays_sharp_and_uniform_colour_survives_depth_steps():
    aif = _texture(seed=4)
    depth = np.full((48, 64), 4.0)
    depth[:, :32] = 1.0  # in-focus occluder on the left, blurred wall behind on the right
    coc = cs.signed_coc_px(depth, 1.0, CAM.focal_length_m, CAM.f_number, CAM.pixel_pitch_m)
    ap = cs.Aperture(blades=7, spherical=0.3, edge_px=0.6)
    out = cs.defocus_layers(aif, coc, ap, np.random.default_rng(1))
    np.testing.assert_allclose(out[:, :32], aif[:, :32], atol=1e-9)  # no background bleeds over it
    assert np.abs(out[:, 40:] - aif[:, 40:]).mean() > 0.05  # the wall is blurred
    # a blurred occluder in front of a sharp wall: one colour stays exactly that colour (coverage normalisation)
    depth2 = np.full((48, 64), 1.0)
    depth2[10:30, 10:40] = 0.5
    coc2 = cs.signed_coc_px(depth2, 1.0, CAM.focal_length_m, CAM.f_number, CAM.pixel_pitch_m)
    flat = cs.defocus_layers(np.full((48, 64, 3), 0.7), coc2, ap, np.random.default_rng(1))
    np.testing.assert_allclose(flat, 0.7, atol=1e-9)


def test_dithered_bins_are_unbiased():
    coc = np.full((200, 200), 2.3)
    bins = cs.dithered_bins(coc, 0.5, np.random.default_rng(0))
    assert set(np.unique(bins)) == {4, 5}
    assert bins.mean() * 0.5 == pytest.approx(2.3, abs=0.01)


# --------------------------------------------------------------------------- sensor, tone, JPEG


def test_poisson_gaussian_noise_statistics():
    rng = np.random.default_rng(0)
    n, read = 2000.0, 0.002
    for x in (0.02, 0.18, 0.6):
        z = cs.poisson_gaussian(np.full(400_000, x), n, read, rng)
        assert z.mean() == pytest.approx(x, abs=4 * math.sqrt(x / n + read ** 2) / math.sqrt(z.size) + 1e-6)
        assert z.var() == pytest.approx(x / n + read ** 2, rel=0.02)
    # shot noise dominates and grows with the signal; read noise alone at black
    z0 = cs.poisson_gaussian(np.zeros(400_000), n, read, rng)
    assert z0.std() == pytest.approx(read, rel=0.02)


def test_jpeg_roundtrip():
    yy, xx = np.mgrid[0:48, 0:64]
    smooth = np.stack([xx * 3, yy * 4, (xx + yy) * 2], axis=2).astype(np.uint8)
    noisy = (np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)
    for img in (smooth, noisy):
        out = cs.jpeg_roundtrip(img, 90)
        assert out.shape == img.shape and out.dtype == np.uint8
        np.testing.assert_array_equal(out, cs.jpeg_roundtrip(img, 90))  # deterministic
    err = lambda q: np.abs(cs.jpeg_roundtrip(noisy, q).astype(float) - noisy).mean()
    assert err(95) < err(75)
    assert 0 < err(95)  # lossy: it really went through JPEG
    assert np.abs(cs.jpeg_roundtrip(smooth, 75).astype(float) - smooth).mean() < 3.0
    gray = cs.jpeg_roundtrip(noisy[..., :1], 85)
    assert gray.shape == (48, 64, 1)


def test_tone_and_vignetting():
    x = np.linspace(0, 1, 101)
    np.testing.assert_allclose(cs.srgb_to_linear(cs.linear_to_srgb(x)), x, atol=1e-12)
    y = cs.tone_curve(x, 1.05, 0.2, from_linear=True)
    assert y[0] == 0 and y[-1] == pytest.approx(1.0) and np.all(np.diff(y) >= 0)
    v = cs.vignetting_map(48, 64, 0.2)
    assert v.max() <= 1.0 and v.min() == pytest.approx(0.8, abs=0.01)  # corner pixels ~ the corner itself
    assert v[24, 32] > 0.999


# --------------------------------------------------------------------------- parameters, determinism, scene


def test_draws_are_seeded_in_range_and_independent_of_disabled_effects():
    a = cs.draw_params(7, "d3net_rgbd_001", [1.0, 1.5])
    b = cs.draw_params(7, "d3net_rgbd_001", [1.0, 1.5])
    assert a.to_json() == b.to_json()
    assert cs.draw_params(8, "d3net_rgbd_001", [1.0, 1.5]).to_json() != a.to_json()
    assert cs.draw_params(7, "d3net_rgbd_002", [1.0, 1.5]).to_json() != a.to_json()
    assert 5 <= a.aperture.blades <= 9 and 75 <= a.jpeg_quality <= 95
    for fp in a.frames:
        assert abs(fp.focus_true_m / fp.focus_nominal_m - 1) <= cs.MISFOCUS
    no_noise = cs.draw_params(7, "d3net_rgbd_001", [1.0, 1.5], [e for e in cs.EFFECTS if e != "noise"])
    assert no_noise.photons_at_white is None and no_noise.aperture == a.aperture
    assert [f.focus_true_m for f in no_noise.frames] == [f.focus_true_m for f in a.frames]
    with pytest.raises(ValueError, match="unknown effects"):
        cs.draw_params(0, "x", [1.0], ["nosie"])
    assert cs.PHOTONS_AT_WHITE[0] <= a.photons_at_white <= cs.PHOTONS_AT_WHITE[1]
    # a fixed noise level changes only the noise level, not any other draw
    fixed = cs.draw_params(7, "d3net_rgbd_001", [1.0, 1.5], photons_at_white=(3000.0, 3000.0),
                           read_sigma=(0.001, 0.001))
    assert fixed.photons_at_white == pytest.approx(3000.0) and fixed.read_sigma == pytest.approx(0.001)
    assert fixed.aperture == a.aperture and fixed.frames == a.frames and fixed.jpeg_quality == a.jpeg_quality
    # the readable noise level: 8-bit std at mid grey through the sRGB slope
    dn = cs.noise_dn(0.18, fixed)
    slope = 1.055 / 2.4 * 0.18 ** (1 / 2.4 - 1)
    assert dn == pytest.approx(255 * slope * math.sqrt(0.18 / 3000 + 1e-6))
    assert 0.3 < cs.noise_dn(0.18, a) < 1.4  # the default level is mild
    assert cs.noise_dn(0.18, no_noise) == 0.0


def _rgbd() -> tuple[np.ndarray, np.ndarray]:
    aif = _texture(seed=5).astype(np.float32)
    depth = np.tile(np.linspace(0.6, 3.5, 64), (48, 1)).astype(np.float32)
    depth[12:30, 20:36] = 0.8
    depth[0, :5] = 0.0  # holes: no ground truth there
    return aif, depth


def test_synthesis_is_deterministic_per_seed():
    aif, depth = _rgbd()
    p = cs.draw_params(1, "s", [1.0, 1.5])
    f1, _ = cs.synthesize_frames(aif, depth, CAM, p)
    f2, _ = cs.synthesize_frames(aif, depth, CAM, cs.draw_params(1, "s", [1.0, 1.5]))
    np.testing.assert_array_equal(f1, f2)
    f3, _ = cs.synthesize_frames(aif, depth, CAM, cs.draw_params(2, "s", [1.0, 1.5]))
    assert np.any(f1 != f3)
    assert f1.shape == (2, 48, 64, 3) and f1.dtype == np.uint8


def test_written_scene_passes_gs_dfd_check(tmp_path, capsys):
    from gs_dfd.cli import main
    from gs_dfd.data.scene import load_scene

    aif, depth = _rgbd()
    out = tmp_path / "scene"
    out.mkdir()
    params = cs.write_cross_scene(out, aif, depth, CAM, [1.0, 1.5], 3, "tiny", source={"name": "test"})
    assert main(["check", "--scene", str(out)]) == 0
    scene = load_scene(out)
    assert [f.focus_distance_m for f in scene.frames] == [1.0, 1.5]  # nominal, not the misfocused truth
    assert scene.camera.f_number == 8.0 and scene.camera.pixel_pitch_m == pytest.approx(24e-6)
    gt = scene.load_depth_gt()
    assert np.all(gt[0, :5] == 0) and np.allclose(gt[1:], depth[1:])
    cfg = json.loads((out / "synth_config.json").read_text())
    assert cfg["format"] == cs.CONFIG_FORMAT and cfg["params"] == params.to_json()
    assert cfg["noise_dn_8bit"]["linear_0.18"] == pytest.approx(cs.noise_dn(0.18, params))
    assert [r["focus_true_m"] for r in cfg["frames"]] == [f.focus_true_m for f in params.frames]
    frame0 = scene.load_frame(0)
    again, _ = cs.synthesize_frames(aif, depth, CAM, params)
    np.testing.assert_allclose(frame0, again[0] / 255.0, atol=1e-6)  # PNG stores the JPEG-decoded pixels exactly


def test_cross_synth_shares_no_code_with_the_training_synthesiser(tmp_path):
    """Writing a scene (and loading the set builder) must not load gs_dfd.synth or gs_dfd.render at all."""
    import os
    import subprocess

    code = f"""
import sys, importlib.util
import numpy as np
for name in ("cross_synth", "make_cross_set"):
    rel = "tools/validation/" + name + ".py"
    spec = importlib.util.spec_from_file_location(name, rel)
    mod = importlib.util.module_from_spec(spec); sys.modules[name] = mod; spec.loader.exec_module(mod)
cs = sys.modules["cross_synth"]
out = {str(tmp_path / "s")!r}
import os; os.mkdir(out)
cs.write_cross_scene(out, np.random.rand(24, 32, 3), np.full((24, 32), 2.0), cs.NominalCamera.from_preset(32, 24),
                     [1.0, 1.5], 0, "x")
print(" ".join(sorted(k for k in sys.modules if k.startswith(("gs_dfd.synth", "gs_dfd.render")))))
"""
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == ""


# --------------------------------------------------------------------------- the set's split


def test_variants_split_the_d3net_ids_as_training_does():
    assert mcs.HELDOUT_D3NET_IDS == tuple(range(0, 81, 4)) and len(mcs.HELDOUT_D3NET_IDS) == 21
    assert len(mcs.TRAINING_D3NET_IDS) == 60 and not set(mcs.HELDOUT_D3NET_IDS) & set(mcs.TRAINING_D3NET_IDS)
    held = mcs.scene_names("heldout", None, None)
    assert len(held) == 26 and "nyuv2_0045" in held and "d3net_rgbd_080" in held
    train = mcs.scene_names("training-ids", None, None)
    assert len(train) == 60 and "d3net_rgbd_001" in train and "d3net_rgbd_004" not in train
    with pytest.raises(SystemExit):
        mcs.scene_names("training-ids", [4], None)
    with pytest.raises(SystemExit):
        mcs.scene_names("heldout", [1], None)
    with pytest.raises(SystemExit):
        mcs.scene_names("training-ids", None, ["nyuv2_0045"])
    # the same split as the training-set tool (ids % 4 == 0 are refused there)
    mts = (REPO / "tools/make_training_set.py").read_text()
    assert "i % 4 == 0" in mts


def test_best_constant_minimises_mean_absrel():
    rng = np.random.default_rng(0)
    depths = [rng.uniform(0.5, 4.0, 500), rng.uniform(1.0, 2.0, 50)]
    c = mcs.best_constant(depths)
    absrel = lambda v: np.mean([np.mean(np.abs(v - g) / g) for g in depths])
    grid = np.linspace(0.5, 4.0, 701)
    assert absrel(c) <= min(absrel(v) for v in grid) + 1e-9


@pytest.mark.shared
def test_geometry_matches_the_projects_heldout_conversion():
    """Same crop, size and ground truth as tools/convert_rgbd_sets.py (read from the package's own readers here,
    in the test only), so the two sets differ only in the defocus synthesis."""
    src = shared_path()
    from gs_dfd.data.images import crop_border, resize_nearest
    from gs_dfd.synth.stack import read_depth_input  # the test may read the project's path; the tool does not

    for name, (rgb, dep, kind, scale, crop) in [("nyuv2_0045", mcs.NAMED_SOURCES["nyuv2_0045"]),
                                                ("middlebury_cones", mcs.NAMED_SOURCES["middlebury_cones"]),
                                                ("d3net_rgbd_008", mcs.source_of("d3net_rgbd_008"))]:
        aif, depth, info = mcs.load_rgbd(src, name, 320)
        ref = read_depth_input(src / dep, scale, kind, (1.0, 4.0) if kind == "disparity" else None)
        ref = crop_border(ref, crop) if any(crop) else ref
        ref = resize_nearest(ref, 320, depth.shape[0])
        assert aif.shape[:2] == depth.shape and depth.shape[1] == 320
        np.testing.assert_allclose(depth, ref, rtol=1e-6)
    assert mcs.load_rgbd(src, "d3net_rgbd_000", 320)[1].shape == (240, 320)


@pytest.mark.shared
def test_build_one_scene_end_to_end(tmp_path):
    from gs_dfd.cli import main

    src = shared_path()
    out = tmp_path / "cross"
    assert mcs.main(["build", "--variant", "heldout", "--src", str(src), "--out", str(out),
                     "--only", "nyuv2_0045", "--d3net-ids"]) == 0
    assert main(["check", "--scene", str(out / "nyuv2_0045")]) == 0
    manifest = json.loads((out / "cross_set.json").read_text())
    assert manifest["variant"] == "heldout" and manifest["scenes"] == ["nyuv2_0045"]
    assert mcs.main(["baselines", "--scenes", str(out), "--out", str(tmp_path / "base")]) == 0
    assert (tmp_path / "base" / "constant" / "nyuv2_0045.npy").is_file()
