#!/usr/bin/env python
"""One picture comparing fits of one scene: frame 0, each fit's depth (one colour scale), and depth_gt if any.

    python tools/compare_fits.py --scene data_local/bench_d3net_synth/d3net_rgbd_000 \\
        --fits out/fit_d3synth/gs/d3net_rgbd_000 out/d3synth_prop/gs/d3net_rgbd_000 \\
        --labels "propagation off" "propagation on" --out docs/fit_d3net_000_propagation.png

Titles carry each fit's AbsRel and delta1 (from its metrics.json) when the scene has ground truth.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gs_dfd.cli import run_tool
from gs_dfd.console import console
from gs_dfd.data.scene import load_scene
from gs_dfd.errors import InputError
from gs_dfd.viz.colormap import depth_to_rgb
from gs_dfd.viz.panels import save_panel


@dataclass
class CompareConfig:
    scene: Path
    """The scene the fits were made of."""
    fits: tuple[Path, ...]
    """gs-dfd fit output folders (each with depth.npy and metrics.json)."""
    out: Path
    """The PNG to write."""
    labels: tuple[str, ...] = ()
    """One title per fit (default: the folder names)."""


def main(cfg: CompareConfig) -> int:
    if cfg.labels and len(cfg.labels) != len(cfg.fits):
        raise InputError(None, f"{len(cfg.labels)} labels for {len(cfg.fits)} fits", "--labels")
    scene = load_scene(cfg.scene)
    depths, titles = [], []
    for i, fit in enumerate(cfg.fits):
        if not (fit / "depth.npy").is_file():
            raise InputError(fit / "depth.npy", "not found: not a gs-dfd fit output folder", "--fits")
        depths.append(np.load(fit / "depth.npy"))
        title = cfg.labels[i] if cfg.labels else fit.name
        metrics = json.loads((fit / "metrics.json").read_text()) if (fit / "metrics.json").is_file() else {}
        if metrics.get("depth"):
            title += f"\nAbsRel {metrics['depth']['abs_rel']:.3f}, δ1 {metrics['depth']['delta1']:.2f}"
        titles.append(title)
    gt = scene.load_depth_gt()
    ref = gt if gt is not None else depths[0]
    valid = ref[np.isfinite(ref) & (ref > 0)]
    lo, hi = np.percentile(valid, 2), np.percentile(valid, 98)
    tiles = [scene.load_frames()[0][..., :3]] + [depth_to_rgb(d, lo, hi) for d in depths]
    titles = ["frame 0"] + titles
    if gt is not None:
        tiles.append(depth_to_rgb(gt, lo, hi))
        titles.append("depth_gt")
    save_panel(cfg.out, tiles, titles, suptitle=f"{cfg.scene.name}: depth {lo:.2f}-{hi:.2f} m (one colour scale)")
    console.print(f"wrote {cfg.out}")
    return 0


if __name__ == "__main__":
    run_tool(main, CompareConfig)
