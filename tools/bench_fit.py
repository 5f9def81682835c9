#!/usr/bin/env python
"""Fit benchmark: gs vs dff on a folder of scenes, with depth metrics, re-render PSNR and wall time.

    python tools/convert_rgbd_sets.py --out data_local/rgbd_stacks        # synthetic stacks from real RGB-D
    python tools/bench_fit.py --scenes data_local/rgbd_stacks --out out/bench_fit --json out/bench_fit.json

Each scene is fitted once per method with the CLI's defaults (plus --extra flags), in this process, one after
the other; the table is printed and, with --json, saved.
"""

from __future__ import annotations

import json
import platform
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from gs_dfd.cli import main as cli_main, run_tool
from gs_dfd.errors import InputError


@dataclass
class BenchFitConfig:
    scenes: Path
    """A scene folder, or a folder of scene folders."""
    out: Path = Path("out/bench_fit")
    """Where the fits are written (OUT/<method>/<scene>)."""
    methods: tuple[str, ...] = ("dff", "gs")
    """Methods to run."""
    extra: str = ""
    """Extra flags for `gs-dfd fit --method gs`, e.g. '--iterations 200 --stride 1'."""
    eval_depth_range_m: tuple[float, float] = (0.5, 4.0)
    """Depth range of the metrics."""
    json: Optional[Path] = None
    """Also write the records here."""
    shard: tuple[int, int] = (0, 1)
    """K N: fit only every N-th scene starting at the K-th (0-based), to split a long run over N processes."""
    reuse: bool = False
    """Keep fits that already finished (OUT/<method>/<scene>/metrics.json) instead of fitting them again, so an
    interrupted long run continues where it stopped. Only use it with unchanged flags."""


def _record(scene: str, method: str, out: Path) -> dict:
    m = json.loads((out / "metrics.json").read_text())
    d = m["depth"] or {}
    return {"scene": scene, "method": method, "abs_rel": d.get("abs_rel"), "rmse": d.get("rmse"),
            "delta1": d.get("delta1"), "psnr": m.get("mean_psnr"), "seconds": m["seconds"]}


def main(cfg: BenchFitConfig) -> int:
    folders = [cfg.scenes] if (cfg.scenes / "scene.json").exists() else sorted(
        p for p in cfg.scenes.iterdir() if (p / "scene.json").exists())
    k, n = cfg.shard
    if not (n >= 1 and 0 <= k < n):
        raise InputError(None, f"need 0 <= K < N (got {k} {n})", "--shard")
    folders = folders[k::n]
    records = []
    for folder in folders:
        for method in cfg.methods:
            out = cfg.out / method / folder.name
            if cfg.reuse and (out / "metrics.json").is_file():
                records.append(_record(folder.name, method, out))
                continue
            argv = ["fit", "--scene", str(folder), "--out", str(out), "--method", method, "--overwrite",
                    "--no-progress", "--eval-depth-range-m", *map(str, cfg.eval_depth_range_m)]
            if method == "gs" and cfg.extra:
                argv += shlex.split(cfg.extra)
            code = cli_main(argv)
            if code != 0:
                print(f"fit failed on {folder} ({method})", file=sys.stderr)
                continue
            records.append(_record(folder.name, method, out))
    print(f"\nmachine: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}")
    print(f"{'scene':<24} {'method':<6} {'AbsRel':>7} {'RMSE':>7} {'delta1':>7} {'PSNR':>6} {'time s':>7}")
    fmt = lambda v, f: format(v, f) if v is not None else "-"  # noqa: E731
    for r in records:
        print(f"{r['scene']:<24} {r['method']:<6} {fmt(r['abs_rel'], '7.4f')} {fmt(r['rmse'], '7.4f')} "
              f"{fmt(r['delta1'], '7.4f')} {fmt(r['psnr'], '6.2f')} {r['seconds']:7.1f}")
    for method in cfg.methods:
        rows = [r for r in records if r["method"] == method and r["abs_rel"] is not None]
        if rows:
            print(f"{'mean':<24} {method:<6} {np.mean([r['abs_rel'] for r in rows]):7.4f} "
                  f"{np.mean([r['rmse'] for r in rows]):7.4f} {np.mean([r['delta1'] for r in rows]):7.4f} "
                  f"{fmt(np.mean([r['psnr'] for r in rows]) if rows[0]['psnr'] is not None else None, '6.2f')} "
                  f"{np.mean([r['seconds'] for r in rows]):7.1f}")
    if cfg.json:
        cfg.json.parent.mkdir(parents=True, exist_ok=True)
        cfg.json.write_text(json.dumps(records, indent=2))
    return 0


if __name__ == "__main__":
    run_tool(main, BenchFitConfig)
