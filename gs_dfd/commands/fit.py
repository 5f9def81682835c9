"""``gs-dfd fit``: per-scene depth from a focal or aperture stack.

``--method gs`` fits defocus-aware 3D Gaussians (``gs_dfd.fit.gaussian_fit``);
``--method dff`` is the classical depth-from-focus floor, so every user can
see what the Gaussian fit adds. Outputs (the contract of DESIGN.md):
``depth.npy`` (float32 metres), ``depth.png``, ``aif.png``, ``confidence.npy``,
``coc/NNN.npy`` (+ PNG), ``renders/NNN.png``, ``gaussians.ply``,
``camera.json`` (the reference view's camera and pose, for ``gs-dfd export``),
``metrics.json``, ``config.json`` and ``checkpoint.pt``. The folder follows the
output rule of :mod:`gs_dfd.utils.outputs`: built beside ``--out`` and moved into
place whole; Ctrl-C keeps the partial folder with its checkpoint for ``--resume``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch

from gs_dfd.console import console
from gs_dfd.data.images import write_png
from gs_dfd.data.scene import Scene, load_scene
from gs_dfd.errors import GsDfdError, InputError, Interrupted
from gs_dfd.eval.metrics import depth_metrics, image_metrics
from gs_dfd.export.camera_json import write_camera_json
from gs_dfd.export.gaussian_ply import GaussianCloud, write_gaussian_ply
from gs_dfd.fit.dff import depth_from_focus
from gs_dfd.fit.gaussian_fit import (
    GaussianFitSettings, build_state, depth_confidence, depth_sensitivity, fit_gaussians, load_checkpoint,
    render_frames, save_checkpoint,
)
from gs_dfd.optics.thin_lens import LSQ_DISK_SIGMA_PER_COC
from gs_dfd.utils.atomic import save_npy_atomic, write_json_atomic
from gs_dfd.utils.fill import fill_nearest
from gs_dfd.utils.outputs import OutputDir
from gs_dfd.viz.colormap import coc_to_rgb, colorize, depth_to_rgb
from gs_dfd.viz.panels import save_panel


@dataclass(kw_only=True)
class FitConfig:
    """Fit a scene's focal stack (gs_dfd.scene/1): depth, all-in-focus image, CoC maps and a 3D model.
    Ground truth in the scene is only read after fitting, for metrics.json."""

    scene: Path
    """Scene folder (holds scene.json)."""
    out: Path
    """Output folder."""
    method: Literal["gs", "dff"] = "gs"
    """gs: defocus-aware 3D Gaussians; dff: classical depth from focus (modified-Laplacian argmax)."""
    iterations: int = 360
    """Optimisation steps (gs)."""
    stride: int = 2
    """One Gaussian per stride x stride pixel block (gs); 1 = one per pixel (slower, sharper)."""
    smooth_weight: float = 0.02
    """Weight of the edge-aware inverse-depth smoothness prior (fills textureless regions)."""
    propagate: Literal["auto", "on", "off"] = "auto"
    """After 5/6 of the steps, carry depth from textured pixels into textureless ones along surfaces of one colour
    (one edge-aware linear solve; the optimiser's local smoothness prior cannot reach across a wall); the last
    steps settle what moved. auto: on for focal stacks (two or more focus distances); off for single-focus stacks
    such as aperture pairs, whose textured depth can sit on the wrong side of the focus plane (it would spread
    that) and whose network start already fills textureless regions."""
    ssim_weight: float = 0.2
    """Weight of 1 - SSIM against L1 in the photometric loss."""
    lr_inv_depth: float = 0.01
    """Adam learning rate of the Gaussians' inverse depth (1/m per step)."""
    calibrate_lens: bool = False
    """Refine the aperture scale and, with two or more focus distances, each frame's focus distance."""
    exposure_compensation: bool = True
    """Learn a per-frame gain and offset (real stacks change brightness between shots); frame 0 is the reference."""
    align_frames: bool = True
    """Learn a per-frame image translation of the frames that share frame 0's pose and that phase correlation
    finds offset by 0.5 px or more (real shots move between exposures; unregistered, the shift reads as blur)."""
    max_shift_px: float = 32.0
    """Largest translation between shots that --align-frames searches for (pixels)."""
    init: Literal["auto", "dff", "network", "constant"] = "auto"
    """Starting depth: dff (focus measure; needs 2+ focus distances), network (gs-dfd predict's DefocusNet +
    DepthNet on the most defocused frame: a learned near/far prior), constant (--init-depth-m). auto = dff with
    2+ focus distances, else network (constant if no weights are available)."""
    init_checkpoint: Optional[Path] = None
    """Weights for --init network (default: the checkpoint shipped in the package)."""
    init_depth_m: Optional[float] = None
    """Starting depth when the stack has a single focus distance (aperture stacks); default 1.25 x focus."""
    sigma_per_coc: float = LSQ_DISK_SIGMA_PER_COC
    """Blur model: Gaussian sigma (px) per CoC diameter (px). A real lens blurs with a disk; 0.25 matches its second
    moment, but the least-squares Gaussian for a disk blur of natural images is wider (0.275-0.28 for CoCs of 3 px
    and more) and fits depth closer to the truth (README: the fit's blur model)."""
    dff_window_px: int = 9
    """Window of the focus measure (dff, and the gs initialisation)."""
    backend: Literal["auto", "cpu", "torch", "gsplat"] = "auto"
    """Renderer: auto = gsplat on CUDA, else the C++ cpu backend."""
    eval_depth_range_m: tuple[float, float] = (0.5, 4.0)
    """Depth range (near far, metres) of the depth metrics when the scene has depth_gt."""
    evaluate: bool = True
    """Read the scene's depth_gt after fitting, for metrics.json and summary.png (``--no-evaluate``:
    never touch ground truth, as the self-supervised training cache requires)."""
    seed: int = 0
    """Random seed; the same seed gives the same result on CPU."""
    checkpoint_every: int = 50
    """Save checkpoint.pt every this many steps (and on Ctrl-C)."""
    resume: bool = False
    """Continue an interrupted fit (its checkpoint beside OUT) or a finished one (OUT/checkpoint.pt) up to
    --iterations; settings that change the result must be the same."""
    overwrite: bool = False
    """Replace OUT if it is an earlier gs-dfd output (never anything else)."""
    progress: bool = True
    """Show a progress bar."""
    debug: bool = False
    """Show full tracebacks instead of one-line errors."""

    def settings(self, scene: Scene) -> GaussianFitSettings:
        return GaussianFitSettings(iterations=self.iterations, stride=self.stride, smooth_weight=self.smooth_weight,
                                   ssim_weight=self.ssim_weight, lr_inv_depth=self.lr_inv_depth,
                                   calibrate_lens=self.calibrate_lens,
                                   exposure_compensation=self.exposure_compensation, init_depth_m=self.init_depth_m,
                                   align_frames=self.align_frames, max_shift_px=self.max_shift_px,
                                   dff_window_px=self.dff_window_px, sigma_per_coc=self.sigma_per_coc,
                                   backend=self.backend, seed=self.seed,
                                   **({} if self.propagates(scene) else {"propagate_smoothness": 0.0}))

    def propagates(self, scene: Scene) -> bool:
        return self.propagate == "on" or (self.propagate == "auto" and _focus_count(scene) >= 2)


def _focus_count(scene: Scene) -> int:
    return len({f.focus_distance_m for f in scene.frames})


# Settings that may change between a run and its --resume: they do not change the result.
_RESUME_FREE = ("iterations", "out", "resume", "overwrite", "progress", "debug", "checkpoint_every", "backend",
                "evaluate", "eval_depth_range_m")


def _output(cfg: FitConfig) -> OutputDir:
    return OutputDir(cfg.out, command="fit", inputs=[("--scene", cfg.scene), ("--init-checkpoint", cfg.init_checkpoint)],
                     overwrite=cfg.overwrite, resumable=True, resume=cfg.resume)


def _validate(cfg: FitConfig) -> None:
    for name, value, low in (("--iterations", cfg.iterations, 1), ("--stride", cfg.stride, 1),
                             ("--checkpoint-every", cfg.checkpoint_every, 1), ("--dff-window-px", cfg.dff_window_px, 3)):
        if value < low:
            raise InputError(None, f"must be >= {low} (got {value})", name)
    for name, value in (("--sigma-per-coc", cfg.sigma_per_coc), ("--lr-inv-depth", cfg.lr_inv_depth)):
        if not (math.isfinite(value) and value > 0):
            raise InputError(None, f"must be a finite number > 0 (got {value})", name)
    for name, value in (("--smooth-weight", cfg.smooth_weight), ("--ssim-weight", cfg.ssim_weight),
                        ("--max-shift-px", cfg.max_shift_px)):
        if not (math.isfinite(value) and value >= 0):
            raise InputError(None, f"must be a finite number >= 0 (got {value})", name)
    if cfg.ssim_weight > 1:
        raise InputError(None, f"must be in [0, 1] (got {cfg.ssim_weight})", "--ssim-weight")
    near, far = cfg.eval_depth_range_m
    if not (0 < near < far and math.isfinite(far)):
        raise InputError(None, f"need 0 < near < far (got {near}, {far})", "--eval-depth-range-m")
    if cfg.init_checkpoint is not None and cfg.init not in ("network", "auto"):
        raise InputError(None, "--init-checkpoint goes with --init network (or auto)", "--init-checkpoint")
    if cfg.init_checkpoint is not None and not cfg.init_checkpoint.is_file():
        raise InputError(cfg.init_checkpoint, "checkpoint not found", "--init-checkpoint")
    if cfg.init_depth_m is not None and not (math.isfinite(cfg.init_depth_m) and cfg.init_depth_m > 0):
        raise InputError(None, f"must be a finite number > 0 (got {cfg.init_depth_m})", "--init-depth-m")
    _output(cfg).check()


def _check_resume_config(cfg: FitConfig, work: Path) -> None:
    """A resumed fit must continue the same problem: refuse changed settings, naming them."""
    try:
        saved = json.loads((work / "config.json").read_text())
    except (OSError, ValueError):
        return  # the checkpoint's own settings are still compared when it is loaded
    now = _config_fields(cfg)
    changed = [f"--{k.replace('_', '-')} {saved.get(k)!r} -> {v!r}" for k, v in now.items()
               if k not in _RESUME_FREE and k in saved and saved[k] != v]
    if changed:
        raise InputError(cfg.out, "settings differ from the run being resumed: " + ", ".join(changed)
                         + " (resume with the same settings, or start afresh with --overwrite)", "--resume")


def _config_fields(cfg: FitConfig) -> dict:
    """The config as config.json stores it (JSON types: paths as strings, tuples as lists)."""
    return json.loads(json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()}))


def _save_config(cfg: FitConfig, out: Path, extra: dict) -> None:
    write_json_atomic(out / "config.json", {"command": "fit", **_config_fields(cfg), **extra})


def _depth_metrics(scene: Scene, depth: np.ndarray, cfg: FitConfig) -> dict | None:
    gt = scene.load_depth_gt() if cfg.evaluate else None  # evaluation only, after fitting
    if gt is None:
        return None
    near, far = cfg.eval_depth_range_m
    return {"range_m": [near, far], **depth_metrics(depth, gt, near, far)}


def _write_common(out: Path, scene: Scene, depth: np.ndarray, aif: np.ndarray, confidence: np.ndarray,
                  coc_maps: np.ndarray) -> None:
    save_npy_atomic(out / "depth.npy", depth.astype(np.float32))
    write_camera_json(out / "camera.json", scene.camera, scene.world_to_cam(0))  # the view depth.npy belongs to
    write_png(out / "depth.png", depth_to_rgb(depth))
    write_png(out / "aif.png", aif)
    save_npy_atomic(out / "confidence.npy", confidence.astype(np.float32))
    write_png(out / "confidence.png", colorize(confidence, 0.0, 1.0, cmap="viridis"))
    top = float(np.percentile(coc_maps, 99)) if coc_maps.size else 1.0
    for i in range(len(scene.frames)):
        save_npy_atomic(out / "coc" / f"{i:03d}.npy", coc_maps[i].astype(np.float32))
        write_png(out / "coc" / f"{i:03d}.png", coc_to_rgb(coc_maps[i], top))


def _thin_lens_coc_maps(scene: Scene, depth: np.ndarray) -> np.ndarray:
    return np.stack([np.asarray(scene.lens(i).coc_px(depth), np.float32) for i in range(len(scene.frames))])


def _summary_panel(cfg: FitConfig, out: Path, scene: Scene, frames: np.ndarray, depth: np.ndarray, aif: np.ndarray,
                   confidence: np.ndarray) -> None:
    """What a person wants to see first: input, all-in-focus, depth (and ground truth), confidence."""
    gt = scene.load_depth_gt() if cfg.evaluate else None
    valid = depth[np.isfinite(depth)]
    lo, hi = np.percentile(valid, [2, 98]) if valid.size else (1.0, 2.0)
    if gt is not None and np.any(gt > 0):
        lo, hi = np.percentile(gt[gt > 0], [2, 98])
    tiles = [frames[0], aif, depth_to_rgb(depth, lo, hi), colorize(confidence, 0, 1, cmap="viridis")]
    titles = ["frame 0", "all in focus (fit)", f"depth ({cfg.method}) {lo:.2f}-{hi:.2f} m", "confidence"]
    if gt is not None:
        tiles.insert(3, depth_to_rgb(gt, lo, hi))
        titles.insert(3, "depth_gt")
    save_panel(out / "summary.png", tiles, titles, columns=len(tiles), suptitle=f"{scene.root.name}: gs-dfd fit")


def run_dff(cfg: FitConfig, scene: Scene, frames: np.ndarray, out: Path) -> dict:
    focus = np.array([f.focus_distance_m for f in scene.frames])
    if len(np.unique(focus)) < 2:
        raise InputError(scene.json_path, "--method dff needs frames with at least two distinct focus distances",
                         "frames")
    res = depth_from_focus(frames, focus, cfg.dff_window_px)
    sharpest = np.argmax(res.focus_measure, axis=0)
    aif = np.take_along_axis(frames, sharpest[None, :, :, None], 0)[0]
    _write_common(out, scene, res.depth_m, aif, res.confidence, _thin_lens_coc_maps(scene, res.depth_m))
    return {"depth": res.depth_m, "aif": aif, "confidence": res.confidence}


def _network_prior(cfg: FitConfig, scene: Scene, frames: np.ndarray) -> tuple[np.ndarray | None, int]:
    """(depth, the frame it was predicted on) from the trained network for --init network (or auto on
    single-focus stacks), else (None, 0)."""
    n_focus = _focus_count(scene)
    if cfg.init == "dff" and n_focus < 2:
        raise InputError(scene.json_path, "--init dff needs frames with at least two distinct focus distances", "frames")
    if cfg.init in ("dff", "constant") or (cfg.init == "auto" and n_focus >= 2):
        return None, 0
    from gs_dfd.infer.predictor import SHIPPED_WEIGHTS, Predictor

    if cfg.init == "auto" and cfg.init_checkpoint is None and not SHIPPED_WEIGHTS.is_file():
        console.warn("no shipped network weights: starting from a constant depth")
        return None, 0
    predictor = Predictor(cfg.init_checkpoint, field="--init-checkpoint")
    # The most defocused frame (smallest f-number) carries the most depth signal.
    i = int(np.argmin([scene.f_number(k) for k in range(len(scene.frames))]))
    depth = predictor.predict(frames[i], scene.lens(i)).depth_m
    console.print(f"starting depth from the network ({predictor.path.name}) on frame {i}: "
                  f"{np.percentile(depth, 2):.2f}-{np.percentile(depth, 98):.2f} m")
    return depth, i


def run_gs(cfg: FitConfig, scene: Scene, frames: np.ndarray, out: Path) -> dict:
    settings = cfg.settings(scene)
    prior_m, prior_frame = _network_prior(cfg, scene, frames)
    state = build_state(scene, frames, settings, depth_prior_m=prior_m, depth_prior_frame=prior_frame)
    if state.alignment.enabled:
        console.print("frame shifts against frame 0 (phase correlation, refined by the fit): " + ", ".join(
            f"{r['frame']}: ({r['shift_px'][0]:+.2f}, {r['shift_px'][1]:+.2f}) px" for r in state.alignment.report()))
    ckpt = out / "checkpoint.pt"
    if cfg.resume and ckpt.is_file():
        load_checkpoint(ckpt, state, settings)
        console.print(f"resuming from step {state.step} of {settings.iterations}")
    elif cfg.resume:
        console.print("the interrupted run saved no checkpoint yet: starting from step 0")
    bar = None
    if cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=settings.iterations, initial=state.step, desc="fit", dynamic_ncols=True, leave=False)

    def on_step(st, rec):
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{rec['loss']:.4f}", psnr=f"{rec['psnr']:.2f}")
        if st.step % cfg.checkpoint_every == 0:
            save_checkpoint(ckpt, st, settings)

    try:
        fit_gaussians(state, scene, frames, settings, on_step=on_step)
    except KeyboardInterrupt:
        save_checkpoint(ckpt, state, settings)
        if bar is not None:
            bar.close()
        raise Interrupted(f"interrupted at step {state.step}: checkpoint saved to {ckpt}; "
                          f"continue with the same command and --resume") from None
    if bar is not None:
        bar.close()
    save_checkpoint(ckpt, state, settings)

    if state.propagation is not None:
        console.print(f"depth propagated into textureless regions at step {state.propagation['step']}: "
                      f"{100 * state.propagation['moved_over_10_percent']:.0f}% of the Gaussians moved by > 10%")
    with torch.no_grad():
        sharp = render_frames(state, scene, settings.backend, coc_scale=0.0)
        blurred = render_frames(state, scene, settings.backend, return_coc=True)
    alpha = sharp["alpha"][0, ..., 0].numpy()
    depth_raw = sharp["depth"][0, ..., 0].numpy()
    depth = (fill_nearest(depth_raw, alpha > 0.5) if (alpha > 0.5).any() else depth_raw).astype(np.float32)
    aif = sharp["rgb"][0].clamp(0, 1).numpy()
    confidence = depth_confidence(depth_sensitivity(state, scene, settings.backend), alpha)
    renders = blurred["rgb"].clamp(0, 1).numpy()
    for i in range(len(scene.frames)):
        write_png(out / "renders" / f"{i:03d}.png", renders[i])
    _write_common(out, scene, depth, aif, confidence, blurred["coc"][..., 0].numpy())
    g = state.model.world()
    cloud = GaussianCloud(means=g.means.detach().numpy(), quats=g.quats.detach().numpy(),
                          scales=g.scales.detach().numpy(), opacities=g.opacities.detach().numpy(),
                          colors=g.colors.detach().numpy()[:, :3] if g.colors.shape[1] >= 3
                          else np.repeat(g.colors.detach().numpy(), 3, axis=1))
    write_gaussian_ply(out / "gaussians.ply", cloud)
    per_frame = [{"frame": i, **{k: v for k, v in image_metrics(renders[i], frames[i]).items()}}
                 for i in range(len(scene.frames))]
    return {"depth": depth, "aif": aif, "confidence": confidence, "frames": per_frame,
            "lens": state.lens.report(), "exposure": state.exposure.report(),
            "alignment": state.alignment.report() if state.alignment.enabled else None,
            "propagation": state.propagation,
            "n_gaussians": state.model.n, "iterations": state.step,
            "final_loss": state.history[-1]["loss"] if state.history else None}


def run(cfg: FitConfig) -> int:
    _validate(cfg)
    scene = load_scene(cfg.scene, check_files=cfg.evaluate)  # --no-evaluate: ground-truth files untouched
    for w in scene.warnings:
        console.warn(w)
    _check_stride(cfg, scene)
    frames = scene.load_frames()
    t0 = time.perf_counter()
    with _output(cfg) as work:
        if cfg.resume:
            _check_resume_config(cfg, work.path)
        _save_config(cfg, work.path, {"started": time.strftime("%Y-%m-%dT%H:%M:%S")})
        try:
            result = (run_dff(cfg, scene, frames, work.path) if cfg.method == "dff"
                      else run_gs(cfg, scene, frames, work.path))
            seconds = time.perf_counter() - t0
            metrics = _write_metrics(cfg, work.path, scene, frames, result, seconds)
        except KeyboardInterrupt:  # outside the steps (they save a checkpoint themselves)
            raise Interrupted(f"interrupted: the fit so far is kept in {work.path}; continue with the same command "
                              f"and --resume") from None
    _report(cfg, metrics, seconds)
    return 0


def _check_stride(cfg: FitConfig, scene: Scene) -> None:
    gw, gh = scene.camera.width // cfg.stride, scene.camera.height // cfg.stride
    if cfg.method == "gs" and min(gw, gh) < 4:
        raise InputError(None, f"{cfg.stride} leaves a {gw}x{gh} grid of Gaussians on the {scene.camera.width}x"
                               f"{scene.camera.height} frames (need at least 4x4)", "--stride")


def _write_metrics(cfg: FitConfig, out: Path, scene: Scene, frames: np.ndarray, result: dict, seconds: float) -> dict:
    metrics = {
        "method": cfg.method,
        "scene": str(cfg.scene),
        "seconds": seconds,
        "threads": torch.get_num_threads(),
        "frames": result.get("frames"),
        "mean_psnr": float(np.mean([f["psnr"] for f in result["frames"]])) if result.get("frames") else None,
        "mean_ssim": float(np.mean([f["ssim"] for f in result["frames"]])) if result.get("frames") else None,
        "depth": _depth_metrics(scene, result["depth"], cfg),
        "lens": result.get("lens"),
        "exposure": result.get("exposure"),
        "alignment": result.get("alignment"),
        "propagation": result.get("propagation"),
        "n_gaussians": result.get("n_gaussians"),
        "iterations": result.get("iterations"),
    }
    write_json_atomic(out / "metrics.json", metrics)
    _summary_panel(cfg, out, scene, frames, result["depth"], result["aif"], result["confidence"])
    return metrics


def _report(cfg: FitConfig, metrics: dict, seconds: float) -> None:
    console.print(f"fit ({cfg.method}) of {cfg.scene} done in {seconds:.1f} s -> {cfg.out}")
    if metrics["mean_psnr"] is not None:
        console.print(f"  re-render PSNR {metrics['mean_psnr']:.2f} dB, SSIM {metrics['mean_ssim']:.4f}")
    if metrics["depth"] is not None:
        d = metrics["depth"]
        console.print(f"  depth vs depth_gt ({d['range_m'][0]}-{d['range_m'][1]} m): AbsRel {d['abs_rel']:.4f}, "
                      f"RMSE {d['rmse']:.4f} m, delta1 {d['delta1']:.4f}")
    if metrics.get("lens") and metrics["lens"]["calibrated"]:
        console.print("  lens: " + json.dumps(metrics["lens"]))
    console.print(f"  see {cfg.out / 'summary.png'}")
