#!/usr/bin/env python
"""Time ``gs-dfd predict``'s model on 320x240 images: load time, then the median model time.

    OMP_NUM_THREADS=2 python tools/bench_predict.py [--checkpoint RUN/model.pt]

Model time is DefocusNet + DepthNet on one image (what the issue's 100 ms
target covers); reading and writing files is not included. The machine should
be otherwise idle: a second busy process on 2 cores makes this 3-10x slower.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from gs_dfd.cli import run_tool
from gs_dfd.console import console
from gs_dfd.optics.thin_lens import ThinLens


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


def main(cfg: BenchPredictConfig) -> int:
    from gs_dfd.infer.predictor import Predictor

    t0 = time.perf_counter()
    predictor = Predictor(cfg.checkpoint)
    load_s = time.perf_counter() - t0
    img = np.random.default_rng(0).random((cfg.height, cfg.width, 3)).astype(np.float32)
    lens = ThinLens(0.05, 8.0, 1.0, 12e-6 * 640 / cfg.width)
    for _ in range(3):
        predictor.predict(img, lens)
    times = [predictor.predict(img, lens).model_seconds for _ in range(cfg.runs)]
    console.print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                  f"{torch.get_num_threads()} threads, {cfg.width}x{cfg.height}")
    console.print(f"load (incl. import of the model code) {load_s * 1000:.0f} ms; model median {np.median(times) * 1000:.1f} ms "
                  f"(min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f}) over {cfg.runs} runs")
    return 0


if __name__ == "__main__":
    run_tool(main, BenchPredictConfig)
