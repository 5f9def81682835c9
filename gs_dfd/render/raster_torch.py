"""Reference tile rasteriser in pure PyTorch: the oracle for the other backends.

Front-to-back alpha compositing of depth-sorted 2D Gaussians as in 3DGS
(Kerbl et al. 2023): ``alpha = min(0.99, o exp(-q/2))``, contributions with
``alpha < 1/255`` are skipped, and a pixel stops once its transmittance would
drop below 1e-4. Gaussians are binned into 16x16 tiles by their footprint
boxes, each tile's list is padded, and the per-pixel recurrence is written with
``cumprod`` so plain autograd gives the gradients. Tiles are processed in
chunks under activation checkpointing to bound memory; this changes nothing
numerically, it only recomputes a chunk in the backward pass.
"""

from __future__ import annotations

import torch
import torch.utils.checkpoint
from torch import Tensor

from gs_dfd.render.defocus import ALPHA_MIN

T_MIN: float = 1e-4  # 3DGS early-stop transmittance
ALPHA_MAX: float = 0.99  # 3DGS alpha clamp
CHUNK_ELEMS: int = 1 << 22  # (tile, pixel, gaussian) triples per chunk


def bin_tiles(rect: Tensor, order: Tensor, tiles_x: int, tiles_y: int) -> tuple[Tensor, Tensor, Tensor]:
    """Vectorised tile binning of one frame, depth order kept within each tile.

    Returns ``(gauss_ids [P], offsets [T+1], counts [T])`` where the ids of tile
    ``t`` are ``gauss_ids[offsets[t]:offsets[t+1]]`` sorted front to back.
    """
    n_tiles = tiles_x * tiles_y
    r = rect[order].long()  # [M, 4]
    nx = (r[:, 2] - r[:, 0] + 1).clamp_min(0)
    ny = (r[:, 3] - r[:, 1] + 1).clamp_min(0)
    cnt = nx * ny
    total = int(cnt.sum())
    m = order.shape[0]
    dev = rect.device
    if total == 0:
        z = torch.zeros(n_tiles, dtype=torch.long, device=dev)
        return torch.zeros(0, dtype=torch.long, device=dev), torch.zeros(n_tiles + 1, dtype=torch.long, device=dev), z
    rank = torch.repeat_interleave(torch.arange(m, device=dev), cnt)
    start = torch.cumsum(cnt, 0) - cnt
    local = torch.arange(total, device=dev) - start[rank]
    tx = r[rank, 0] + local % nx[rank]
    ty = r[rank, 1] + local // nx[rank]
    tile = ty * tiles_x + tx
    perm = torch.argsort(tile * m + rank)
    tile_sorted = tile[perm]
    gauss = order[rank[perm]]
    counts = torch.bincount(tile_sorted, minlength=n_tiles)
    offsets = torch.zeros(n_tiles + 1, dtype=torch.long, device=dev)
    offsets[1:] = torch.cumsum(counts, 0)
    return gauss, offsets, counts


def _composite_chunk(
    means2d: Tensor, conics: Tensor, opacities: Tensor, features: Tensor, idx: Tensor, pix: Tensor
) -> tuple[Tensor, Tensor]:
    """Composite one chunk of tiles. idx [t, k] (-1 = padding), pix [t, p, 2] -> ([t, p, C], T_final [t, p])."""
    pad = idx < 0
    gi = idx.clamp_min(0)
    mu = means2d[gi]  # [t, k, 2]
    co = conics[gi]  # [t, k, 3]
    dx = mu[:, None, :, 0] - pix[:, :, None, 0]  # [t, p, k]
    dy = mu[:, None, :, 1] - pix[:, :, None, 1]
    power = 0.5 * (co[:, None, :, 0] * dx * dx + co[:, None, :, 2] * dy * dy) + co[:, None, :, 1] * dx * dy
    neg = power < 0
    power = torch.where(neg, torch.zeros_like(power), power)
    alpha = (opacities[gi][:, None, :] * torch.exp(-power)).clamp(max=ALPHA_MAX)
    keep = ~pad[:, None, :] & ~neg & (alpha >= ALPHA_MIN)
    alpha = torch.where(keep, alpha, torch.zeros_like(alpha))
    with torch.no_grad():  # early stop: Gaussian i is used only if T stays >= T_MIN after it
        alive = torch.cumprod(1.0 - alpha, dim=-1) >= T_MIN
    alpha = torch.where(alive, alpha, torch.zeros_like(alpha))
    trans = torch.cumprod(1.0 - alpha, dim=-1)  # inclusive
    t_excl = torch.cat([torch.ones_like(trans[..., :1]), trans[..., :-1]], dim=-1)
    w = alpha * t_excl  # [t, p, k]
    out = torch.einsum("tpk,tkc->tpc", w, features[gi])
    return out, trans[..., -1]


def rasterize_torch(
    means2d: Tensor,  # [N, 2]
    conics: Tensor,  # [F, N, 3]
    opacities: Tensor,  # [F, N]
    features: Tensor,  # [F, N, C]
    rects: Tensor,  # [F, N, 4] int32 inclusive tile ranges
    order: Tensor,  # [M] long: visible Gaussians front to back
    width: int, height: int, tile_size: int = 16,
) -> tuple[Tensor, Tensor]:
    """Composite F frames. Returns (features [F, H, W, C], alpha [F, H, W, 1])."""
    f, n = opacities.shape
    ch = features.shape[-1]
    assert means2d.shape == (n, 2), means2d.shape
    assert conics.shape == (f, n, 3), conics.shape
    assert features.shape == (f, n, ch), features.shape
    assert rects.shape == (f, n, 4), rects.shape
    tx, ty = (width + tile_size - 1) // tile_size, (height + tile_size - 1) // tile_size
    dev, dt = means2d.device, means2d.dtype
    ps = tile_size * tile_size
    ly, lx = torch.meshgrid(torch.arange(tile_size, device=dev), torch.arange(tile_size, device=dev), indexing="ij")
    local = torch.stack([lx.reshape(-1), ly.reshape(-1)], dim=-1).to(dt) + 0.5  # [ps, 2]
    tiles = torch.arange(tx * ty, device=dev)
    origin = torch.stack([(tiles % tx) * tile_size, (tiles // tx) * tile_size], dim=-1).to(dt)  # [T, 2]
    use_ckpt = torch.is_grad_enabled() and any(
        t.requires_grad for t in (means2d, conics, opacities, features))
    imgs, trans_all = [], []
    for fi in range(f):
        gauss, offsets, counts = bin_tiles(rects[fi], order, tx, ty)
        out = torch.zeros(tx * ty, ps, ch, device=dev, dtype=dt)
        trans = torch.ones(tx * ty, ps, device=dev, dtype=dt)
        t0 = 0
        n_tiles = tx * ty
        cnt_list = counts.tolist()
        pieces_out, pieces_t, ranges = [], [], []
        while t0 < n_tiles:
            t1, kmax = t0, 0
            while t1 < n_tiles and (t1 == t0 or (t1 - t0 + 1) * ps * max(kmax, cnt_list[t1]) <= CHUNK_ELEMS):
                kmax = max(kmax, cnt_list[t1])
                t1 += 1
            if kmax > 0:
                lo, hi = int(offsets[t0]), int(offsets[t1])
                tile_of = torch.repeat_interleave(torch.arange(t1 - t0, device=dev), counts[t0:t1])
                pos = torch.arange(hi - lo, device=dev) - (offsets[t0:t1] - lo)[tile_of]
                idx = torch.full((t1 - t0, kmax), -1, dtype=torch.long, device=dev)
                idx[tile_of, pos] = gauss[lo:hi]
                pix = origin[t0:t1, None, :] + local[None]  # [t, ps, 2]
                args = (means2d, conics[fi], opacities[fi], features[fi], idx, pix)
                if use_ckpt:
                    o, tr = torch.utils.checkpoint.checkpoint(_composite_chunk, *args, use_reentrant=False)
                else:
                    o, tr = _composite_chunk(*args)
                pieces_out.append(o)
                pieces_t.append(tr)
                ranges.append((t0, t1))
            t0 = t1
        if ranges:
            sel = torch.cat([torch.arange(a, b, device=dev) for a, b in ranges])
            out = out.index_put((sel,), torch.cat(pieces_out))
            trans = trans.index_put((sel,), torch.cat(pieces_t))
        img = out.reshape(ty, tx, tile_size, tile_size, ch).permute(0, 2, 1, 3, 4).reshape(
            ty * tile_size, tx * tile_size, ch)[:height, :width]
        tr_img = trans.reshape(ty, tx, tile_size, tile_size).permute(0, 2, 1, 3).reshape(
            ty * tile_size, tx * tile_size)[:height, :width]
        imgs.append(img)
        trans_all.append(tr_img)
    feat = torch.stack(imgs)  # [F, H, W, C]
    alpha = 1.0 - torch.stack(trans_all)[..., None]  # [F, H, W, 1]
    return feat, alpha
