"""Depth from focus: the classical floor every learned or fitted method must beat.

Per pixel, the frame with the highest focus measure is the one focused closest
to the pixel's depth. The focus measure is the sum-modified-Laplacian (Nayar &
Nakagawa, PAMI 1994) over a square window. The peak is refined below the frame
spacing with a parabola through the best frame and its two neighbours, in
inverse focus distance: the CoC is affine in inverse depth, so the focus
measure's peak is close to symmetric there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass
class DffResult:
    depth_m: np.ndarray  # [H, W] float32
    confidence: np.ndarray  # [H, W] float32 in [0, 1]
    focus_measure: np.ndarray  # [F, H, W] float32, frames in the caller's order


def modified_laplacian(gray: np.ndarray, window_px: int = 9, step_px: int = 1) -> np.ndarray:
    """Sum-modified-Laplacian of a ``[H, W]`` image over a ``window_px`` box."""
    assert gray.ndim == 2, gray.shape
    g = np.pad(gray.astype(np.float64), step_px, mode="reflect")
    c = g[step_px:-step_px, step_px:-step_px]
    ml = (np.abs(2 * c - g[step_px:-step_px, : -2 * step_px] - g[step_px:-step_px, 2 * step_px:])
          + np.abs(2 * c - g[: -2 * step_px, step_px:-step_px] - g[2 * step_px:, step_px:-step_px]))
    return ndimage.uniform_filter(ml, size=window_px, mode="reflect")


def depth_from_focus(frames: np.ndarray, focus_distances_m: np.ndarray, window_px: int = 9) -> DffResult:
    """Focus-measure argmax with sub-frame parabola interpolation.

    frames: ``[F, H, W, C]`` in [0, 1]; focus_distances_m: ``[F]`` (any order,
    at least 2 distinct values). Depth is clamped to the focus range: beyond
    the nearest / farthest focus distance a focal stack has no peak to find.
    """
    assert frames.ndim == 4 and frames.shape[0] == len(focus_distances_m), (frames.shape, focus_distances_m)
    s = np.asarray(focus_distances_m, dtype=np.float64)
    if len(np.unique(s)) < 2:
        raise ValueError("depth from focus needs at least two distinct focus distances")
    order = np.argsort(1.0 / s)  # far to near in inverse depth: ascending 1/s
    inv_s = 1.0 / s[order]
    gray = frames.mean(axis=3)
    fm = np.stack([modified_laplacian(gray[i], window_px) for i in range(len(s))])  # [F, H, W]
    fm_sorted = fm[order]
    n = len(s)
    k = np.argmax(fm_sorted, axis=0)  # [H, W]
    km, kp = np.clip(k - 1, 0, n - 1), np.clip(k + 1, 0, n - 1)
    take = lambda idx: np.take_along_axis(fm_sorted, idx[None], 0)[0]  # noqa: E731
    y0, y1, y2 = take(km), take(k), take(kp)
    x0, x1, x2 = inv_s[km], inv_s[k], inv_s[kp]
    interior = (k > 0) & (k < n - 1)
    # Vertex of the parabola through (x0, y0), (x1, y1), (x2, y2), non-uniform spacing.
    d01, d12, d02 = x0 - x1, x1 - x2, x0 - x2
    denom = np.where(interior, d01 * d02 * d12, 1.0)
    a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / denom
    b = (x2**2 * (y0 - y1) + x1**2 * (y2 - y0) + x0**2 * (y1 - y2)) / denom
    vertex = np.where(interior & (a < 0), -b / (2 * np.where(a < 0, a, -1.0)), x1)
    inv_d = np.clip(vertex, np.minimum(x0, x2), np.maximum(x0, x2))
    depth = 1.0 / inv_d
    # Confidence: how much the peak stands out of the frame-average focus measure.
    peak, mean = y1, fm_sorted.mean(axis=0)
    confidence = np.clip((peak - mean) / (peak + 1e-6), 0.0, 1.0)
    confidence = np.where(interior, confidence, 0.5 * confidence)
    return DffResult(depth.astype(np.float32), confidence.astype(np.float32), fm.astype(np.float32))
