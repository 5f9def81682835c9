"""The training loop: one process, or many under ``torchrun`` (DistributedDataParallel).

Each process draws its own crops from a sampler seeded by (seed, rank, step),
and, with ``augment.enabled``, the camera effects on the network's input frames
from a generator seeded by (seed, rank, step, 1): a run is reproducible on CPU
and resumes exactly from a checkpoint. Every process fits its share of the
uncached scenes (the methods that learn from the fit); rank 0 writes logs and
checkpoints. What depends on the method (network, loss, fit or depth_gt) is
looked up in :mod:`gs_dfd.models.registry`; the losses it names are the
``*_losses`` functions here. The self-supervised losses compare with the clean
frames (``Batch.images``); the networks read ``Batch.network_input``.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from gs_dfd.console import console
from gs_dfd.data.scene import load_scene
from gs_dfd.errors import GsDfdError, InputError, Interrupted
from gs_dfd.models.checkpoint_io import load_checkpoint
from gs_dfd.models.registry import build_model, get_method, method_of, new_model
from gs_dfd.optics.thin_lens import LensBatch
from gs_dfd.train import losses as L
from gs_dfd.train.augment import augment_frames, check_augment_config
from gs_dfd.train.checkpoint import export_weights, resume_changes, save_checkpoint
from gs_dfd.train.config import TrainConfig
from gs_dfd.train.data import Batch, TrainScene, find_scenes, load_train_scene, sample_batch
from gs_dfd.train.fit_cache import ensure_fits
from gs_dfd.train.reblur import aif_crop, margin_for, reblur
from gs_dfd.train.rerender import render_crop
from gs_dfd.utils.atomic import write_json_atomic
from gs_dfd.utils.outputs import OutputDir, check_not_input
from gs_dfd.utils.tb_events import ScalarWriter


def _to_jsonable(obj):
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [_to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def validate(cfg: TrainConfig) -> None:
    for name, value in (("--steps", cfg.steps), ("--batch-size", cfg.batch_size), ("--fit-iterations", cfg.fit_iterations),
                        ("--checkpoint-every", cfg.checkpoint_every), ("--log-every", cfg.log_every)):
        if value <= 0:
            raise InputError(None, f"must be > 0 (got {value})", name)
    if min(cfg.crop_hw) < 32:
        raise InputError(None, f"crop must be at least 32x32 pixels (got {cfg.crop_hw})", "--crop-hw")
    if not cfg.fit_sigma_per_coc > 0:
        raise InputError(cfg.config, f"must be > 0 (got {cfg.fit_sigma_per_coc})", "fit_sigma_per_coc")
    sigmas = cfg.defocus_net.reblur_sigmas_px
    if not sigmas or min(sigmas) <= 0:
        raise InputError(cfg.config, f"need one or more sigmas > 0 (got {sigmas})", "--reblur-sigmas-px")
    if not cfg.lr > 0 or not 0 < cfg.lr_final_ratio <= 1:
        raise InputError(None, "need lr > 0 and 0 < lr_final_ratio <= 1", "--lr")
    check_augment_config(cfg.augment, cfg.config)
    if not cfg.scenes:
        raise InputError(cfg.config, "no training scenes: give --scenes (or scenes: in the YAML)", "scenes")
    if cfg.init_weights is not None and not cfg.init_weights.is_file():
        raise InputError(cfg.init_weights, "weights not found", "--init-weights")
    output(cfg).check()
    if cfg.fit_cache is not None:
        check_not_input(cfg.fit_cache, _inputs(cfg), "--fit-cache")
        check_not_input(cfg.fit_cache, [("--out", cfg.out)], "--fit-cache")


def _inputs(cfg: TrainConfig) -> list[tuple[str, Path | None]]:
    return [*(("--scenes", s) for s in cfg.scenes), ("--config", cfg.config), ("--init-weights", cfg.init_weights)]


def output(cfg: TrainConfig) -> OutputDir:
    """The run folder: built beside --out (checkpoints, logs, the default fit cache) and moved into place when
    training ends; Ctrl-C keeps it for --resume."""
    return OutputDir(cfg.out, command="train", inputs=_inputs(cfg), overwrite=cfg.overwrite, resumable=True,
                     resume=cfg.resume)


def _check_scenes(scene_dirs: list[Path], supervised: bool) -> None:
    """Every training scene is read once before the first long step (a fit or a training step), so a broken one
    stops the run at once; self-supervised runs read frames only, never ground truth."""
    for scene_dir in scene_dirs:
        scene = load_scene(scene_dir, check_files=False)
        scene.load_frames()
        if supervised:
            if scene.depth_gt is None:
                raise InputError(scene.json_path, "supervised training needs depth_gt", "depth_gt")
            scene.load_depth_gt()


def _check_same_network(ck: dict, cfg: TrainConfig, model_config: dict, path: Path, field: str) -> None:
    """A checkpoint to continue from (--resume) or start from (--init-weights) must hold this run's network."""
    if method_of(ck) != cfg.method:
        raise InputError(path, f"was trained with --method {ck.get('method')}, not {cfg.method}", field)
    # Compare as this version reads them: a checkpoint from before a setting existed has that setting's default.
    if build_model(ck.get("model_config") or {}, cfg.method).model_config() != model_config:
        raise InputError(path, "was trained with different network settings", field)


def _init_weights(cfg: TrainConfig) -> dict[str, torch.Tensor] | None:
    """The fine-tuning start (--init-weights), checked before any long fit-cache work; float16 model.pt
    weights are widened back to float32."""
    if cfg.init_weights is None:
        return None
    ck = load_checkpoint(cfg.init_weights, "--init-weights")
    _check_same_network(ck, cfg, new_model(cfg).model_config(), cfg.init_weights, "--init-weights")
    return {k: v.float() if v.is_floating_point() else v for k, v in ck["model"].items()}


def _lr(cfg: TrainConfig, step: int) -> float:
    t = step / max(cfg.steps - 1, 1)
    return cfg.lr * (cfg.lr_final_ratio + (1 - cfg.lr_final_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def compute_losses(model: torch.nn.Module, batch: Batch, scenes: list[TrainScene], cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """All loss terms of one batch for ``cfg.method`` (its registered loss); ``total`` is their weighted sum."""
    return get_method(cfg.method).loss_fn()(model, batch, scenes, cfg)


def gs_siamese_losses(model: torch.nn.Module, batch: Batch, scenes: list[TrainScene],
                      cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """gs-siamese: losses (a)-(e); (a) re-renders the scenes' fitted 3D Gaussians with the predicted CoC."""
    return _siamese_losses(model, batch, scenes, cfg, _rerendered_pairs)


def dered_losses(model: torch.nn.Module, batch: Batch, scenes: list[TrainScene],
                 cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """dered, the ablation: gs-siamese's losses, but (a) re-blurs the fit's all-in-focus image in image space."""
    return _siamese_losses(model, batch, scenes, cfg, _reblurred_pairs)


def d3net_losses(model: torch.nn.Module, batch: Batch, scenes: list[TrainScene],
                 cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """d3net: depth against depth_gt."""
    return _supervised_losses(model, batch, cfg, coc=False)


def mddnet_losses(model: torch.nn.Module, batch: Batch, scenes: list[TrainScene],
                  cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """mddnet: depth against depth_gt, and its CoC decoder against the thin-lens CoC of depth_gt."""
    return _supervised_losses(model, batch, cfg, coc=True)


def _rerendered_pairs(batch: Batch, scenes: list[TrainScene], coc: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """gs-siamese's loss (a) renderer: each crop's fitted Gaussians rendered with the pair's two CoC maps
    ``[B, 2, 1, h, w]`` -> ``[B, 2, h, w, 3]``."""
    return torch.stack([render_crop(scenes[r.scene], r, coc[k], cfg.backend, sigma_per_coc=cfg.fit_sigma_per_coc)
                        for k, r in enumerate(batch.refs)])


def _reblurred_pairs(batch: Batch, scenes: list[TrainScene], coc: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """dered's loss (a) renderer: the fit's AIF under each crop, re-blurred by the pair's two CoC maps
    ``[B, 2, 1, h, w]`` -> ``[B, 2, h, w, 3]``."""
    b, _, _, h, wd = coc.shape
    max_sigma = cfg.defocus_net.max_coc_px * cfg.fit_sigma_per_coc
    margin = margin_for(max_sigma)
    aif = torch.stack([aif_crop(scenes[r.scene], r, (h, wd), margin) for r in batch.refs])  # [B, 3, h+2m, w+2m]
    return reblur(aif, coc[:, :, 0], margin, max_sigma, cfg.fit_sigma_per_coc).permute(0, 1, 3, 4, 2)


def _siamese_losses(model: torch.nn.Module, batch: Batch, scenes: list[TrainScene], cfg: TrainConfig,
                    renderer: Callable[[Batch, list[TrainScene], torch.Tensor, TrainConfig], torch.Tensor],
                    ) -> dict[str, torch.Tensor]:
    """gs-siamese and its dered ablation: losses (a)-(e) of :mod:`gs_dfd.train.losses`; ``renderer`` makes
    loss (a)'s images of the pair from its CoC maps."""
    w = cfg.weights
    b, _, c, h, wd = batch.images.shape
    out = model(batch.network_input.reshape(2 * b, c, h, wd), batch.lenses.reshape(2 * b, 4))
    coc = out["coc"].view(b, 2, 1, h, wd)
    depth = out["depth"].view(b, 2, 1, h, wd)
    lens = [batch.lenses[:, 0], batch.lenses[:, 1]]
    terms: dict[str, torch.Tensor] = {}

    if w.render > 0:
        renders = renderer(batch, scenes, coc, cfg)
        target = batch.images.permute(0, 1, 3, 4, 2)  # [B, 2, h, w, 3], the clean frames
        terms["render"] = L.render_loss(renders.reshape(2 * b, h, wd, 3), target.reshape(2 * b, h, wd, 3), w.render_ssim)
    terms["siamese"] = L.siamese_loss(depth[:, 0], depth[:, 1])
    cocs_fixed = [coc[:, 0].detach(), coc[:, 1].detach()]
    terms["coc_consistency"] = 0.5 * (L.coc_consistency_loss(depth[:, 0], cocs_fixed, lens)
                                      + L.coc_consistency_loss(depth[:, 1], cocs_fixed, lens))
    if batch.depth_gt is not None:  # --supervised comparison
        anchor, weight = batch.depth_gt, (batch.depth_gt > 0).float()
    else:
        conf = batch.fit_confidence
        anchor, weight = batch.fit_depth, conf * (conf >= w.anchor_min_confidence)
    a_depth, a_coc = zip(*(L.anchor_losses(depth[:, k], coc[:, k], lens[k], anchor, weight) for k in range(2)))
    terms["anchor_depth"] = 0.5 * (a_depth[0] + a_depth[1])
    terms["anchor_coc"] = 0.5 * (a_coc[0] + a_coc[1])
    imgs = batch.images.reshape(2 * b, c, h, wd)  # edges of the clean frames guide the smoothness
    k_px = LensBatch.from_rows(batch.lenses.reshape(2 * b, 4)).coc_scale_px.view(-1, 1, 1, 1)
    terms["smooth"] = (L.edge_aware_smoothness(1.0 / out["depth"], imgs)
                       + L.edge_aware_smoothness(out["coc"] / k_px + 0.05, imgs))
    weights = dataclasses.asdict(w)  # each term is weighted by the LossWeights field of its name
    terms["total"] = sum(weights[k] * v for k, v in terms.items())
    return terms


def _supervised_losses(model: torch.nn.Module, batch: Batch, cfg: TrainConfig, coc: bool) -> dict[str, torch.Tensor]:
    """d3net and mddnet: every frame of a pair is one training image with the scene's depth_gt; ``coc``: the
    network predicts a CoC map too (weight ``supervised_coc``)."""
    if batch.depth_gt is None:
        raise GsDfdError(f"{cfg.method} is supervised: its batches need depth_gt (load scenes with supervised=True)")
    b, _, c, h, wd = batch.images.shape
    images = batch.network_input.reshape(2 * b, c, h, wd)
    lenses = batch.lenses.reshape(2 * b, 4)
    gt = batch.depth_gt[:, None].expand(b, 2, 1, h, wd).reshape(2 * b, 1, h, wd)
    out = model(images, lenses)
    terms = {"depth": L.supervised_depth_loss(out["depth"], gt)}
    weights = {"depth": 1.0}
    if coc:
        terms["coc"] = L.supervised_coc_loss(out["coc"], gt, lenses)
        weights["coc"] = cfg.weights.supervised_coc
    terms["total"] = sum(weights[k] * v for k, v in terms.items())
    return terms


class _Run:
    """Process-group bookkeeping: rank, world size, and collective helpers that are no-ops alone."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.distributed = self.world > 1
        if self.distributed and not dist.is_initialized():
            # gloo: the network, its batches and the renders stay on the CPU (nothing here moves them to a GPU,
            # and NCCL refuses CPU tensors). A process may wait a long time at a barrier for the others' shares of
            # the fit cache.
            dist.init_process_group(backend="gloo", timeout=datetime.timedelta(hours=12))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        if not self.distributed:
            return values
        t = torch.tensor(list(values.values()), dtype=torch.float64)
        dist.all_reduce(t)
        return dict(zip(values, (t / self.world).tolist()))

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def train(cfg: TrainConfig) -> dict:
    validate(cfg)
    run = _Run()
    try:
        if not run.main:  # rank 0 owns the run folder; the others work in it
            return _train(cfg, run, output(cfg).path)
        with output(cfg) as work:
            try:
                return _train(cfg, run, work.path)
            except KeyboardInterrupt:  # before or after the steps (they save a checkpoint themselves)
                raise Interrupted(f"interrupted: the run so far is kept in {work.path}; continue with the same "
                                  f"command and --resume") from None
    finally:
        run.close()


def _check_resume(cfg: TrainConfig, resolved: dict, work: Path, world: int) -> None:
    """A resumed run must continue the same training: refuse changed settings, naming them."""
    try:
        saved = json.loads((work / "config.json").read_text())
    except (OSError, ValueError):
        return
    changed = resume_changes(saved, resolved)
    if saved.get("world_size", world) != world:  # each rank draws its own crops: another count, another run
        changed.append(f"processes {saved['world_size']} -> {world}")
    if changed:
        raise InputError(cfg.out, "settings differ from the run being resumed: " + ", ".join(changed)
                         + " (resume with the same settings, or start afresh with --overwrite)", "--resume")


def _train(cfg: TrainConfig, run: _Run, work: Path) -> dict:
    """Train in ``work`` (the run folder being built)."""
    t_start = time.perf_counter()
    spec = get_method(cfg.method)
    if spec.supervised and not cfg.supervised:
        cfg = dataclasses.replace(cfg, supervised=True)  # they learn from depth_gt (recorded in config.json)
    needs_fit = spec.needs_fit  # the supervised baselines never fit the scenes
    init_state = _init_weights(cfg)
    scene_dirs = find_scenes(cfg.scenes)
    if run.main:
        _check_scenes(scene_dirs, cfg.supervised)
    cache = cfg.fit_cache or work / "fits"
    resolved = _to_jsonable(cfg)
    if run.main:
        if cfg.resume:
            _check_resume(cfg, resolved, work, run.world)
        write_json_atomic(work / "config.json", {"command": "train", **resolved, "world_size": run.world})
    if needs_fit:  # every process fits its share of the uncached scenes
        run.barrier()  # ... once rank 0 has set up the run folder (the default cache is in it)
        ensure_fits(scene_dirs, cache, cfg.fit_iterations, cfg.backend, cfg.progress and run.main, cfg.fit_propagate,
                    cfg.fit_sigma_per_coc, rank=run.rank, world=run.world, barrier=run.barrier)
    run.barrier()
    t_fit = time.perf_counter() - t_start
    scenes = [load_train_scene(s, cache / s.name if needs_fit else None, supervised=cfg.supervised,
                               fit_aif=spec.fit_aif) for s in scene_dirs]

    torch.manual_seed(cfg.seed)
    model = new_model(cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    start, seconds_before = 0, 0.0
    ckpt_path = work / "checkpoint.pt"
    if init_state is not None and not (cfg.resume and ckpt_path.is_file()):
        model.load_state_dict(init_state)
    if cfg.resume and ckpt_path.is_file():
        ck = load_checkpoint(ckpt_path, "--resume")
        _check_same_network(ck, cfg, model.model_config(), ckpt_path, "--resume")
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        start, seconds_before = int(ck["step"]), float(ck.get("train_seconds", 0.0))
        if run.main:
            console.print(f"resuming from step {start} of {cfg.steps}")
    net = torch.nn.parallel.DistributedDataParallel(model) if run.distributed else model

    writer = ScalarWriter(work / "tb") if run.main else None
    bar = None
    if run.main and cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc="train", dynamic_ncols=True, leave=False)
    step = start
    t_loop = time.perf_counter()

    def extra() -> dict:
        return {"train_seconds": seconds_before + time.perf_counter() - t_loop, "fit_cache_seconds": t_fit,
                "scenes": [s.name for s in scenes], "world_size": run.world,
                "threads_per_process": torch.get_num_threads()}

    try:
        for step in range(start, cfg.steps):
            for group in optimizer.param_groups:
                group["lr"] = _lr(cfg, step)
            rng = np.random.default_rng([cfg.seed, run.rank, step])
            batch = sample_batch(scenes, rng, cfg.batch_size, cfg.crop_hw, cfg.flips)
            if cfg.augment.enabled:  # its own generator: the crops stay those of an unaugmented run
                aug_rng = np.random.default_rng([cfg.seed, run.rank, step, 1])
                batch = dataclasses.replace(batch, net_images=augment_frames(batch.images, aug_rng, cfg.augment))
            terms = compute_losses(net, batch, scenes, cfg)
            if not torch.isfinite(terms["total"]):
                raise GsDfdError(f"loss is not finite at step {step}: lower --lr (was {cfg.lr})")
            optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            optimizer.step()
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                values = run.mean({k: float(v.detach()) for k, v in terms.items()})
                if run.main:
                    record = {"step": done, "lr": _lr(cfg, step), **values}
                    with open(work / "log.jsonl", "a") as f:
                        f.write(json.dumps(record) + "\n")
                    writer.scalars(done, {f"loss/{k}": v for k, v in values.items()} | {"lr": record["lr"]})
            if bar is not None:
                bar.update(1)
                shown = {"render": terms["render"]} if "render" in terms else {}  # the supervised methods have none
                bar.set_postfix(loss=f"{terms['total'].item():.4f}", **{k: f"{v.item():.4f}" for k, v in shown.items()})
            if run.main and done % cfg.checkpoint_every == 0:
                save_checkpoint(ckpt_path, model, optimizer, done, resolved, extra())
            step = done
    except KeyboardInterrupt:
        if run.main:
            save_checkpoint(ckpt_path, model, optimizer, step, resolved, extra())
            if bar is not None:
                bar.close()
        raise Interrupted(f"interrupted at step {step}: checkpoint saved to {ckpt_path}; "
                          f"continue with the same command and --resume") from None
    if bar is not None:
        bar.close()
    summary = {"steps": cfg.steps, **extra()}
    if run.main:
        save_checkpoint(ckpt_path, model, optimizer, cfg.steps, resolved, extra())
        export_weights(work / "model.pt", model, {"method": cfg.method, "steps": cfg.steps, **extra(),
                                                     "config": resolved})
        write_json_atomic(work / "summary.json", summary)
        writer.close()
    run.barrier()
    return summary


