"""Differentiable losses of the per-scene fit (metrics for reporting live in ``gs_dfd.eval.metrics``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _gaussian_kernel(size: int = 11, sigma: float = 1.5, device=None, dtype=None) -> Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_torch(pred: Tensor, target: Tensor) -> Tensor:
    """Mean SSIM of ``[B, H, W, C]`` images in [0, 1] (11x11 Gaussian window, 'valid' region).

    The five local statistics are blurred in one separable depthwise
    convolution: on CPU that is ~20x faster (forward + backward) than
    convolving a batch of single-channel images.
    """
    assert pred.shape == target.shape and pred.dim() == 4, (pred.shape, target.shape)
    b, h, w, c = pred.shape
    x = pred.permute(0, 3, 1, 2).reshape(1, b * c, h, w)
    y = target.permute(0, 3, 1, 2).reshape(1, b * c, h, w)
    stats = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # [1, 5 B C, H, W]
    k = stats.shape[1]
    g = _gaussian_kernel(device=pred.device, dtype=pred.dtype)
    blurred = F.conv2d(stats, g.view(1, 1, 1, -1).expand(k, 1, 1, g.numel()).contiguous(), groups=k)
    blurred = F.conv2d(blurred, g.view(1, 1, -1, 1).expand(k, 1, g.numel(), 1).contiguous(), groups=k)
    mx, my, exx, eyy, exy = blurred.split(b * c, dim=1)
    sxx, syy, sxy = exx - mx * mx, eyy - my * my, exy - mx * my
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return ssim_map.mean()


SSIM_BACKENDS = ("auto", "cpu", "torch")


def ssim(pred: Tensor, target: Tensor, backend: str = "auto") -> Tensor:
    """Mean SSIM (Wang et al. 2004) of ``[B, H, W, C]`` images by the chosen implementation.

    ``"auto"``: the fused C++ kernel (:func:`gs_dfd.fit.ssim_cpu.ssim_cpu`) for float32 CPU images whose
    target needs no gradient, when the extension builds; :func:`ssim_torch`, the definition, otherwise.
    ``"cpu"`` asks for the kernel whatever the dtype (it computes in float32); both fall back to the twin,
    with one warning per process, when the extension does not build. ``"torch"`` forces the twin.
    """
    assert backend in SSIM_BACKENDS, f"backend must be one of {SSIM_BACKENDS}, got {backend!r}"
    if backend == "torch":
        return ssim_torch(pred, target)
    if backend == "auto":
        eligible = (pred.device.type == "cpu" and pred.dtype == torch.float32 and target.device.type == "cpu"
                    and not (target.requires_grad and torch.is_grad_enabled()))
        if not eligible:
            return ssim_torch(pred, target)
    from gs_dfd.fit.ssim_cpu import ssim_cpu

    return ssim_cpu(pred, target)  # ssim_torch, after one warning, when the extension does not build


def photometric_loss(pred: Tensor, target: Tensor, ssim_weight: float = 0.2, backend: str = "auto") -> Tensor:
    """``(1 - w) L1 + w (1 - SSIM)`` as in 3DGS (Kerbl et al. 2023), over ``[B, H, W, C]``.

    ``backend`` chooses the SSIM implementation (see :func:`ssim`): on CPU in float32 the fused C++ kernel,
    the torch twin otherwise or with ``backend="torch"``.
    """
    l1 = (pred - target).abs().mean()
    if ssim_weight <= 0:
        return l1
    return (1.0 - ssim_weight) * l1 + ssim_weight * (1.0 - ssim(pred, target, backend))


def edge_aware_grid_smoothness(values: Tensor, guide: Tensor, grid_hw: tuple[int, int], colour_sigma: float = 0.1,
                               weight: Tensor | None = None) -> Tensor:
    """L1 differences of a per-Gaussian quantity between grid neighbours, down-weighted across colour edges.

    values: ``[N]`` on an ``H x W`` grid (row-major); guide: ``[N, C]`` colours
    (no gradient); weight: optional ``[N]`` extra per-Gaussian weight (e.g. low
    where the data is confident). Depth edges usually coincide with colour
    edges, so the prior fills textureless regions without blurring occlusions.
    """
    gh, gw = grid_hw
    assert values.shape == (gh * gw,), (values.shape, grid_hw)
    v = values.view(gh, gw)
    g = guide.detach().view(gh, gw, -1)
    total = values.new_zeros(())
    for dv, dg in ((v[:, 1:] - v[:, :-1], g[:, 1:] - g[:, :-1]), (v[1:] - v[:-1], g[1:] - g[:-1])):
        w = torch.exp(-dg.abs().mean(-1) / colour_sigma)
        if weight is not None:
            wv = weight.view(gh, gw)
            w = w * (0.5 * (wv[:, 1:] + wv[:, :-1]) if dv.shape[1] == gw - 1 else 0.5 * (wv[1:] + wv[:-1]))
        total = total + (w * dv.abs()).mean()
    return total


# 8-bit frames: within one and a half steps of 0 or 1 (JPEG moves a clipped value by a step), a pixel is taken as
# clipped by the sensor.
CLIP_LOW, CLIP_HIGH = 1.5 / 255.0, 1.0 - 1.5 / 255.0


def clip_like_sensor(rgb: Tensor, target: Tensor) -> Tensor:
    """``rgb`` with its values past a clipped ``target`` value (at the ceiling: brighter; at the floor: darker)
    replaced by the target's, so that they cost nothing and pass no gradient (``--clipped-pixels`` of the fit)."""
    past = ((target >= CLIP_HIGH) & (rgb > target)) | ((target <= CLIP_LOW) & (rgb < target))
    return torch.where(past, target, rgb)
