"""The pure-PyTorch reference renderer: projection, defocus physics, gradients and outputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gs_dfd.optics.thin_lens import LensBatch, LensError, ThinLens
from gs_dfd.render import PinholeCamera, render_defocus
from gs_dfd.render.defocus import dilate
from gs_dfd.render.projection import project_gaussians
from test_render_common import lens_for_max_coc, random_scene


def _sharp_bruteforce(means2d, conics, opac, colors, depths, w, h):
    """Per-pixel 3DGS compositing in float64 NumPy over all Gaussians, no tiles, no footprints."""
    order = np.argsort(depths, kind="stable")
    img = np.zeros((h, w, colors.shape[1]))
    alpha_img = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            px, py = x + 0.5, y + 0.5
            t = 1.0
            acc = np.zeros(colors.shape[1])
            for g in order:
                dx, dy = means2d[g, 0] - px, means2d[g, 1] - py
                a, b, c = conics[g]
                power = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
                if power < 0:
                    continue
                alpha = min(0.99, opac[g] * math.exp(-power))
                if alpha < 1 / 255:
                    continue
                if t * (1 - alpha) < 1e-4:
                    break
                acc += alpha * t * colors[g]
                t *= 1 - alpha
            img[y, x] = acc
            alpha_img[y, x] = 1 - t
    return img, alpha_img


def test_projection_matches_gsplat_torch_reference():
    gsplat_impl = pytest.importorskip("gsplat.cuda._torch_impl")
    means, quats, scales, opac, colors, cam = random_scene(200, seed=3, dtype=torch.float64)
    view = torch.eye(4, dtype=torch.float64)
    view[:3, 3] = torch.tensor([0.05, -0.02, 0.1], dtype=torch.float64)
    proj = project_gaussians(means, quats, scales, view, cam.fx, cam.fy, cam.cx, cam.cy, cam.width, cam.height)
    covars = gsplat_impl._quat_scale_to_covar_preci(quats, scales, compute_preci=False, triu=False)[0]
    K = cam.K("cpu", torch.float64)
    radii, m2d, depths, conics, _ = gsplat_impl._fully_fused_projection(
        means, covars, view[None], K[None], cam.width, cam.height, eps2d=0.3)
    ok = proj.valid
    torch.testing.assert_close(proj.means2d[ok], m2d[0][ok])
    torch.testing.assert_close(proj.depths, depths[0])
    zero = torch.zeros(1, means.shape[0], dtype=torch.float64)
    dil = dilate(proj.cov2d, opac, zero, proj.valid)
    torch.testing.assert_close(dil.conics[0][ok], conics[0][ok])


def test_zero_coc_is_the_sharp_3dgs_render():
    means, quats, scales, opac, colors, cam = random_scene(40, width=24, height=20, seed=4, dtype=torch.float64)
    out = render_defocus(means, quats, scales, opac, colors, cam, [], backend="torch",
                         coc_px_override=torch.zeros(1, 40, dtype=torch.float64))
    proj = project_gaussians(means, quats, scales, torch.eye(4, dtype=torch.float64), cam.fx, cam.fy, cam.cx,
                             cam.cy, cam.width, cam.height)
    a, b, c = (proj.cov2d + torch.tensor([0.3, 0.0, 0.3], dtype=torch.float64)).unbind(-1)
    det = a * c - b * b
    conics = torch.stack([c / det, -b / det, a / det], -1).numpy()
    vis = proj.valid.numpy()
    ref, ref_alpha = _sharp_bruteforce(proj.means2d.numpy()[vis], conics[vis], opac.numpy()[vis],
                                       colors.numpy()[vis], proj.depths.numpy()[vis], cam.width, cam.height)
    np.testing.assert_allclose(out.rgb[0].numpy(), ref, atol=1e-9)
    np.testing.assert_allclose(out.alpha[0, ..., 0].numpy(), ref_alpha, atol=1e-9)
    # An in-focus thin lens (pinhole-like aperture) gives the same picture.
    pin = ThinLens(focal_length_m=0.05, f_number=1e9, focus_distance_m=2.0, pixel_pitch_m=1e-5)
    out2 = render_defocus(means, quats, scales, opac, colors, cam, [pin], backend="torch")
    np.testing.assert_allclose(out2.rgb[0].numpy(), ref, atol=1e-7)


def _single(width=96, height=96, sigma_px=4.0, opacity=0.9, depth=2.0):
    f = 80.0
    cam = PinholeCamera(width=width, height=height, fx=f, fy=f, cx=width / 2, cy=height / 2)
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    s = sigma_px * depth / f
    return (t([[0.0, 0.0, depth]]), t([[1.0, 0.0, 0.0, 0.0]]), t([[s, s, s]]), t([opacity]),
            t([[1.0, 0.5, 0.25]]), cam)


@pytest.mark.parametrize("coc", [4.0, 8.0, 16.0])
def test_isolated_gaussian_keeps_its_energy_under_blur(coc):
    means, quats, scales, opac, colors, cam = _single()
    sharp = render_defocus(means, quats, scales, opac, colors, cam, [], backend="torch",
                           coc_px_override=torch.zeros(1, 1, dtype=torch.float64))
    blur = render_defocus(means, quats, scales, opac, colors, cam, [], backend="torch",
                          coc_px_override=torch.full((1, 1), coc, dtype=torch.float64))
    e0, e1 = sharp.rgb.sum(dim=(0, 1, 2)), blur.rgb.sum(dim=(0, 1, 2))
    assert torch.all((e1 / e0 - 1).abs() < 0.02), (e0, e1)
    assert blur.rgb.max() < sharp.rgb.max()  # spread out, not just rescaled


def test_depth_of_an_opaque_layer():
    n_side = 12
    width = height = 48
    f = 40.0
    depth = 2.5
    cam = PinholeCamera(width=width, height=height, fx=f, fy=f, cx=width / 2, cy=height / 2)
    uv = (torch.arange(n_side, dtype=torch.float64) + 0.5) / n_side * 1.4 - 0.2
    u, v = torch.meshgrid(uv * width, uv * height, indexing="xy")
    means = torch.stack([(u.reshape(-1) - cam.cx) * depth / f, (v.reshape(-1) - cam.cy) * depth / f,
                         torch.full((n_side * n_side,), depth, dtype=torch.float64)], -1)
    n = means.shape[0]
    s = 6.0 * depth / f
    scales = torch.tensor([[s, s, 1e-3]], dtype=torch.float64).expand(n, 3)
    quats = torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64).expand(n, 4)
    out = render_defocus(means, quats, scales, torch.ones(n, dtype=torch.float64), torch.rand(n, 3, dtype=torch.float64),
                         cam, [lens_for_max_coc(6.0, focus_m=1.5, zmin=2.5, zmax=2.5)], backend="torch",
                         return_coc=True)
    assert out.alpha.min() > 0.999
    torch.testing.assert_close(out.depth, torch.full_like(out.depth, depth), atol=1e-9, rtol=0)
    torch.testing.assert_close(out.coc, torch.full_like(out.coc, 6.0), atol=1e-9, rtol=0)


def test_frames_in_one_call_equal_separate_calls_and_background():
    means, quats, scales, opac, colors, cam = random_scene(150, seed=5)
    lenses = [lens_for_max_coc(12.0, focus_m=fd) for fd in (1.2, 2.0, 3.5)]
    bg = torch.tensor([0.2, 0.4, 0.6])
    both = render_defocus(means, quats, scales, opac, colors, cam, lenses, backend="torch", background=bg)
    for i, lens in enumerate(lenses):
        one = render_defocus(means, quats, scales, opac, colors, cam, [lens], backend="torch")
        torch.testing.assert_close(both.rgb[i], one.rgb[0] + (1 - one.alpha[0]) * bg)
        torch.testing.assert_close(both.alpha[i], one.alpha[0])
    assert not torch.equal(both.rgb[0], both.rgb[2])


def test_gradcheck_reference_float64():
    means, quats, scales, opac, colors, cam = random_scene(5, width=12, height=10, seed=7, dtype=torch.float64,
                                                           scale_px=(1.5, 3.0))
    opac = opac.clamp(max=0.9)  # stay off the 0.99 alpha clamp's kink
    coc = torch.tensor([[3.0, 0.5, 6.0, 1.0, 2.0]], dtype=torch.float64)
    lens = lens_for_max_coc(5.0)
    inputs = [t.clone().requires_grad_(True) for t in (means, quats, scales, opac, colors, coc)]

    def fn(m, q, s, o, c, k):
        out = render_defocus(m, q, s, o, c, cam, [lens], coc_px_override=k, backend="torch", return_coc=True)
        return out.rgb, out.alpha, out.depth_accum, out.coc * out.alpha

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)

    def fn_lens(m, q, s, o, c):
        out = render_defocus(m, q, s, o, c, cam, [lens], backend="torch")
        return out.rgb, out.alpha, out.depth_accum

    assert torch.autograd.gradcheck(fn_lens, inputs[:5], eps=1e-6, atol=1e-6, rtol=1e-4)


def test_means2d_gradient_and_strategy_info():
    means, quats, scales, opac, colors, cam = random_scene(60, seed=8)
    means.requires_grad_(True)
    out = render_defocus(means, quats, scales, opac, colors, cam, [lens_for_max_coc(8.0)], backend="torch")
    out.means2d.retain_grad()
    out.rgb.sum().backward()
    assert out.means2d.grad is not None and out.means2d.grad.shape == (60, 2)
    assert out.means2d.grad.abs().sum() > 0 and means.grad.abs().sum() > 0
    info = out.strategy_info()
    assert info["radii"].shape == (60, 2) and info["means2d"] is out.means2d
    assert info["width"] == cam.width and info["height"] == cam.height


def test_bad_inputs_are_refused():
    means, quats, scales, opac, colors, cam = random_scene(10, seed=9)
    with pytest.raises(AssertionError):
        render_defocus(means, quats, scales[:5], opac, colors, cam, [lens_for_max_coc(5.0)], backend="torch")
    with pytest.raises(AssertionError):
        render_defocus(means, quats, scales, opac, colors, cam, [lens_for_max_coc(5.0)], backend="nope")
    with pytest.raises(LensError):
        ThinLens(focal_length_m=0.05, f_number=2.0, focus_distance_m=0.01, pixel_pitch_m=1e-5)
    bad = LensBatch.from_lenses([lens_for_max_coc(5.0)])
    bad = LensBatch(bad.focal_length_m, bad.f_number, bad.focal_length_m * 0.2, bad.pixel_pitch_m)  # s < f
    with pytest.raises(LensError):
        render_defocus(means, quats, scales, opac, colors, cam, bad, backend="torch")


def test_a_lens_batch_renders_as_the_lens_list():
    means, quats, scales, opac, colors, cam = random_scene(80, seed=10, dtype=torch.float64)
    lenses = [lens_for_max_coc(10.0, focus_m=fd) for fd in (1.2, 3.0)]
    by_list = render_defocus(means, quats, scales, opac, colors, cam, lenses, backend="torch", return_coc=True)
    batch = LensBatch.from_lenses(lenses, dtype=torch.float64)
    by_batch = render_defocus(means, quats, scales, opac, colors, cam, batch, backend="torch", return_coc=True)
    torch.testing.assert_close(by_batch.rgb, by_list.rgb)
    torch.testing.assert_close(by_batch.coc_px, by_list.coc_px)
    ok = by_list.depths > 0.01
    want = torch.stack([torch.as_tensor(lens.coc_px(by_list.depths[ok])) for lens in lenses])
    torch.testing.assert_close(by_list.coc_px[:, ok], want)
