"""``gs-dfd fit``: per-scene depth from a focal or aperture stack.

The flags are :class:`gs_dfd.fit.pipeline.FitSceneConfig` (the Gaussian fit's own settings,
:class:`gs_dfd.fit.gaussian_fit.GaussianFitSettings`, nested without a prefix); their up-front checks
(``FitSceneConfig.check``), the work, the outputs and the output rule are :func:`gs_dfd.fit.pipeline.fit_scene`'s,
so the training cache gets them too. This module only adds ``--debug`` and prints the result.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from gs_dfd.console import console
from gs_dfd.fit.pipeline import FitResult, FitSceneConfig, fit_scene


@dataclass(kw_only=True)
class FitConfig(FitSceneConfig):
    """Fit a scene's focal stack (gs_dfd.scene/1): depth, all-in-focus image, CoC maps and a 3D model.
    Ground truth in the scene is only read after fitting, for metrics.json."""

    debug: bool = False
    """Show full tracebacks instead of one-line errors."""


def run(cfg: FitConfig) -> int:
    _report(cfg, fit_scene(cfg))
    return 0


def _report(cfg: FitConfig, result: FitResult) -> None:
    metrics = result.metrics
    console.print(f"fit ({cfg.method}) of {cfg.scene} done in {result.seconds:.1f} s -> {cfg.out}")
    if metrics["mean_psnr"] is not None:
        console.print(f"  re-render PSNR {metrics['mean_psnr']:.2f} dB, SSIM {metrics['mean_ssim']:.4f}")
    if metrics["depth"] is not None:
        d = metrics["depth"]
        console.print(f"  depth vs depth_gt ({d['range_m'][0]}-{d['range_m'][1]} m): AbsRel {d['abs_rel']:.4f}, "
                      f"RMSE {d['rmse']:.4f} m, delta1 {d['delta1']:.4f}")
    lens = metrics.get("lens")
    if lens and lens.get("sweep_calibrated"):
        console.print("  focus sweep found (m): " + ", ".join(f"{f['focus_distance_m']:.4g}" for f in lens["frames"])
                      + ("" if metrics.get("depth_scale") != "relative" else
                         "  (in the assumed range: depth is relative)"))
    if lens and lens["calibrated"] and not lens.get("sweep_calibrated"):
        console.print("  lens: " + json.dumps(lens))
    if metrics.get("depth_scale") == "relative":
        console.print("  depth is RELATIVE (the focus distances were assumed): right up to an affine map of "
                      "inverse depth")
    console.print(f"  see {cfg.out / 'summary.png'}")
