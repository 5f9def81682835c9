"""Depth and image metrics: the one place their conventions live.

Depth (monodepth2 / Eigen et al. 2014 conventions, stated because peers differ):

- valid pixels: ground truth finite and ``min_depth_m <= gt <= max_depth_m``;
- predictions are clamped to ``[min_depth_m, max_depth_m]`` (non-finite ones
  count as ``max_depth_m``), so a method cannot hide pixels by leaving holes;
  with ``clamp=False`` they are used as given and must be finite and > 0 on
  every valid pixel;
- RMSE-log uses the natural log (DEReD's code uses log10: say so when
  comparing with its published numbers);
- metrics are computed per image, then averaged over images.

Images: PSNR on [0, 1] images; SSIM with an 11x11 Gaussian window (sigma 1.5,
K1 = 0.01, K2 = 0.03, Wang et al. 2004), averaged over channels; LPIPS
(Zhang et al. 2018) only where the ``lpips`` package and its weights load
without a download, else reported as unavailable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

DEPTH_METRIC_KEYS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "delta1", "delta2", "delta3")


def evaluation_mask(gt_m: np.ndarray, min_depth_m: float, max_depth_m: float) -> np.ndarray:
    """``[H, W]`` bool: the pixels that count, ground truth finite and inside ``[min_depth_m, max_depth_m]`` (> 0)."""
    if not 0 < min_depth_m < max_depth_m:
        raise ValueError(f"need 0 < min_depth_m < max_depth_m (got {min_depth_m}, {max_depth_m})")
    gt = np.asarray(gt_m, dtype=np.float64)
    return np.isfinite(gt) & (gt >= min_depth_m) & (gt <= max_depth_m)


def clamp_prediction(pred_m: np.ndarray, min_depth_m: float, max_depth_m: float) -> np.ndarray:
    """The prediction the metrics see: clamped to the range, non-finite values as ``max_depth_m`` (float64)."""
    pred = np.asarray(pred_m, dtype=np.float64)
    return np.clip(np.where(np.isfinite(pred), pred, max_depth_m), min_depth_m, max_depth_m)


def abs_rel_map(pred_m: np.ndarray, gt_m: np.ndarray, min_depth_m: float, max_depth_m: float,
                clamp: bool = True) -> np.ndarray:
    """``[H, W]`` per-pixel ``|pred - gt| / gt`` as the metrics count it; NaN outside :func:`evaluation_mask`."""
    assert pred_m.shape == gt_m.shape, (pred_m.shape, gt_m.shape)
    valid = evaluation_mask(gt_m, min_depth_m, max_depth_m)
    pred = clamp_prediction(pred_m, min_depth_m, max_depth_m) if clamp else np.asarray(pred_m, np.float64)
    gt = np.where(valid, np.asarray(gt_m, np.float64), 1.0)
    return np.where(valid, np.abs(pred - gt) / gt, np.nan)


def depth_metrics(pred_m: np.ndarray, gt_m: np.ndarray, min_depth_m: float = 0.5, max_depth_m: float = 4.0,
                  mask: np.ndarray | None = None, clamp: bool = True) -> dict[str, float]:
    """Standard depth metrics of one image (``[H, W]`` metres); NaN values if no pixel is valid.

    Also returns ``valid_px``, the number of pixels evaluated. ``clamp=False`` uses the prediction as
    given and raises ValueError if a valid pixel's prediction is non-finite or <= 0.
    """
    assert pred_m.shape == gt_m.shape, (pred_m.shape, gt_m.shape)
    valid = evaluation_mask(gt_m, min_depth_m, max_depth_m)
    if mask is not None:
        valid &= mask
    n = int(valid.sum())
    if n == 0:
        return {**{k: math.nan for k in DEPTH_METRIC_KEYS}, "valid_px": 0}
    gt = np.asarray(gt_m, dtype=np.float64)[valid]
    pred = np.asarray(pred_m, dtype=np.float64)[valid]
    if clamp:
        pred = clamp_prediction(pred, min_depth_m, max_depth_m)
    elif not np.all(np.isfinite(pred) & (pred > 0)):
        raise ValueError(f"{int((~(np.isfinite(pred) & (pred > 0))).sum())} valid pixels have a non-finite or "
                         f"<= 0 prediction (clamp=False)")
    ratio = np.maximum(gt / pred, pred / gt)
    diff = pred - gt
    return {
        "abs_rel": float(np.mean(np.abs(diff) / gt)),
        "sq_rel": float(np.mean(diff**2 / gt)),
        "rmse": float(np.sqrt(np.mean(diff**2))),
        "rmse_log": float(np.sqrt(np.mean((np.log(pred) - np.log(gt)) ** 2))),
        "log10": float(np.mean(np.abs(np.log10(pred) - np.log10(gt)))),
        "delta1": float(np.mean(ratio < 1.25)),
        "delta2": float(np.mean(ratio < 1.25**2)),
        "delta3": float(np.mean(ratio < 1.25**3)),
        "valid_px": n,
    }


def mean_depth_metrics(per_image: Sequence[dict[str, float]]) -> dict[str, float]:
    """Average per-image metrics over images (images with no valid pixel are skipped)."""
    rows = [m for m in per_image if m.get("valid_px", 1) > 0]
    out = {k: float(np.mean([m[k] for m in rows])) if rows else math.nan for k in DEPTH_METRIC_KEYS}
    out["images"] = len(rows)
    return out


def psnr(pred: np.ndarray, target: np.ndarray, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB of ``[H, W, C]`` images."""
    assert pred.shape == target.shape, (pred.shape, target.shape)
    mse = float(np.mean((np.asarray(pred, np.float64) - np.asarray(target, np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(pred: np.ndarray, target: np.ndarray, data_range: float = 1.0) -> float:
    """Mean SSIM of ``[H, W, C]`` (or ``[H, W]``) images, Gaussian window, 'valid' region only."""
    from scipy.ndimage import correlate1d

    assert pred.shape == target.shape, (pred.shape, target.shape)
    x = np.asarray(pred, np.float64)
    y = np.asarray(target, np.float64)
    if x.ndim == 2:
        x, y = x[..., None], y[..., None]
    win = _gaussian_window()
    half = len(win) // 2

    def blur(a: np.ndarray) -> np.ndarray:
        a = correlate1d(a, win, axis=0, mode="nearest")
        a = correlate1d(a, win, axis=1, mode="nearest")
        return a[half:-half, half:-half] if min(a.shape[:2]) > 2 * half else a

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx**2
    syy = blur(y * y) - my**2
    sxy = blur(x * y) - mx * my
    ssim_map = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return float(ssim_map.mean())


@dataclass
class LpipsStatus:
    available: bool
    reason: str = ""


_LPIPS_MODEL = None
_LPIPS_STATUS: LpipsStatus | None = None


def lpips_status() -> LpipsStatus:
    """Whether LPIPS can run here without downloading anything."""
    global _LPIPS_MODEL, _LPIPS_STATUS
    if _LPIPS_STATUS is not None:
        return _LPIPS_STATUS
    try:
        import lpips  # noqa: F401  (needs torchvision)
        import torch

        hub = torch.hub.get_dir()
        import glob

        if not glob.glob(f"{hub}/checkpoints/alexnet-*.pth"):
            _LPIPS_STATUS = LpipsStatus(False, f"AlexNet weights not in the torch hub cache ({hub}); no download")
        else:
            _LPIPS_MODEL = lpips.LPIPS(net="alex", verbose=False)
            _LPIPS_STATUS = LpipsStatus(True)
    except Exception as exc:  # ImportError, or torchvision failing against this torch
        _LPIPS_STATUS = LpipsStatus(False, f"lpips unavailable ({type(exc).__name__}: {str(exc).splitlines()[0][:80]})")
    return _LPIPS_STATUS


def lpips_distance(pred: np.ndarray, target: np.ndarray) -> float | None:
    """LPIPS (AlexNet) of ``[H, W, 3]`` images in [0, 1], or None when unavailable."""
    if not lpips_status().available:
        return None
    import torch

    def to_t(a: np.ndarray) -> torch.Tensor:
        a = np.asarray(a, np.float32)
        if a.shape[-1] == 1:
            a = np.repeat(a, 3, axis=-1)
        return torch.from_numpy(a).permute(2, 0, 1)[None] * 2 - 1

    with torch.no_grad():
        return float(_LPIPS_MODEL(to_t(pred), to_t(target)).item())


def image_metrics(pred: np.ndarray, target: np.ndarray) -> dict[str, float | None]:
    """PSNR, SSIM and LPIPS (None when unavailable) of one image pair."""
    return {"psnr": psnr(pred, target), "ssim": ssim(pred, target), "lpips": lpips_distance(pred, target)}
