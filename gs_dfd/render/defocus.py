"""Per-Gaussian defocus: CoC -> isotropic dilation of the 2D covariance, energy-conserving opacity.

Convolving a 2D Gaussian ``N(mu, S)`` with the Gaussian PSF ``N(0, sigma^2 I)``
gives ``N(mu, S + sigma^2 I)`` exactly, so a defocused splat is still a splat
(the observation behind defocus-aware splatting). Its peak drops by
``sqrt(det S / det S')``; scaling the opacity by that ratio keeps the
splat's integral, i.e. the light it delivers, unchanged. The anti-aliasing
term ``eps`` (0.3 px^2, gsplat's ``eps2d``) is part of both determinants so a
zero CoC gives exactly the sharp 3DGS render (Kerbl et al. 2023).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gs_dfd.optics.thin_lens import LensBatch, blur_sigma_px

EPS2D: float = 0.3  # px^2, gsplat's anti-aliasing dilation
ALPHA_MIN: float = 1.0 / 255.0  # 3DGS: contributions below this are skipped
MAX_EXTEND: float = 3.33  # gsplat: footprint bound in sigmas


@dataclass
class Dilated:
    """Screen-space Gaussians of F frames after each frame's defocus dilation."""

    conics: Tensor  # [F, N, 3] inverse of S' as (xx, xy, yy)
    opacities: Tensor  # [F, N] energy-rescaled opacity
    radii: Tensor  # [F, N, 2] float half-extent of the footprint box in px (0: culled); no gradient
    cov2d: Tensor | None = None  # [F, N, 3] S' = S + (sigma^2 + eps) I (reference path only)


def coc_px_per_frame(depths: Tensor, valid: Tensor, lenses: LensBatch) -> Tensor:
    """Unsigned thin-lens CoC (px) of every Gaussian (depths ``[N]``) in every frame's lens (``[F]``). [F, N]"""
    assert depths.dim() == 1 and valid.shape == depths.shape, (depths.shape, valid.shape)
    assert isinstance(lenses, LensBatch) and len(lenses) >= 1, f"need a LensBatch of F >= 1 lenses (got {lenses!r})"
    d = torch.where(valid, depths, torch.ones_like(depths))  # culled Gaussians: any positive depth
    return lenses.coc_px(d.expand(len(lenses), -1))


def dilate(
    cov2d: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    sigma_blur: Tensor,  # [F, N] px
    valid: Tensor,  # [N] bool
    eps: float = EPS2D,
) -> Dilated:
    """``S' = S + (sigma^2 + eps) I``, ``o' = o sqrt(det(S + eps I) / det S')`` and the footprint.

    The footprint uses gsplat's opacity-aware bound ``min(3.33, sqrt(2 ln(255 o')))``
    sigmas with the rescaled opacity: a blurred, faint splat is only as large
    as the region where it is still visible (alpha >= 1/255), so the bound is
    exact rather than a 3-sigma guess.
    """
    n = cov2d.shape[0]
    f = sigma_blur.shape[0]
    assert cov2d.shape == (n, 3), cov2d.shape
    assert opacities.shape == (n,), opacities.shape
    assert sigma_blur.shape == (f, n), sigma_blur.shape
    a, b, c = cov2d.unbind(-1)
    det_eps = (a + eps) * (c + eps) - b * b  # [N]
    d = sigma_blur * sigma_blur + eps  # [F, N]
    a2 = a + d
    c2 = c + d
    b2 = b.expand(f, n)
    det2 = a2 * c2 - b2 * b2  # [F, N]
    ok = valid & (det_eps > 0)
    okf = ok.expand(f, n) & (det2 > 0)
    safe_det2 = torch.where(okf, det2, torch.ones_like(det2))
    safe_det_eps = torch.where(ok, det_eps, torch.ones_like(det_eps))
    inv = 1.0 / safe_det2
    conics = torch.stack([c2 * inv, -b2 * inv, a2 * inv], dim=-1)  # [F, N, 3]
    opac = opacities * torch.sqrt(safe_det_eps / safe_det2)  # [F, N]
    opac = torch.where(okf, opac, torch.zeros_like(opac))
    with torch.no_grad():
        seen = okf & (opac >= ALPHA_MIN)
        o = torch.where(seen, opac, torch.ones_like(opac))
        extend = torch.sqrt(2.0 * torch.log(o / ALPHA_MIN)).clamp(max=MAX_EXTEND)
        rx = extend * torch.sqrt(a2.clamp_min(0))
        ry = extend * torch.sqrt(c2.clamp_min(0))
        radii = torch.stack([rx, ry], dim=-1) * seen[..., None]
        radii = torch.nan_to_num(radii, nan=0.0, posinf=0.0)
    cov_out = torch.stack([a2, b2, c2], dim=-1)
    return Dilated(conics=conics, opacities=opac, radii=radii.detach(), cov2d=cov_out)


def tile_rects(
    means2d: Tensor,  # [N, 2]
    radii: Tensor,  # [F, N, 2]
    width: int, height: int, tile_size: int,
) -> Tensor:
    """Inclusive tile ranges ``(tx0, ty0, tx1, ty1)`` touched by each footprint box; empty where culled. [F, N, 4] int32

    Computed once here and used by every backend, so the ``torch`` and ``cpu``
    rasterisers see identical tile lists.
    """
    f, n = radii.shape[:2]
    assert means2d.shape == (n, 2), means2d.shape
    assert radii.shape == (f, n, 2), radii.shape
    tw = (width + tile_size - 1) // tile_size
    th = (height + tile_size - 1) // tile_size
    with torch.no_grad():
        m = means2d.detach()[None]
        lo = torch.floor((m - radii) / tile_size)
        hi = torch.floor((m + radii) / tile_size)
        x0 = lo[..., 0].clamp(0, tw)
        y0 = lo[..., 1].clamp(0, th)
        x1 = hi[..., 0].clamp(-1, tw - 1)
        y1 = hi[..., 1].clamp(-1, th - 1)
        keep = (radii > 0).all(-1) & (x1 >= x0) & (y1 >= y0) & torch.isfinite(lo).all(-1) & torch.isfinite(hi).all(-1)
        rect = torch.stack([x0, y0, x1, y1], dim=-1)
        rect = torch.where(keep[..., None], rect, torch.tensor([0.0, 0.0, -1.0, -1.0], dtype=rect.dtype))
    return rect.to(torch.int32).contiguous()


def blur_sigma(coc_px: Tensor, sigma_per_coc: float) -> Tensor:
    """Gaussian PSF sigma (px) of an unsigned CoC diameter; thin wrapper to keep one formula."""
    return blur_sigma_px(coc_px, sigma_per_coc)


__all__ = ["Dilated", "EPS2D", "ALPHA_MIN", "MAX_EXTEND", "coc_px_per_frame", "dilate", "tile_rects", "blur_sigma"]
