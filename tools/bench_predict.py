#!/usr/bin/env python
"""Time ``gs-dfd predict``'s model on 320x240 images: load time, then the median model time.

    OMP_NUM_THREADS=2 python tools/bench_predict.py [--checkpoint RUN/model.pt]

Model time is DefocusNet + DepthNet on one image (what the issue's 100 ms
target covers); reading and writing files is not included. The machine should
be otherwise idle: a second busy process on 2 cores makes this 3-10x slower.
"""

from __future__ import annotations

import gc
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from gs_dfd.cli import run_tool
from gs_dfd.console import console
from gs_dfd.optics.presets import get_preset


@dataclass
class BenchPredictConfig:
    """Median model time of predict on 320x240 images."""

    checkpoint: Optional[Path] = None
    """Weights to time (default: the shipped ones)."""
    width: int = 320
    """Image width."""
    height: int = 240
    """Image height."""
    runs: int = 20
    """Timed runs (after 3 warm-up runs)."""
    compare_layouts: bool = False
    """Also time the same weights in training's NCHW layout, alternating call by call with predict's channels-last
    layout in this process, and print the ratio (robust to the machine's drift between runs)."""


def main(cfg: BenchPredictConfig) -> int:
    from gs_dfd.infer.predictor import Predictor

    gc.collect()  # the full collection torch's imports have made due would otherwise land in the load (150 ms)
    t0 = time.perf_counter()
    predictor = Predictor(cfg.checkpoint)
    load_s = time.perf_counter() - t0
    predictors = {"channels-last (predict)": predictor}
    if cfg.compare_layouts:
        predictors["NCHW (training's layout)"] = Predictor(cfg.checkpoint, channels_last=False)
    img = np.random.default_rng(0).random((cfg.height, cfg.width, 3)).astype(np.float32)
    lens = get_preset("nyu").lens(1.0, width_px=cfg.width)
    for p in predictors.values():
        for _ in range(3):
            p.predict(img, lens)
    times: dict[str, list[float]] = {name: [] for name in predictors}
    for _ in range(cfg.runs):
        for name, p in predictors.items():
            times[name].append(p.predict(img, lens).model_seconds)
    console.print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                  f"{torch.get_num_threads()} threads, {cfg.width}x{cfg.height}")
    console.print(f"load (incl. import of the model code) {load_s * 1000:.0f} ms")
    first = np.median(times[next(iter(times))])
    for name, ts in times.items():
        ratio = f", {np.median(ts) / first:.3f}x the first" if len(times) > 1 else ""
        console.print(f"{name}: model median {np.median(ts) * 1000:.1f} ms (min {min(ts) * 1000:.1f}, "
                      f"max {max(ts) * 1000:.1f}) over {cfg.runs} runs{ratio}")
    return 0


if __name__ == "__main__":
    run_tool(main, BenchPredictConfig)
