"""One fit of one scene, below the command line: ``gs-dfd fit`` and the training cache both run :func:`fit_scene`.

A run checks its settings, loads the scene, then builds the output folder by the output rule
(:class:`gs_dfd.utils.outputs.OutputDir`: in a hidden sibling renamed over ``out`` when complete; Ctrl-C keeps
it, with its checkpoint, for ``resume``), writes ``config.json``, fits (``gs``: defocus-aware 3D Gaussians,
:mod:`gs_dfd.fit.gaussian_fit`; ``dff``: the classical depth-from-focus floor, so that every user can see what
the Gaussians add) and writes the outputs (docs/DESIGN.md): ``depth.npy`` (float32 metres), ``depth.png``,
``aif.png``, ``confidence.npy``, ``coc/NNN.npy`` (+ PNG), ``renders/NNN.png``, ``gaussians.ply``,
``camera.json`` (the reference view's camera and pose, for ``gs-dfd export``), ``metrics.json``,
``summary.png`` and ``checkpoint.pt`` (and, for large frames, ``coarse_start.pt``). Ground truth is read only
after fitting, and never with ``evaluate=False``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch

from gs_dfd.console import console
from gs_dfd.data.images import write_png
from gs_dfd.data.scene import Scene, load_scene
from gs_dfd.errors import InputError, Interrupted
from gs_dfd.eval.metrics import depth_metrics, image_metrics
from gs_dfd.export.camera_json import write_camera_json
from gs_dfd.export.gaussian_ply import GaussianCloud, write_gaussian_ply
from gs_dfd.fit.coarse_start import FitStart, coarse_settings, fit_start, start_factor
from gs_dfd.fit.dff import depth_from_focus
from gs_dfd.fit.gaussian_fit import (
    GaussianFitSettings, build_state, fit_gaussians, fitted_maps, load_checkpoint, render_frame_whole,
    save_checkpoint, total_steps, window_size,
)
from gs_dfd.utils.atomic import save_npy_atomic, write_json_atomic
from gs_dfd.utils.outputs import OutputDir
from gs_dfd.viz.colormap import coc_to_rgb, colorize, depth_to_rgb
from gs_dfd.viz.panels import save_panel


@dataclass(kw_only=True)
class FitSceneConfig:
    """One fit, declared once: where from and to, the method and its start, the Gaussian fit's settings
    (:class:`GaussianFitSettings`, nested) and how the run checkpoints and evaluates. ``gs-dfd fit``'s flags are
    these fields; config.json records them flat."""

    scene: Path
    """Scene folder (holds scene.json)."""
    out: Path
    """Output folder."""
    method: Literal["gs", "dff"] = "gs"
    """gs: defocus-aware 3D Gaussians; dff: classical depth from focus (modified-Laplacian argmax)."""
    propagate: Literal["auto", "on", "off"] = "auto"
    """Late in the fit (--propagate-at-fraction), carry depth from textured pixels into textureless ones along
    surfaces of one colour (one edge-aware linear solve; the optimiser's local smoothness prior cannot reach across
    a wall); the last steps settle what moved. auto: on for focal stacks (two or more focus distances); off for
    single-focus stacks such as aperture pairs, whose textured depth can sit on the wrong side of the focus plane
    (it would spread that) and whose network start already fills textureless regions."""
    focus_calibration: Literal["auto", "on", "off"] = "auto"
    """Learn the focus distances of the frames between the sweep's nearest and farthest (--calibrate-sweep).
    auto: on when the scene's distances were spaced over a range or assumed (gs-dfd import --focus-range-m or
    --focus-unknown; scene.json source.focus_distance_m), off when they were measured or given per frame."""
    init: Literal["auto", "dff", "network", "constant"] = "auto"
    """Starting depth: dff (focus measure; needs 2+ focus distances), network (gs-dfd predict's DefocusNet +
    DepthNet on the most defocused frame: a learned near/far prior), constant (--init-depth-m). auto = dff with
    2+ focus distances, else network (constant if no weights are available)."""
    init_checkpoint: Optional[Path] = None
    """Weights for --init network (default: the checkpoint shipped in the package)."""
    fit: GaussianFitSettings = field(default_factory=GaussianFitSettings)
    """The Gaussian fit (--method gs). Flags without a prefix; config.json and the checkpoint record each."""
    eval_depth_range_m: tuple[float, float] = (0.5, 4.0)
    """Depth range (near far, metres) of the depth metrics when the scene has depth_gt."""
    evaluate: bool = True
    """Read the scene's depth_gt after fitting, for metrics.json and summary.png (``--no-evaluate``:
    never touch ground truth, as the self-supervised training cache requires)."""
    checkpoint_every: int = 50
    """Save checkpoint.pt every this many steps (and on Ctrl-C)."""
    resume: bool = False
    """Continue an interrupted fit (its checkpoint beside OUT) or a finished one (OUT/checkpoint.pt) up to the
    step count (--iterations), which may grow; settings that change the result must be the same."""
    overwrite: bool = False
    """Replace OUT if it is an earlier gs-dfd output (never anything else)."""
    progress: bool = True
    """Show a progress bar."""

    def propagates(self, scene: Scene) -> bool:
        return self.propagate == "on" or (self.propagate == "auto" and _focus_count(scene) >= 2)

    def calibrates_sweep(self, scene: Scene) -> bool:
        spaced = (scene.source or {}).get("focus_distance_m") in ("range", "assumed")
        return self.fit.calibrate_sweep or self.focus_calibration == "on" or (self.focus_calibration == "auto"
                                                                              and spaced)

    def settings(self, scene: Scene) -> GaussianFitSettings:
        """The Gaussian fit's settings for this scene: ``--propagate`` resolved into ``propagate_smoothness``,
        ``--focus-calibration`` into ``calibrate_sweep``."""
        return dataclasses.replace(self.fit, propagate_smoothness=self.fit.propagate_smoothness
                                   if self.propagates(scene) else 0.0, calibrate_sweep=self.calibrates_sweep(scene))

    def output(self) -> OutputDir:
        return OutputDir(self.out, command="fit", inputs=[("--scene", self.scene),
                                                          ("--init-checkpoint", self.init_checkpoint)],
                         overwrite=self.overwrite, resumable=True, resume=self.resume)

    def check(self) -> None:
        """Every setting and the output folder, before anything is read or written (one-line errors)."""
        self.fit.check()
        if self.checkpoint_every < 1:
            raise InputError(None, f"must be >= 1 (got {self.checkpoint_every})", "--checkpoint-every")
        near, far = self.eval_depth_range_m
        if not (0 < near < far and math.isfinite(far)):
            raise InputError(None, f"need 0 < near < far (got {near}, {far})", "--eval-depth-range-m")
        if self.init_checkpoint is not None and self.init not in ("network", "auto"):
            raise InputError(None, "--init-checkpoint goes with --init network (or auto)", "--init-checkpoint")
        if self.init_checkpoint is not None and not self.init_checkpoint.is_file():
            raise InputError(self.init_checkpoint, "checkpoint not found", "--init-checkpoint")
        self.output().check()


@dataclass
class FitResult:
    """A finished fit: the folder it wrote, and what it measured (as in metrics.json)."""

    out: Path
    depth: np.ndarray  # [H, W] metres, in frame 0's view
    aif: np.ndarray  # [H, W, C] in [0, 1]
    confidence: np.ndarray  # [H, W] in [0, 1]
    metrics: dict
    seconds: float


def fit_scene(config: FitSceneConfig) -> FitResult:
    """Fit ``config.scene`` into ``config.out`` (built whole by the output rule); raises :class:`Interrupted`
    on Ctrl-C, with the partial folder and its checkpoint kept for ``resume``."""
    config.check()
    scene = load_scene(config.scene, check_files=config.evaluate)  # no evaluation: ground-truth files untouched
    for w in scene.warnings:
        console.warn(w)
    _check_stride(config, scene)
    frames = scene.load_frames()
    t0 = time.perf_counter()
    with config.output() as work:
        if config.resume:
            _check_resume_config(config, work.path)
        write_json_atomic(work.path / "config.json",
                          {"command": "fit", **config_record(config), "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
        try:
            result = (run_dff(config, scene, frames, work.path) if config.method == "dff"
                      else run_gs(config, scene, frames, work.path))
            seconds = time.perf_counter() - t0
            metrics = _write_metrics(config, work.path, scene, frames, result, seconds)
        except KeyboardInterrupt:  # outside the steps (they save a checkpoint themselves)
            raise Interrupted(f"interrupted: the fit so far is kept in {work.path}; continue with the same command "
                              f"and --resume") from None
    return FitResult(out=config.out, depth=result["depth"], aif=result["aif"], confidence=result["confidence"],
                     metrics=metrics, seconds=seconds)


# --------------------------------------------------------------------------- config.json and --resume

# Settings that may change between a run and its --resume: they do not change the result.
_RESUME_FREE = ("iterations", "out", "resume", "overwrite", "progress", "debug", "checkpoint_every", "backend",
                "evaluate", "eval_depth_range_m")


def config_record(config: FitSceneConfig) -> dict:
    """The config as config.json stores it: one flat object (the Gaussian fit's settings beside the others, each
    under its flag's name) in JSON types (paths as strings, tuples as lists)."""
    record: dict = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        items = dataclasses.asdict(value).items() if dataclasses.is_dataclass(value) else [(f.name, value)]
        for key, v in items:
            assert key not in record, f"config.json key {key!r} twice"
            record[key] = v
    return json.loads(json.dumps(record, default=str))


def _check_resume_config(config: FitSceneConfig, work: Path) -> None:
    """A resumed fit must continue the same problem: refuse changed settings, naming them."""
    try:
        saved = json.loads((work / "config.json").read_text())
    except (OSError, ValueError):
        return  # the checkpoint's own settings are still compared when it is loaded
    changed = [f"--{k.replace('_', '-')} {saved.get(k)!r} -> {v!r}" for k, v in config_record(config).items()
               if k not in _RESUME_FREE and k in saved and saved[k] != v]
    if changed:
        raise InputError(config.out, "settings differ from the run being resumed: " + ", ".join(changed)
                         + " (resume with the same settings, or start afresh with --overwrite)", "--resume")


# --------------------------------------------------------------------------- the two methods


def _focus_count(scene: Scene) -> int:
    return len({f.focus_distance_m for f in scene.frames})


def _check_stride(config: FitSceneConfig, scene: Scene) -> None:
    stride = config.fit.stride
    gw, gh = scene.camera.width // stride, scene.camera.height // stride
    if config.method == "gs" and min(gw, gh) < 4:
        raise InputError(None, f"{stride} leaves a {gw}x{gh} grid of Gaussians on the {scene.camera.width}x"
                               f"{scene.camera.height} frames (need at least 4x4)", "--stride")


def run_dff(config: FitSceneConfig, scene: Scene, frames: np.ndarray, out: Path) -> dict:
    """Depth from focus: the sharpest frame per pixel gives depth and the all-in-focus image."""
    focus = np.array([f.focus_distance_m for f in scene.frames])
    if len(np.unique(focus)) < 2:
        raise InputError(scene.json_path, "--method dff needs frames with at least two distinct focus distances",
                         "frames")
    res = depth_from_focus(frames, focus, config.fit.dff_window_px)
    sharpest = np.argmax(res.focus_measure, axis=0)
    aif = np.take_along_axis(frames, sharpest[None, :, :, None], 0)[0]
    _write_common(out, scene, res.depth_m, aif, res.confidence, _thin_lens_coc_maps(scene, res.depth_m))
    return {"depth": res.depth_m, "aif": aif, "confidence": res.confidence}


def _network_prior(config: FitSceneConfig, scene: Scene, frames: np.ndarray) -> tuple[np.ndarray | None, int]:
    """(depth, the frame it was predicted on) from the trained network for --init network (or auto on
    single-focus stacks), else (None, 0)."""
    n_focus = _focus_count(scene)
    if config.init == "dff" and n_focus < 2:
        raise InputError(scene.json_path, "--init dff needs frames with at least two distinct focus distances", "frames")
    if config.init in ("dff", "constant") or (config.init == "auto" and n_focus >= 2):
        return None, 0
    from gs_dfd.infer.predictor import SHIPPED_WEIGHTS, Predictor  # torch models: only when a prior is wanted

    if config.init == "auto" and config.init_checkpoint is None and not SHIPPED_WEIGHTS.is_file():
        console.warn("no shipped network weights: starting from a constant depth")
        return None, 0
    predictor = Predictor(config.init_checkpoint, field="--init-checkpoint")
    # The most defocused frame (smallest f-number) carries the most depth signal.
    i = int(np.argmin([scene.f_number(k) for k in range(len(scene.frames))]))
    depth = predictor.predict(frames[i], scene.lens(i)).depth_m
    console.print(f"starting depth from the network ({predictor.path.name}) on frame {i}: "
                  f"{np.percentile(depth, 2):.2f}-{np.percentile(depth, 98):.2f} m")
    return depth, i


def run_gs(config: FitSceneConfig, scene: Scene, frames: np.ndarray, out: Path) -> dict:
    """The Gaussian fit, checkpointed every ``checkpoint_every`` steps and on Ctrl-C; resumed from
    ``out/checkpoint.pt`` with ``resume``."""
    settings = config.settings(scene)
    prior_m, prior_frame = _network_prior(config, scene, frames)
    ckpt = out / "checkpoint.pt"
    start = _coarse_start(config, scene, frames, settings, out, prior_m)
    state = build_state(scene, frames, settings, depth_prior_m=prior_m, depth_prior_frame=prior_frame, start=start)
    if state.warp.enabled:
        moved = state.warp.report()
        shown = [r for r in moved if any(v != 0 for v in r["shift_px"]) or r["scale"] != 1.0]
        console.print(f"{len(shown)} frames registered against frame 0 (refined by the fit): scale "
                      f"{min(r['scale'] for r in moved):.4f}-{max(r['scale'] for r in moved):.4f}, largest shift "
                      f"{max(float(np.hypot(*r['shift_px'])) for r in moved):.2f} px")
    steps = total_steps(settings, scene.camera.width, scene.camera.height)
    tw, th = window_size(settings, scene.camera.width, scene.camera.height)
    per_step = min(len(scene.frames), settings.frames_per_step)
    if (tw, th) != (scene.camera.width, scene.camera.height) or per_step < len(scene.frames):
        console.print(f"{steps} steps of {per_step} of {len(scene.frames)} frames in a {tw}x{th} window of "
                      f"{scene.camera.width}x{scene.camera.height}")
    if config.resume and ckpt.is_file():
        load_checkpoint(ckpt, state, settings)
        console.print(f"resuming from step {state.step} of {steps}")
    elif config.resume:
        console.print("the interrupted run saved no checkpoint yet: starting from step 0")
    bar = None
    if config.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=state.step, desc="fit", dynamic_ncols=True, leave=False)

    def on_step(st, rec):
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{rec['loss']:.4f}", psnr=f"{rec['psnr']:.2f}")
        if st.step % config.checkpoint_every == 0:
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
    depth, aif, confidence = fitted_maps(state, scene, settings)
    per_frame = []
    for i in console.progress(range(len(scene.frames)), "renders", enabled=config.progress and len(scene.frames) > 8):
        render = render_frame_whole(state, scene, settings, i).clamp(0, 1).numpy()  # one frame at a time (memory)
        write_png(out / "renders" / f"{i:03d}.png", render)
        per_frame.append({"frame": i, **image_metrics(render, frames[i])})
    with torch.no_grad():  # each frame's CoC of the fitted depth, through the (calibrated) lens, in frame 0's grid
        coc_maps = state.lens.coc_px(torch.from_numpy(depth.reshape(-1)), list(range(len(scene.frames))))
    _write_common(out, scene, depth, aif, confidence, coc_maps.reshape(-1, *depth.shape).numpy())
    g = state.model.world()
    cloud = GaussianCloud(means=g.means.detach().numpy(), quats=g.quats.detach().numpy(),
                          scales=g.scales.detach().numpy(), opacities=g.opacities.detach().numpy(),
                          colors=g.colors.detach().numpy()[:, :3] if g.colors.shape[1] >= 3
                          else np.repeat(g.colors.detach().numpy(), 3, axis=1))
    write_gaussian_ply(out / "gaussians.ply", cloud)
    return {"depth": depth, "aif": aif, "confidence": confidence, "frames": per_frame,
            "lens": state.lens.report(), "exposure": state.exposure.report(),
            "alignment": state.warp.report() if state.warp.enabled else None,
            "frame_blur": state.frame_blur.report(),
            "propagation": state.propagation, "coarse_start": None if start is None else start.report(),
            "n_gaussians": state.model.n, "iterations": state.step,
            "final_loss": state.history[-1]["loss"] if state.history else None}


def _coarse_start(config: FitSceneConfig, scene: Scene, frames: np.ndarray, settings: GaussianFitSettings,
                  out: Path, prior_m: np.ndarray | None) -> FitStart | None:
    """The block-averaged fit a large stack starts from (gs_dfd.fit.coarse_start), saved as ``coarse_start.pt``
    so that --resume rebuilds the same start without fitting it again; None for small stacks or a network
    start."""
    cam = scene.camera
    factor = start_factor(settings.start_max_px, cam.width, cam.height)
    if factor == 1 or prior_m is not None:
        return None
    path = out / "coarse_start.pt"
    if config.resume and (out / "checkpoint.pt").is_file():
        if not path.is_file():  # a fit saves its start before its first checkpoint: this one ran without
            raise InputError(out / "checkpoint.pt", "was saved by a fit without a coarse start (an earlier gs-dfd, "
                             "or --start-max-px 0): resume with --start-max-px 0, or start afresh", "--resume")
        return FitStart.load(path)
    small = coarse_settings(settings, cam.width, cam.height)
    console.print(f"starting from a fit of the frames averaged over {factor}x{factor} pixel blocks "
                  f"({cam.width // factor}x{cam.height // factor}, {small.iterations} steps)")
    bar = None
    if config.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=small.iterations, desc=f"fit 1/{factor}", dynamic_ncols=True, leave=False)
    try:
        start = fit_start(scene, frames, settings, on_step=None if bar is None else lambda st, rec: bar.update(1))
    finally:
        if bar is not None:
            bar.close()
    start.save(path)
    return start


# --------------------------------------------------------------------------- outputs


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


def depth_scale(scene: Scene) -> str:
    """"metric", or "relative" when the scene's focus distances were assumed (gs-dfd import --focus-unknown): then
    depth.npy is in an assumed scale, right only up to an affine map of inverse depth."""
    return "relative" if (scene.source or {}).get("depth") == "relative" else "metric"


def _depth_metrics(config: FitSceneConfig, scene: Scene, depth: np.ndarray) -> dict | None:
    gt = scene.load_depth_gt() if config.evaluate else None  # evaluation only, after fitting
    if gt is None:
        return None
    near, far = config.eval_depth_range_m
    return {"range_m": [near, far], **depth_metrics(depth, gt, near, far)}


def _write_metrics(config: FitSceneConfig, out: Path, scene: Scene, frames: np.ndarray, result: dict,
                   seconds: float) -> dict:
    metrics = {
        "method": config.method,
        "scene": str(config.scene),
        "seconds": seconds,
        "threads": torch.get_num_threads(),
        "frames": result.get("frames"),
        "mean_psnr": float(np.mean([f["psnr"] for f in result["frames"]])) if result.get("frames") else None,
        "mean_ssim": float(np.mean([f["ssim"] for f in result["frames"]])) if result.get("frames") else None,
        "depth_scale": depth_scale(scene),
        "depth": _depth_metrics(config, scene, result["depth"]),
        "lens": result.get("lens"),
        "exposure": result.get("exposure"),
        "alignment": result.get("alignment"),
        "frame_blur": result.get("frame_blur"),
        "propagation": result.get("propagation"),
        "coarse_start": result.get("coarse_start"),
        "n_gaussians": result.get("n_gaussians"),
        "iterations": result.get("iterations"),
    }
    write_json_atomic(out / "metrics.json", metrics)
    _summary_panel(config, out, scene, frames, result["depth"], result["aif"], result["confidence"])
    return metrics


def _summary_panel(config: FitSceneConfig, out: Path, scene: Scene, frames: np.ndarray, depth: np.ndarray,
                   aif: np.ndarray, confidence: np.ndarray) -> None:
    """What a person wants to see first: input, all-in-focus, depth (and ground truth), confidence."""
    gt = scene.load_depth_gt() if config.evaluate else None
    valid = depth[np.isfinite(depth)]
    lo, hi = np.percentile(valid, [2, 98]) if valid.size else (1.0, 2.0)
    if gt is not None and np.any(gt > 0):
        lo, hi = np.percentile(gt[gt > 0], [2, 98])
    tiles = [frames[0], aif, depth_to_rgb(depth, lo, hi), colorize(confidence, 0, 1, cmap="viridis")]
    depth_title = (f"relative depth ({config.method}; focus assumed)" if depth_scale(scene) == "relative"
                   else f"depth ({config.method}) {lo:.2f}-{hi:.2f} m")
    titles = ["frame 0", "all in focus (fit)", depth_title, "confidence"]
    if gt is not None:
        tiles.insert(3, depth_to_rgb(gt, lo, hi))
        titles.insert(3, "depth_gt")
    save_panel(out / "summary.png", tiles, titles, columns=len(tiles), suptitle=f"{scene.root.name}: gs-dfd fit")
