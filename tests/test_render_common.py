"""Shared scene builders for the render tests (no tests here)."""

from __future__ import annotations

import math

import torch

from gs_dfd.optics.thin_lens import ThinLens
from gs_dfd.render import PinholeCamera


def random_scene(n: int, width: int = 64, height: int = 48, seed: int = 0, dtype=torch.float32,
                 zmin: float = 1.0, zmax: float = 4.0, scale_px=(0.8, 5.0)):
    """Random Gaussians filling the frustum of a small camera, with overlaps and occlusions."""
    g = torch.Generator().manual_seed(seed)
    f = 0.9 * width
    cam = PinholeCamera(width=width, height=height, fx=f, fy=f, cx=width / 2, cy=height / 2)
    z = zmin + (zmax - zmin) * torch.rand(n, generator=g, dtype=torch.float64)
    u = (torch.rand(n, generator=g, dtype=torch.float64) * 1.2 - 0.1) * width
    v = (torch.rand(n, generator=g, dtype=torch.float64) * 1.2 - 0.1) * height
    means = torch.stack([(u - cam.cx) * z / f, (v - cam.cy) * z / f, z], -1)
    lo, hi = math.log(scale_px[0]), math.log(scale_px[1])
    s_px = torch.exp(lo + (hi - lo) * torch.rand(n, 3, generator=g, dtype=torch.float64))
    scales = s_px * z[:, None] / f
    quats = torch.randn(n, 4, generator=g, dtype=torch.float64)
    opac = 0.2 + 0.8 * torch.rand(n, generator=g, dtype=torch.float64)
    colors = torch.rand(n, 3, generator=g, dtype=torch.float64)
    cast = lambda t: t.to(dtype)  # noqa: E731
    return cast(means), cast(quats), cast(scales), cast(opac), cast(colors), cam


def lens_for_max_coc(max_coc_px: float, focus_m: float = 2.0, zmin: float = 1.0, zmax: float = 4.0,
                     focal_length_m: float = 0.05, f_number: float = 2.0) -> ThinLens:
    """Thin lens whose largest CoC over [zmin, zmax] is ``max_coc_px`` (pixel pitch chosen to fit)."""
    metres = ThinLens(focal_length_m, f_number, focus_m, pixel_pitch_m=1.0)  # CoC in metres
    c = max(metres.coc_px(z) for z in (zmin, zmax))
    return ThinLens(focal_length_m, f_number, focus_m, pixel_pitch_m=c / max_coc_px)
