#!/usr/bin/env python
"""How well can a DefocusNet of a given width read blur, given the true CoC? A diagnosis, not training.

Trains a fresh DefocusNet for ``--steps`` on random crops of every frame of the training scenes, supervised by
the thin-lens CoC of their ``depth_gt`` (L1, pixels), then reports the median CoC error on frame 0 of training
scenes and of held-out scenes. If the two are equal, the network underfits (capacity or the information in one
image limits); if held-out is worse, it overfits. It reads ground truth, so it never produces shipped weights:
it measures what the self-supervised student could reach at best with this architecture.

    python tools/probe_defocus_capacity.py --widths 8 16 32 48 64 --out out/probe/small.json
    python tools/probe_defocus_capacity.py --widths 16 32 64 96 128 --out out/probe/wide.json
    python tools/probe_defocus_capacity.py --reblur-features --lens-input --out out/probe/reblur_lens.json
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gs_dfd.cli import run_tool
from gs_dfd.console import console
from gs_dfd.errors import InputError
from gs_dfd.models.defocus_net import REBLUR_SIGMAS_PX, DefocusNet, DefocusNetConfig
from gs_dfd.models.unet import count_parameters
from gs_dfd.train.data import TrainScene, find_scenes, load_train_scene
from gs_dfd.utils.atomic import write_json_atomic


@dataclass
class ProbeConfig:
    out: Path
    """JSON with the widths, steps, time and the two CoC errors (px)."""
    widths: tuple[int, ...] = (8, 16, 32, 48, 64)
    """DefocusNet channels per U-Net level (the shipped network: 8 16 32 48 64)."""
    train_scenes: Path = Path("data_local/train_set_all")
    """Scenes to train on (each with depth_gt)."""
    heldout_scenes: Path = Path("data_local/bench/full/synthetic")
    """Scenes to test on (each with depth_gt)."""
    steps: int = 2000
    """Adam steps (lr 1e-3, cosine to 5%)."""
    batch_size: int = 4
    crop_hw: tuple[int, int] = (128, 160)
    eval_train_scenes: int = 30
    """How many training scenes to measure the training error on (the first ones)."""
    reblur_features: bool = False
    """Give DefocusNet the re-blur gradient-ratio channels too (DefocusNetConfig.reblur_features)."""
    reblur_sigmas_px: tuple[float, ...] = REBLUR_SIGMAS_PX
    """The re-blur Gaussians' sigmas (DefocusNetConfig.reblur_sigmas_px), with --reblur-features."""
    lens_input: bool = False
    """Give DefocusNet the lens as input channels (DefocusNetConfig.lens_input)."""
    global_context: bool = False
    """Give DefocusNet the per-image pooled bottleneck features (DefocusNetConfig.defocus_global_context)."""
    threads: int = 1
    seed: int = 0


def _coc_target(scene: TrainScene, frame: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The thin-lens CoC of depth_gt ``[1, 1, H, W]`` px and its validity mask."""
    depth = scene.depth_gt[None, None]
    return scene.scene.lens(frame).coc_px(depth.clamp_min(1e-3)), (depth > 0).float()


@torch.no_grad()
def median_coc_error_px(net: DefocusNet, scenes: list[TrainScene]) -> float:
    """Mean over scenes of the median |CoC error| on frame 0's valid pixels."""
    errors = []
    for sc in scenes:
        target, valid = _coc_target(sc, 0)
        pred = net(sc.frames[0].permute(2, 0, 1)[None], sc.lenses[0:1])
        errors.append(float((pred - target).abs()[valid > 0].median()))
    return float(np.mean(errors))


def main(cfg: ProbeConfig) -> int:
    if cfg.steps < 1 or not cfg.widths:
        raise InputError(None, "need --steps >= 1 and at least one width", "--steps/--widths")
    if not cfg.reblur_sigmas_px or min(cfg.reblur_sigmas_px) <= 0:
        raise InputError(None, f"need one or more sigmas > 0 (got {cfg.reblur_sigmas_px})", "--reblur-sigmas-px")
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    train = [load_train_scene(p, None, supervised=True) for p in find_scenes([cfg.train_scenes])]
    heldout = [load_train_scene(p, None, supervised=True) for p in find_scenes([cfg.heldout_scenes])]
    net = DefocusNet(DefocusNetConfig(defocus_widths=tuple(cfg.widths), reblur_features=cfg.reblur_features,
                                      reblur_sigmas_px=tuple(cfg.reblur_sigmas_px), lens_input=cfg.lens_input,
                                      defocus_global_context=cfg.global_context))
    n_parameters = count_parameters(net)
    console.print(f"DefocusNet {cfg.widths}: {n_parameters} parameters; "
                  f"{len(train)} training scenes, {len(heldout)} held-out")
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * s / cfg.steps)))
    ch, cw = cfg.crop_hw
    targets_by_frame: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}  # each frame's CoC, once
    t0 = time.perf_counter()
    for _ in console.progress(range(cfg.steps), "probe"):
        images, targets, masks, lenses = [], [], [], []
        for _ in range(cfg.batch_size):
            k = int(rng.integers(len(train)))
            sc = train[k]
            frame = int(rng.integers(sc.frames.shape[0]))
            h, w = sc.hw
            y, x = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
            image = sc.frames[frame, y:y + ch, x:x + cw].permute(2, 0, 1)
            if (k, frame) not in targets_by_frame:
                targets_by_frame[k, frame] = _coc_target(sc, frame)
            target, valid = (t[0, :, y:y + ch, x:x + cw] for t in targets_by_frame[k, frame])
            if rng.random() < 0.5:
                image, target, valid = image.flip(-1), target.flip(-1), valid.flip(-1)
            images.append(image)
            targets.append(target)
            masks.append(valid)
            lenses.append(sc.lenses[frame])
        pred = net(torch.stack(images), torch.stack(lenses))
        mask = torch.stack(masks)
        loss = ((pred - torch.stack(targets)).abs() * mask).sum() / mask.sum().clamp_min(1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    result = {"widths": list(cfg.widths), "reblur_features": cfg.reblur_features,
              "reblur_sigmas_px": list(cfg.reblur_sigmas_px), "lens_input": cfg.lens_input,
              "global_context": cfg.global_context,
              "parameters": n_parameters, "steps": cfg.steps, "train_s": time.perf_counter() - t0,
              "coc_err_px_train_frame0": median_coc_error_px(net, train[:cfg.eval_train_scenes]),
              "coc_err_px_heldout_frame0": median_coc_error_px(net, heldout)}
    console.print(f"median CoC error, frame 0: training scenes {result['coc_err_px_train_frame0']:.3f} px, "
                  f"held-out {result['coc_err_px_heldout_frame0']:.3f} px")
    write_json_atomic(cfg.out, result)
    return 0


if __name__ == "__main__":
    run_tool(main, ProbeConfig)
