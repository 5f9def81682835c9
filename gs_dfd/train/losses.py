"""The five self-supervised losses, and the supervised baselines' two; their weights live in the training config.

(a) re-render: the fitted Gaussians blurred by the predicted CoC reproduce the
    real frame (SSIM + L1, as monodepth2 weighs them); in the ``dered``
    ablation the fit's AIF re-blurred in image space (:mod:`reblur`) does;
(b) siamese: the depths read from the two frames of a pair agree;
(c) thin-lens consistency: DepthNet's depth reproduces both predicted CoC maps;
(d) anchor: the per-scene fit's depth (and its CoC) where the fit is confident;
(e) edge-aware smoothness of log depth and of the normalised CoC.

Supervised baselines (``d3net``, ``mddnet``): L1 on log depth against
``depth_gt`` on valid pixels, and for ``mddnet`` the CoC map against the
thin-lens CoC of ``depth_gt`` under the frame's lens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gs_dfd.fit.losses import ssim_torch
from gs_dfd.optics.thin_lens import LensBatch


@dataclass
class LossWeights:
    render: float = 1.0
    """(a) re-rendering the fitted Gaussians with the predicted CoC (dered: re-blurring the fit's AIF)."""
    render_ssim: float = 0.85
    """Share of (1 - SSIM) in (a); the rest is L1."""
    siamese: float = 0.1
    """(b) agreement of the two branches' depths (|log d_i - log d_j|)."""
    coc_consistency: float = 0.5
    """(c) DepthNet's depth reproduces both predicted CoC maps (in units of K)."""
    anchor_depth: float = 0.5
    """(d) |log d - log d_fit| weighted by the fit's confidence."""
    anchor_coc: float = 0.5
    """(d) |c - c(d_fit)| / K weighted by the fit's confidence."""
    smooth: float = 0.02
    """(e) edge-aware smoothness of log depth and normalised CoC."""
    anchor_min_confidence: float = 0.2
    """Fit pixels below this confidence give no anchor."""
    supervised_coc: float = 1.0
    """mddnet: |c - c(d_gt)| / K, its defocus decoder against the thin-lens CoC of depth_gt (depth: L1 of log,
    weight 1)."""


def render_loss(pred: Tensor, target: Tensor, ssim_share: float, border_px: int = 8) -> Tensor:
    """pred/target ``[M, h, w, 3]``; the crop's border sees Gaussians cut off by the crop: skip it."""
    b = border_px
    p, t = pred[:, b:-b, b:-b], target[:, b:-b, b:-b]
    l1 = (p - t).abs().mean()
    return (1 - ssim_share) * l1 + ssim_share * (1 - ssim_torch(p, t)) / 2


def siamese_loss(depth_a: Tensor, depth_b: Tensor) -> Tensor:
    return (torch.log(depth_a) - torch.log(depth_b)).abs().mean()


def coc_consistency_loss(depth: Tensor, cocs: list[Tensor], lenses: list[Tensor]) -> Tensor:
    """depth ``[B, 1, h, w]`` against each (CoC map ``[B, 1, h, w]``, lenses ``[B, 4]``), in units of K."""
    total = depth.new_zeros(())
    for coc, rows in zip(cocs, lenses):
        total = total + _coc_error_in_k(coc, depth, LensBatch.from_rows(rows)).mean()
    return total / len(cocs)


def _coc_error_in_k(coc: Tensor, depth: Tensor, lens: LensBatch) -> Tensor:
    """``|c - c(d)| / K`` ``[B, 1, h, w]``: the CoC error in camera-free units (|1 - s/d| scale)."""
    return ((coc - lens.coc_px(depth)) / lens.coc_scale_px.view(-1, 1, 1, 1)).abs()


def _weighted_mean(err: Tensor, weight: Tensor) -> Tensor:
    return (err * weight).sum() / weight.sum().clamp_min(1.0)


def anchor_losses(depth: Tensor, coc: Tensor, lenses: Tensor, anchor_depth: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """depth/coc/anchor_depth/weight ``[B, 1, h, w]``, lenses ``[B, 4]``; weight 0 = no anchor."""
    safe = anchor_depth.clamp_min(1e-3)
    depth_err = (torch.log(depth) - torch.log(safe)).abs()
    coc_err = _coc_error_in_k(coc, safe, LensBatch.from_rows(lenses))
    return _weighted_mean(depth_err, weight), _weighted_mean(coc_err, weight)


def edge_aware_smoothness(value: Tensor, image: Tensor) -> Tensor:
    """value ``[B, 1, h, w]`` (mean-normalised per image, as monodepth2), image ``[B, 3, h, w]``."""
    v = value / value.mean(dim=(2, 3), keepdim=True).abs().clamp_min(1e-3)
    dx, dy = (v[..., :, 1:] - v[..., :, :-1]).abs(), (v[..., 1:, :] - v[..., :-1, :]).abs()
    ix = (image[..., :, 1:] - image[..., :, :-1]).abs().mean(1, keepdim=True)
    iy = (image[..., 1:, :] - image[..., :-1, :]).abs().mean(1, keepdim=True)
    return (dx * torch.exp(-ix / 0.05)).mean() + (dy * torch.exp(-iy / 0.05)).mean()


def supervised_depth_loss(depth: Tensor, depth_gt: Tensor) -> Tensor:
    """|log d - log d_gt| on valid pixels (``depth_gt > 0``), ``[M, 1, h, w]`` each; Eigen et al.'s log space
    (D3Net itself used L1 on depth: log weighs near and far errors alike, as AbsRel does)."""
    assert depth.shape == depth_gt.shape, (depth.shape, depth_gt.shape)
    valid = (depth_gt > 0).float()
    return _weighted_mean((torch.log(depth) - torch.log(depth_gt.clamp_min(1e-3))).abs(), valid)


def supervised_coc_loss(coc: Tensor, depth_gt: Tensor, lenses: Tensor) -> Tensor:
    """|c - c(d_gt)| / K on valid pixels: coc/depth_gt ``[M, 1, h, w]``, lenses ``[M, 4]`` (camera-free units)."""
    assert coc.shape == depth_gt.shape and lenses.shape == (coc.shape[0], 4), (coc.shape, depth_gt.shape, lenses.shape)
    valid = (depth_gt > 0).float()
    return _weighted_mean(_coc_error_in_k(coc, depth_gt.clamp_min(1e-3), LensBatch.from_rows(lenses)), valid)
