"""Loss (a) of the ``dered`` ablation: re-blur the fit's all-in-focus image in image space.

DEReD (Si et al., "Fully Self-Supervised Depth Estimation from Defocus Clue",
CVPR 2023, arXiv 2303.10752) re-renders a defocused frame from an AIF image
and a CoC map with a per-pixel Gaussian PSF layer (a custom CUDA kernel from
Gur & Wolf, CVPR 2019). ``dered`` keeps everything of ``gs-siamese`` but that
renderer: the *fit's* AIF (the cache's ``aif.png``, an estimate, never the
scene's ground-truth ``all_in_focus``) is blurred per pixel by a Gaussian of
``sigma = coc / 4`` (:data:`~gs_dfd.optics.thin_lens.DISK_SIGMA_PER_COC`) and
compared with the frame. So the ablation measures what the 3D Gaussians add:
occlusion edges (image-space blur lets a sharp foreground bleed over its
background and vice versa) and the fit's own colours behind blur.

The spatially varying blur is made differentiable w.r.t. the CoC map without
a custom kernel: the AIF is blurred at a fixed ladder of sigmas with
separable Gaussian kernels (no gradient needed: the AIF is data), and each
pixel mixes the two levels around its own sigma. The mixing weight is linear
in *variance*, so the mixture has exactly the wanted second moment (the same
moment matching that turns a disk into ``sigma = c/4``); the ladder is dense
enough (ratio <= 1.33 between levels above 3 px) that the mixture's shape
stays close to a Gaussian (worst case, white noise: up to 0.03 of the image
range at sub-pixel sigma, where kernel truncation dominates; < 0.004 above
1.5 px; see tests/test_baselines.py). :func:`reblur_reference` is the brute-force twin.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from gs_dfd.optics.thin_lens import DISK_SIGMA_PER_COC
from gs_dfd.train.data import CropRef, TrainScene


def sigma_levels(max_sigma_px: float) -> Tensor:  # [L]
    """The blur ladder from 0 to (at least) ``max_sigma_px``: steps of 0.25 px up to 1.5 px, 0.5 px up to 3 px,
    then 1 px (below ~1 px a discrete kernel's shape changes fastest with sigma)."""
    assert max_sigma_px > 0, max_sigma_px
    ladder = [0.25 * k for k in range(6)] + [1.5 + 0.5 * k for k in range(4)]  # 0 .. 3.0
    ladder += [float(s) for s in range(4, max(4, math.ceil(max_sigma_px)) + 1)]
    top = next(i for i, s in enumerate(ladder) if s >= max_sigma_px)
    return torch.tensor(ladder[: top + 1], dtype=torch.float32)


def margin_for(max_sigma_px: float) -> int:
    """Context (pixels) the AIF crop needs on each side so the widest kernel sees real image."""
    return int(math.ceil(3.0 * float(sigma_levels(max_sigma_px)[-1])))


def gaussian_kernel_1d(sigma: float, dtype: torch.dtype = torch.float32) -> Tensor:  # [2r + 1], r = ceil(3 sigma)
    r = int(math.ceil(3.0 * sigma))
    x = torch.arange(-r, r + 1, dtype=dtype)
    g = torch.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()


def blur_stack(image: Tensor, levels: Tensor) -> Tensor:
    """image ``[M, C, H, W]`` -> ``[L, M, C, H, W]`` blurred at each sigma of ``levels`` ``[L]`` ('same' size,
    replicate padding; level 0 may be 0 = the image itself)."""
    assert image.dim() == 4 and levels.dim() == 1, (image.shape, levels.shape)
    m, c, h, w = image.shape
    out = []
    x = image.reshape(m * c, 1, h, w)
    for s in levels.tolist():
        if s <= 1e-6:
            out.append(image)
            continue
        g = gaussian_kernel_1d(s, image.dtype).to(image.device)
        r = (g.numel() - 1) // 2
        y = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), g.view(1, 1, 1, -1))
        y = F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), g.view(1, 1, -1, 1))
        out.append(y.view(m, c, h, w))
    return torch.stack(out)


def reblur(aif: Tensor, coc_px: Tensor, margin: int, max_sigma_px: float,
           sigma_per_coc: float = DISK_SIGMA_PER_COC) -> Tensor:
    """Blur each pixel of ``aif`` by its own Gaussian (gather form: the output pixel's sigma).

    aif: ``[M, C, h + 2 margin, w + 2 margin]`` (the crop with context; no gradient);
    coc_px: ``[M, F, h, w]``, F CoC maps per image (the two frames of a pair share one AIF);
    returns ``[M, F, C, h, w]``, differentiable w.r.t. ``coc_px``. Sigmas above ``max_sigma_px`` clamp.
    """
    m, c = aif.shape[:2]
    assert coc_px.dim() == 4 and coc_px.shape[0] == m, (aif.shape, coc_px.shape)
    nf, h, w = coc_px.shape[1:]
    assert aif.shape[2:] == (h + 2 * margin, w + 2 * margin), (aif.shape, coc_px.shape, margin)
    levels = sigma_levels(max_sigma_px).to(device=aif.device, dtype=aif.dtype)
    assert margin >= math.ceil(3.0 * float(levels[-1])), (margin, float(levels[-1]))
    with torch.no_grad():
        stack = blur_stack(aif.detach(), levels)[..., margin: margin + h, margin: margin + w]  # [L, M, C, h, w]
    sigma = (coc_px * sigma_per_coc).clamp(0.0, float(levels[-1]))  # [M, F, h, w]
    lo = (torch.searchsorted(levels, sigma.detach().contiguous(), right=True) - 1).clamp(0, len(levels) - 2)
    v_lo, v_hi = levels[lo] ** 2, levels[lo + 1] ** 2
    t = ((sigma * sigma - v_lo) / (v_hi - v_lo)).clamp(0.0, 1.0)  # variance-linear mixing weight
    # stack rows per (level, image): gather the two levels of every output pixel.
    src = stack.permute(1, 0, 2, 3, 4)  # [M, L, C, h, w]
    idx = lo[:, :, None].expand(m, nf, c, h, w)
    below = torch.gather(src, 1, idx)  # [M, F, C, h, w]
    above = torch.gather(src, 1, idx + 1)
    return below + t[:, :, None] * (above - below)


def reblur_reference(aif: Tensor, coc_px: Tensor, margin: int, sigma_per_coc: float = DISK_SIGMA_PER_COC) -> Tensor:
    """Brute-force twin of :func:`reblur` (no sigma clamp, no ladder): every output pixel is the normalised
    2D Gaussian (truncated at ``ceil(3 sigma)``) of its own sigma applied to the AIF. Tiny images only."""
    m, c = aif.shape[:2]
    nf, h, w = coc_px.shape[1:]
    out = aif.new_zeros(m, nf, c, h, w)
    for i in range(m):
        for f in range(nf):
            for y in range(h):
                for x in range(w):
                    s = float(coc_px[i, f, y, x]) * sigma_per_coc
                    cy, cx = y + margin, x + margin
                    if s <= 1e-6:
                        out[i, f, :, y, x] = aif[i, :, cy, cx]
                        continue
                    r = int(math.ceil(3.0 * s))
                    assert r <= margin, (r, margin)
                    d = torch.arange(-r, r + 1, dtype=aif.dtype)
                    g = torch.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / (2.0 * s * s))
                    win = aif[i, :, cy - r: cy + r + 1, cx - r: cx + r + 1]
                    out[i, f, :, y, x] = (win * g).sum((1, 2)) / g.sum()
    return out


def aif_crop(sc: TrainScene, ref: CropRef, crop_hw: tuple[int, int], margin: int) -> Tensor:
    """The fit's AIF under ``ref``'s crop plus ``margin`` pixels of context (replicated past the image border),
    in the batch's (possibly flipped) orientation: ``[3, h + 2 margin, w + 2 margin]``."""
    assert sc.fit_aif is not None, "dered needs the fit's aif.png (load_train_scene(..., fit_aif=True))"
    h, w = crop_hw
    big_h, big_w = sc.fit_aif.shape[:2]
    rows = torch.arange(ref.y0 - margin, ref.y0 + h + margin).clamp(0, big_h - 1)
    cols = torch.arange(ref.x0 - margin, ref.x0 + w + margin).clamp(0, big_w - 1)
    crop = sc.fit_aif[rows][:, cols].permute(2, 0, 1)
    return crop.flip(-1) if ref.flip else crop
