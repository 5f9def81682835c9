"""CUDA backend on gsplat's kernels (Ye et al. 2024): projection, tile intersection, rasterisation.

gsplat returns conics of ``S + eps I``; inverting them recovers the projected
covariance, which :func:`gs_dfd.render.defocus.dilate` blurs per frame exactly
as the other backends do. Tile intersection and compositing then run with the
dilated conics and energy-rescaled opacities, all F frames as one batch of
"cameras" sharing the 2D means. gsplat's kernels clamp alpha at 0.999 where
the reference uses 3DGS's 0.99; renders differ only where a single splat has
opacity above 0.99. Written against gsplat 1.5.3; not exercised on a GPU here.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gs_dfd.optics.thin_lens import LensBatch
from gs_dfd.render.defocus import blur_sigma, coc_px_per_frame, dilate, tile_rects

TILE_SIZE = 16


def render_gsplat(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    colors: Tensor,  # [N, C]
    camera,
    lenses: LensBatch,  # [F] (length 0 with coc_px_override)
    coc_px_override: Tensor | None,  # [F, N]
    return_coc: bool,
    sigma_per_coc: float,
    background: Tensor | None,  # [C]
    near_plane: float,
    eps2d: float,
):
    from gsplat import fully_fused_projection, isect_offset_encode, isect_tiles, rasterize_to_pixels

    from gs_dfd.render.api import RenderOutput

    n, c = colors.shape
    w, h = int(camera.width), int(camera.height)
    dev, dt = means.device, means.dtype
    viewmat = camera.viewmat(dev, dt)
    # gsplat culls Gaussians whose *sharp* footprint misses the image; project onto a canvas enlarged
    # by the largest blur radius so blurred splats just off screen still reach it.
    with torch.no_grad():
        z = (means @ viewmat[:3, :3].T + viewmat[:3, 3])[:, 2]
        vz = z > near_plane
        if coc_px_override is not None:
            cmax = float(coc_px_override.detach().abs().max()) if coc_px_override.numel() else 0.0
        else:
            cmax = float(coc_px_per_frame(z, vz, lenses).max()) if bool(vz.any()) else 0.0
    margin = int(math.ceil(3.33 * (sigma_per_coc * cmax + math.sqrt(eps2d)))) + 1
    K = torch.tensor([[camera.fx, 0.0, camera.cx + margin], [0.0, camera.fy, camera.cy + margin], [0.0, 0.0, 1.0]],
                     device=dev, dtype=dt)
    radii0, means2d_b, depths_b, conics_b, _ = fully_fused_projection(
        means, None, quats, scales, viewmat[None], K[None], w + 2 * margin, h + 2 * margin, eps2d=eps2d,
        near_plane=near_plane)
    shift = torch.tensor([float(margin), float(margin)], device=dev, dtype=dt)
    means2d = means2d_b[0] - shift  # [N, 2]
    depths = depths_b[0]  # [N]
    valid = (radii0[0] > 0).all(-1)
    ca, cb, cc = conics_b[0].unbind(-1)
    det_c = ca * cc - cb * cb
    det_c = torch.where(valid, det_c, torch.ones_like(det_c))
    cov_eps = torch.stack([cc / det_c, -cb / det_c, ca / det_c], dim=-1)  # S + eps I
    cov2d = cov_eps - torch.tensor([eps2d, 0.0, eps2d], device=dev, dtype=dt)
    if coc_px_override is not None:
        coc = coc_px_override.to(dt).abs()
    else:
        coc = coc_px_per_frame(depths, valid, lenses)
    f = coc.shape[0]
    dil = dilate(cov2d, opacities, blur_sigma(coc, sigma_per_coc), valid, eps2d)
    rects = tile_rects(means2d, dil.radii, w, h, TILE_SIZE)
    on_screen = rects[..., 2] >= rects[..., 0]  # [F, N]
    radii = torch.where(on_screen[..., None], torch.ceil(dil.radii), torch.zeros_like(dil.radii)).to(torch.int32)
    tw, th = (w + TILE_SIZE - 1) // TILE_SIZE, (h + TILE_SIZE - 1) // TILE_SIZE
    means2d_f = means2d[None].expand(f, n, 2)
    depths_f = depths.detach()[None].expand(f, n).contiguous()
    _, isect_ids, flatten_ids = isect_tiles(means2d_f.detach().contiguous(), radii.contiguous(), depths_f, TILE_SIZE,
                                            tw, th)
    offsets = isect_offset_encode(isect_ids, f, tw, th)
    feats = [colors.to(dt)[None].expand(f, n, c), depths[None, :, None].expand(f, n, 1)]
    if return_coc:
        feats.append(coc[..., None])
    features = torch.cat(feats, dim=-1).contiguous()
    feat, alpha = rasterize_to_pixels(means2d_f, dil.conics.contiguous(), features, dil.opacities.contiguous(),
                                      w, h, TILE_SIZE, offsets, flatten_ids)
    rgb = feat[..., :c]
    if background is not None:
        rgb = rgb + (1.0 - alpha) * background.to(rgb)
    safe_alpha = alpha.clamp_min(1e-10)
    depth_accum = feat[..., c:c + 1]
    out_coc = feat[..., c + 1:c + 2] / safe_alpha if return_coc else None
    return RenderOutput(rgb=rgb, alpha=alpha, depth=depth_accum / safe_alpha, depth_accum=depth_accum, coc=out_coc,
                        means2d=means2d, radii=radii, depths=depths, coc_px=coc, backend="gsplat")
