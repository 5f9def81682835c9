"""The one place where scalar maps (depth, CoC, error) become colour images."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps


def colorize(values: np.ndarray, vmin: float, vmax: float, cmap: str = "turbo",
             invalid: np.ndarray | None = None) -> np.ndarray:
    """``[H, W]`` floats -> ``[H, W, 3]`` uint8; invalid (mask or non-finite) pixels black."""
    assert values.ndim == 2, values.shape
    if not vmax > vmin:
        vmax = vmin + 1e-6
    bad = ~np.isfinite(values)
    if invalid is not None:
        bad |= invalid
    t = np.clip((np.nan_to_num(values) - vmin) / (vmax - vmin), 0.0, 1.0)
    rgb = (colormaps[cmap](t)[..., :3] * 255.0 + 0.5).astype(np.uint8)
    rgb[bad] = 0
    return rgb


def depth_to_rgb(depth_m: np.ndarray, min_depth_m: float | None = None, max_depth_m: float | None = None,
                 cmap: str = "turbo_r") -> np.ndarray:
    """Depth in metres -> colour, linear in inverse depth (near = warm), 0 / non-finite = black.

    Inverse depth spreads colour where defocus has resolution (CoC is affine
    in 1/d); the range defaults to the valid pixels' 2nd-98th percentiles.
    """
    valid = np.isfinite(depth_m) & (depth_m > 0)
    if min_depth_m is None or max_depth_m is None:
        if valid.any():
            lo, hi = np.percentile(depth_m[valid], [2, 98])
        else:
            lo, hi = 1.0, 2.0
        min_depth_m = lo if min_depth_m is None else min_depth_m
        max_depth_m = hi if max_depth_m is None else max_depth_m
    inv = np.where(valid, 1.0 / np.where(valid, depth_m, 1.0), np.nan)
    # turbo_r on inverse depth from 1/max (far) to 1/min (near): near is red.
    return colorize(inv, 1.0 / max_depth_m, 1.0 / min_depth_m, cmap=cmap.removesuffix("_r"), invalid=~valid)


def coc_to_rgb(coc_px: np.ndarray, max_coc_px: float | None = None) -> np.ndarray:
    """Unsigned CoC diameter (pixels) -> colour (magma: dark = sharp)."""
    if max_coc_px is None:
        finite = coc_px[np.isfinite(coc_px)]
        max_coc_px = float(np.percentile(finite, 99)) if finite.size else 1.0
    return colorize(np.abs(coc_px), 0.0, max(max_coc_px, 1e-3), cmap="magma")
