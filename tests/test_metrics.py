"""Metrics against independent, written-out computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gs_dfd.eval.metrics import depth_metrics, lpips_status, mean_depth_metrics, psnr, ssim, image_metrics


def test_depth_metrics_by_hand():
    gt = np.array([[1.0, 2.0], [4.0, 0.0]])  # 0 = invalid
    pred = np.array([[1.1, 1.5], [5.0, 3.0]])
    m = depth_metrics(pred, gt, min_depth_m=0.5, max_depth_m=10.0)
    g, p = np.array([1.0, 2.0, 4.0]), np.array([1.1, 1.5, 5.0])
    assert m["valid_px"] == 3
    assert m["abs_rel"] == pytest.approx(np.mean([0.1 / 1, 0.5 / 2, 1 / 4]))
    assert m["sq_rel"] == pytest.approx(np.mean([0.01 / 1, 0.25 / 2, 1 / 4]))
    assert m["rmse"] == pytest.approx(math.sqrt(np.mean([0.01, 0.25, 1.0])))
    assert m["rmse_log"] == pytest.approx(math.sqrt(np.mean((np.log(p) - np.log(g)) ** 2)))
    assert m["log10"] == pytest.approx(np.mean(np.abs(np.log10(p / g))))
    ratios = [1.1, 2 / 1.5, 1.25]
    assert m["delta1"] == pytest.approx(np.mean([r < 1.25 for r in ratios]))  # 1.25 itself is not < 1.25
    assert m["delta2"] == pytest.approx(1.0)


def test_range_and_clamping():
    gt = np.array([0.3, 1.0, 5.0])
    pred = np.array([1.0, np.inf, 1.0])
    m = depth_metrics(pred, gt, 0.5, 4.0)
    assert m["valid_px"] == 1  # only gt = 1.0 is inside 0.5-4 m
    assert m["abs_rel"] == pytest.approx(3.0)  # the infinite prediction counts as max depth 4 m
    none = depth_metrics(pred, np.zeros(3), 0.5, 4.0)
    assert none["valid_px"] == 0 and math.isnan(none["abs_rel"])


def test_mean_over_images_not_pixels():
    a = depth_metrics(np.array([2.0]), np.array([1.0]), 0.5, 4.0)  # abs_rel 1.0 on one pixel
    b = depth_metrics(np.full(99, 1.0), np.full(99, 1.0), 0.5, 4.0)  # 0 on 99 pixels
    assert mean_depth_metrics([a, b])["abs_rel"] == pytest.approx(0.5)


def test_psnr():
    x = np.zeros((4, 4, 3))
    y = x + 0.1
    assert psnr(x, y) == pytest.approx(20.0)
    assert psnr(x, x) == math.inf


def _ssim_bruteforce(x, y, win):
    """Written-out SSIM over every full window position (one channel)."""
    c1, c2 = 0.01**2, 0.03**2
    w2 = np.outer(win, win)
    k = len(win)
    vals = []
    for i in range(x.shape[0] - k + 1):
        for j in range(x.shape[1] - k + 1):
            a, b = x[i:i + k, j:j + k], y[i:i + k, j:j + k]
            ma, mb = (w2 * a).sum(), (w2 * b).sum()
            va, vb = (w2 * a * a).sum() - ma**2, (w2 * b * b).sum() - mb**2
            cov = (w2 * a * b).sum() - ma * mb
            vals.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return np.mean(vals)


def test_ssim_matches_bruteforce():
    rng = np.random.default_rng(0)
    x = rng.random((20, 24))
    y = np.clip(x + 0.1 * rng.standard_normal(x.shape), 0, 1)
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    expected = _ssim_bruteforce(x, y, g / g.sum())
    assert ssim(x, y) == pytest.approx(expected, abs=1e-9)
    assert ssim(x, x) == pytest.approx(1.0)


def test_lpips_is_optional():
    status = lpips_status()
    m = image_metrics(np.zeros((16, 16, 3)), np.ones((16, 16, 3)) * 0.5)
    assert m["psnr"] == pytest.approx(20 * math.log10(2)) and m["ssim"] < 1
    if not status.available:
        assert m["lpips"] is None and status.reason


def test_torch_ssim_loss_matches_metric():
    """The differentiable SSIM of the fit and the reporting SSIM agree (same window and constants)."""
    import torch

    from gs_dfd.fit.losses import ssim_torch

    rng = np.random.default_rng(3)
    x = rng.random((2, 30, 34, 3)).astype(np.float32)
    y = np.clip(x + 0.1 * rng.standard_normal(x.shape), 0, 1).astype(np.float32)
    expected = np.mean([ssim(x[i], y[i]) for i in range(2)])
    got = float(ssim_torch(torch.from_numpy(x), torch.from_numpy(y)))
    assert got == pytest.approx(expected, abs=1e-4)
