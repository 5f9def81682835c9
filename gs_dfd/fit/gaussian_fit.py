"""Fit defocus-aware 3D Gaussians to all frames of a focal (or aperture) stack at once.

Method (docs/method.md describes each part; docs/results_history.md has the measurements):

1. Initialise from depth from focus (sum-modified-Laplacian argmax with
   sub-frame interpolation), median-filtered in inverse depth; colours from
   the sharpest frame at each pixel. With a single focus distance (aperture
   stacks) there is no focus peak: start at ``init_depth_m``.
2. One Gaussian per ``stride x stride`` pixel block, parameterised in the
   reference camera's screen space (``gs_dfd.fit.model``) so depth moves only
   the blur.
3. Minimise the 3DGS photometric loss (L1 + SSIM) between the real frames
   and the Gaussians rendered with each frame's thin lens (every Gaussian
   blurred by its own CoC), plus an edge-aware smoothness prior on inverse
   depth between grid neighbours, which decides depth where there is no
   texture and so no defocus signal. Each step renders a few frames spread
   over the sweep in one window of the frame, with only the Gaussians that
   can reach it: a step costs the same for 5 frames or 50, and for a small
   frame or a large one (which simply gets more steps).
4. Optionally refine the lens (``gs_dfd.fit.lens_calibration``): the
   aperture scale, per-frame focus, or the focus distances of a sweep whose
   distances were only spaced over a range (affine ambiguity of inverse
   depth: Suwajanakorn, Hernandez & Seitz, CVPR 2015).
5. Register the shots: each frame that shares the reference pose gets a
   learnable similarity (scale for focus breathing, rotation, translation;
   ``gs_dfd.fit.alignment``) applied to the Gaussians before rendering,
   started from a robust registration of the stack, so that breathing and
   shake are not read as blur.
6. Propagate: once, shortly before the end, one edge-aware linear solve
   carries inverse depth from the Gaussians whose blur the frames measure
   into those whose they cannot (``gs_dfd.fit.propagation``) and moves the
   latter along their rays; the last steps settle what moved at edges.

Ground truth (``depth_gt``, ``all_in_focus``) is never read here.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Optional

import numpy as np
import torch
from torch import Tensor
from scipy import ndimage

from gs_dfd.data.scene import Scene
from gs_dfd.errors import InputError
from gs_dfd.fit.alignment import FrameWarp, estimate_frame_warps, warp_displacement_px
from gs_dfd.fit.coarse_start import START_MAX_PX, FitStart
from gs_dfd.fit.dff import depth_from_focus
from gs_dfd.fit.exposure import FrameExposure
from gs_dfd.fit.frame_blur import FrameBlur
from gs_dfd.fit.lens_calibration import LensModel
from gs_dfd.fit.losses import clip_like_sensor, edge_aware_grid_smoothness, photometric_loss
from gs_dfd.fit.model import ScreenGaussians, block_mean, grid_gaussians
from gs_dfd.fit.propagation import propagate_inverse_depth
from gs_dfd.fit.row_adam import adam_step_rows
from gs_dfd.optics.thin_lens import DISK_SIGMA_PER_COC, LSQ_DISK_SIGMA_PER_COC
from gs_dfd.render.api import PinholeCamera, render_defocus
from gs_dfd.render.defocus import EPS2D
from gs_dfd.utils.fill import fill_nearest


@dataclass
class GaussianFitSettings:
    """How the Gaussians are fitted to a stack: everything that decides the result, in one place.

    Each field is also a ``gs-dfd fit`` flag of the same name (``lr_inv_depth`` is ``--lr-inv-depth``), and a
    checkpoint stores these values so that ``--resume`` can refuse a change that would alter the result.
    """

    iterations: Optional[int] = None
    """Optimisation steps; the learning rates decay over them, so more steps also means finer last steps.
    Default: 360 when a frame fits in one window (--tile-px), else 360 times the square root of the number of
    windows a frame holds: a larger frame needs more steps to visit every part, but not as many visits of each
    part as a small frame gets (docs/real_stacks.md, "Fit cost")."""
    tile_px: int = 384
    """(advanced) Largest side (px) of the window of a frame rendered per step: a larger frame is fitted one
    random window at a time, with only the Gaussians that can reach it, so a step's cost does not grow with the
    image."""
    frames_per_step: int = 5
    """Frames rendered per step: a longer stack is fitted a few frames at a time, one from each part of its
    sweep, so a step's cost does not grow with the number of frames."""
    coarse_blur_sigma_px: float = 1.5
    """(advanced) In a step, a frame is rendered at 1/2, 1/4 or 1/8 of its resolution (against the frame averaged
    over as many pixels) when every Gaussian that reaches the window is blurred by at least this Gaussian sigma in
    pixels of the coarser grid: a blur that wide holds nothing the finer grid would add, while its render cost
    grows with the square of its width in pixels (coarse to fine by blur, not by time)."""
    coarse_blur_quantile: float = 0.1
    """(advanced) Before --coarse-until-fraction of the steps, this share of the Gaussians that reach the window
    may be blurred less than --coarse-blur-sigma-px on the coarser grid: a noisy starting depth scatters a few
    Gaussians into every frame's focus, which would otherwise keep every frame at full resolution. 0 = none."""
    coarse_until_fraction: float = 0.75
    """(advanced) Fraction of the steps after which no Gaussian that reaches the window may be blurred less than
    --coarse-blur-sigma-px on a coarse grid, so that the last steps settle the finest detail."""
    max_coarse_factor: int = 8
    """(advanced) Coarsest such factor (a power of two); 1 = every frame at full resolution."""
    start_max_px: int = START_MAX_PX
    """(advanced) A stack whose frames' larger side exceeds this (px) is first fitted with every frame averaged over
    2x2, 4x4, ... pixel blocks, to at most this size, and the full-resolution fit starts from that fit's depth,
    registration, lens and exposure (gs_dfd.fit.coarse_start): a step's window and the smoothness prior reach a
    few Gaussians, too few to carry depth across a large textureless region of a large frame. 0 = off."""
    start_lr_inv_depth_ratio: float = 0.25
    """(advanced) The full-resolution fit that starts from such a coarse fit moves inverse depth with this fraction
    of --lr-inv-depth: it refines a depth already measured, and full steps add noise to it (docs/real_stacks.md)."""
    stride: int = 2
    """One Gaussian per stride x stride pixel block; 1 = one per pixel (slower, sharper depth edges)."""
    lr_inv_depth: float = 0.01
    """Adam learning rate of the Gaussians' inverse depth (1/m per step): the one coordinate that moves the blur."""
    lr_uv: float = 0.05
    """(advanced) Adam learning rate of the Gaussians' pixel positions (px per step)."""
    lr_size: float = 0.01
    """(advanced) Adam learning rate of the Gaussians' log sizes."""
    lr_quat: float = 0.005
    """(advanced) Adam learning rate of the Gaussians' rotations (quaternion components)."""
    lr_opacity: float = 0.05
    """(advanced) Adam learning rate of the Gaussians' opacity logits."""
    lr_color: float = 0.05
    """(advanced) Adam learning rate of the Gaussians' colour logits."""
    lr_lens: float = 0.002
    """(advanced) Adam learning rate of the lens corrections, log focus and aperture scales (--calibrate-lens)."""
    lr_final_ratio: float = 0.1
    """(advanced) Every learning rate decays exponentially to this fraction of its start over the run: large steps
    find the depth, small ones let it settle."""
    ssim_weight: float = 0.2
    """Weight of 1 - SSIM against L1 in the photometric loss (SSIM rewards matching local contrast, which is what
    defocus changes)."""
    smooth_weight: float = 0.02
    """Weight of the edge-aware inverse-depth smoothness prior between grid neighbours: it decides depth where there
    is no texture and so no defocus signal; 0 = off."""
    smooth_colour_sigma: float = 0.1
    """(advanced) Colour difference (0-1 scale) over which the smoothness prior fades between neighbours: depth
    edges usually sit on colour edges, so the prior does not smooth across them."""
    dff_window_px: int = 9
    """Window of the focus measure (pixels): the depth of (--method dff) and the Gaussians' starting depth."""
    init_depth_m: float | None = None
    """Starting depth (metres) when the stack has a single focus distance (aperture stacks), where the focus measure
    has no peak; default 1.25 x the focus distance."""
    calibrate_sweep: bool = False
    """Learn the focus distances of the frames between the sweep's nearest and farthest (those two are kept), in
    focus order: for sweeps whose distances were spaced over a range or assumed (gs-dfd import), which real focus
    steps do not follow exactly. gs-dfd fit sets it for such scenes (--focus-calibration auto)."""
    lr_focus_sweep: float = 0.02
    """(advanced) Adam learning rate of the sweep's focus parameters (--calibrate-sweep): logits of each focus
    step's share of the sweep, so a step of 0.02 changes a share by about 2%."""
    calibrate_lens: bool = False
    """Refine the aperture scale and, with two or more focus distances, each frame's focus distance (nominal lens
    values of real cameras are off; with one focus distance only the ratio to depth is observable)."""
    exposure_compensation: bool = True
    """Learn a per-frame gain and offset against frame 0: real stacks change brightness between shots, which the
    fit would otherwise explain with blur."""
    clipped_pixels: bool = True
    """A pixel recorded at the sensor's ceiling (or floor) only says the light reached at least (at most) that
    much: a render brighter (darker) than it there costs nothing. Without this, a frame shot brighter, whose
    highlights clip, shows less contrast there than its render, which the fit reads as blur (and a darker frame,
    which keeps that contrast, as the one in focus)."""
    lr_exposure: float = 0.01
    """(advanced) Adam learning rate of the per-frame exposure gain and offset."""
    frame_blur: bool = False
    """(experimental) Learn a per-frame blur floor (a variance added to every Gaussian's PSF in that frame,
    gs_dfd.fit.frame_blur) for shots softened as a whole (motion blur, a resampled stack). Off by default: on the
    validation stacks it did not help (docs/real_stacks.md)."""
    lr_frame_blur: float = 0.01
    """(advanced) Adam learning rate of the blur floors (--frame-blur; px of Gaussian sigma per step)."""
    align_frames: bool = True
    """Learn a per-frame similarity (scale, rotation, translation) of the frames that share frame 0's pose and that
    registration finds displaced by at least the smallest shift (--min-shift-px) somewhere in the image: real
    sweeps breathe (the scale changes with focus) and shots move between exposures, and an unregistered
    displacement reads as blur."""
    lr_align_px: float = 0.02
    """(advanced) Adam learning rate of the per-frame warps (px of displacement per step; scale and rotation are
    counted at the image's half diagonal)."""
    max_shift_px: float = 32.0
    """Largest translation between neighbouring shots (pixels) that the registration (--align-frames) searches
    for."""
    min_shift_px: float = 0.5
    """(advanced) Frames that registration finds displaced by less (pixels, anywhere in the image) are taken as
    registered and not moved: on registered stacks it still reads a fraction of a pixel, and learning that noise
    as a warp costs depth accuracy."""
    propagate_smoothness: float = 30.0
    """(advanced) Strength (lambda) of the one edge-aware solve that carries inverse depth from the Gaussians whose
    blur the frames measure into those they cannot (gs_dfd.fit.propagation); 0 = no propagation, the value that
    (--propagate off) sets, as auto does on a single-focus stack."""
    propagate_colour_sigma: float = 0.1
    """(advanced) Colour difference (0-1 scale) over which the propagation stops between neighbours, so depth
    flows along surfaces of one colour and not across their edges."""
    propagate_at_fraction: float = 5 / 6
    """(advanced) When the propagation runs, as a fraction of the steps (--iterations): late, so that the fit has
    measured what it can, yet early enough that the last steps let the photometric loss settle what moved at
    edges."""
    sigma_per_coc: float = LSQ_DISK_SIGMA_PER_COC
    """Blur model: Gaussian sigma (px) per CoC diameter (px). A real lens blurs with a disk; 0.25 matches the disk's
    second moment, but the least-squares Gaussian for a disk blur of natural images is wider, and a fit that
    renders too narrow a blur reads every blurred surface as more defocused than it is (docs/method.md: the fit's blur
    model)."""
    backend: Literal["auto", "cpu", "torch", "gsplat"] = "auto"
    """Renderer: auto = gsplat on CUDA, else the C++ cpu backend. Changes speed and float rounding only."""
    seed: int = 0
    """Random seed; the same seed gives the same result on CPU."""

    def check(self) -> None:
        """Refuse a value outside its setting's range, in one line naming the flag, before any work starts."""
        for name, low in (("iterations", 1), ("stride", 1), ("dff_window_px", 3), ("tile_px", 32),
                          ("frames_per_step", 1), ("max_coarse_factor", 1), ("start_max_px", 0)):
            if getattr(self, name) is not None and getattr(self, name) < low:
                raise InputError(None, f"must be >= {low} (got {getattr(self, name)})", setting_flag(name))
        if self.max_coarse_factor & (self.max_coarse_factor - 1):
            raise InputError(None, f"must be a power of two (got {self.max_coarse_factor})",
                             setting_flag("max_coarse_factor"))
        positive = ["coarse_blur_sigma_px", "start_lr_inv_depth_ratio", "sigma_per_coc", "lr_inv_depth", "lr_uv",
                    "lr_size", "lr_quat", "lr_opacity", "lr_color", "lr_lens", "lr_focus_sweep", "lr_exposure",
                    "lr_frame_blur", "lr_align_px", "smooth_colour_sigma", "propagate_colour_sigma"]
        if self.init_depth_m is not None:
            positive.append("init_depth_m")
        for name in positive:
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise InputError(None, f"must be a finite number > 0 (got {value})", setting_flag(name))
        for name in ("smooth_weight", "ssim_weight", "max_shift_px", "min_shift_px", "propagate_smoothness"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise InputError(None, f"must be a finite number >= 0 (got {value})", setting_flag(name))
        for name in ("ssim_weight", "propagate_at_fraction", "coarse_blur_quantile", "coarse_until_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise InputError(None, f"must be in [0, 1] (got {getattr(self, name)})", setting_flag(name))
        if not 0 < self.lr_final_ratio <= 1:
            raise InputError(None, f"must be in (0, 1] (got {self.lr_final_ratio})", setting_flag("lr_final_ratio"))


def setting_flag(name: str) -> str:
    """A setting as the user spells it: every field of :class:`GaussianFitSettings` is the ``gs-dfd fit`` flag of
    that name."""
    return "--" + name.replace("_", "-")


@dataclass
class FitState:
    """Everything a checkpoint holds."""

    model: ScreenGaussians
    lens: LensModel
    exposure: FrameExposure
    warp: FrameWarp
    frame_blur: FrameBlur
    optimizer: torch.optim.Optimizer
    grid_hw: tuple[int, int]
    pose_groups: list[tuple[np.ndarray, list[int]]]  # frames sharing a pose render together
    stride: int = 1  # pixels per Gaussian grid cell (each side)
    step: int = 0
    history: list[dict] = field(default_factory=list)
    init_confidence: np.ndarray | None = None  # [H, W] DFF confidence
    propagation: dict | None = None  # what propagate_depth did, once it ran
    sigma_per_coc: float = DISK_SIGMA_PER_COC  # the blur PSF's Gaussian sigma per CoC diameter


# A coarse render's window keeps at least this many pixels a side (the SSIM window is 11 px).
MIN_COARSE_WINDOW_PX = 32

# Steps of a fit whose frames fit in one window; larger frames get this many times the square root of the number of
# windows they hold.
BASE_ITERATIONS = 360


def window_size(settings: GaussianFitSettings, width: int, height: int) -> tuple[int, int]:
    """``(width, height)`` of the window of a frame rendered per step."""
    return min(width, settings.tile_px), min(height, settings.tile_px)


def total_steps(settings: GaussianFitSettings, width: int, height: int) -> int:
    """The fit's step count: ``--iterations``, or by default :data:`BASE_ITERATIONS` times the square root of the
    number of windows a frame holds."""
    if settings.iterations is not None:
        return settings.iterations
    tw, th = window_size(settings, width, height)
    return round(BASE_ITERATIONS * math.sqrt(max(1.0, width * height / (tw * th))))


def _pose_groups(scene: Scene) -> list[tuple[np.ndarray, list[int]]]:
    """Frames that share a pose render together (projected once)."""
    groups: list[tuple[np.ndarray, list[int]]] = []
    for i in range(len(scene.frames)):
        pose = scene.world_to_cam(i)
        for g_pose, ids in groups:
            if np.allclose(g_pose, pose, atol=1e-9):
                ids.append(i)
                break
        else:
            groups.append((pose, [i]))
    return groups


def initial_depth(frames: np.ndarray, scene: Scene, settings: GaussianFitSettings,
                  depth_prior_m: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inverse depth ``[H, W]``, colours ``[H, W, C]``, confidence ``[H, W]``) to start from.

    ``depth_prior_m`` ``[H, W]`` (e.g. the network's prediction) replaces the focus-measure or constant depth; it
    gives no confidence, so the smoothness prior acts everywhere at first.
    """
    focus = np.array([f.focus_distance_m for f in scene.frames])
    sharp = int(np.argmax([scene.f_number(i) for i in range(len(scene.frames))]))
    if depth_prior_m is not None:
        h, w = frames.shape[1:3]
        assert depth_prior_m.shape == (h, w), (depth_prior_m.shape, (h, w))
        inv = ndimage.median_filter(1.0 / np.clip(depth_prior_m, 1e-3, None), size=5, mode="reflect")
        return inv.astype(np.float32), frames[sharp], np.zeros((h, w), np.float32)
    if len(np.unique(focus)) >= 2:
        dff = depth_from_focus(frames, focus, settings.dff_window_px)
        inv = ndimage.median_filter(1.0 / dff.depth_m, size=5, mode="reflect")
        sharpest = np.argmax(dff.focus_measure, axis=0)  # [H, W]
        colours = np.take_along_axis(frames, sharpest[None, :, :, None], 0)[0]
        return inv.astype(np.float32), colours, dff.confidence
    depth0 = settings.init_depth_m or 1.25 * float(focus.max())
    # One focus distance: the least blurred frame (largest f-number) is the best colour guess.
    h, w = frames.shape[1:3]
    return np.full((h, w), 1.0 / depth0, np.float32), frames[sharp], np.zeros((h, w), np.float32)


def colours_in_focus(frames: np.ndarray, lens: LensModel, inv_depth: np.ndarray) -> np.ndarray:
    """``[H, W, C]``: each pixel's colour from the frame (of ``frames`` ``[F, H, W, C]``, in frame 0's grid) whose
    lens blurs its inverse depth ``inv_depth`` ``[H, W]`` least: the sharpest view of it the stack has."""
    with torch.no_grad():
        depth = torch.from_numpy(1.0 / np.clip(inv_depth, 1e-3, None)).reshape(-1)
        sharpest = lens.coc_px(depth, list(range(len(frames)))).argmin(dim=0).numpy().reshape(inv_depth.shape)
    return np.take_along_axis(frames, sharpest[None, :, :, None], 0)[0]


def build_state(scene: Scene, frames: np.ndarray, settings: GaussianFitSettings,
                depth_prior_m: np.ndarray | None = None, depth_prior_frame: int = 0,
                start: FitStart | None = None) -> FitState:
    """``depth_prior_m`` is in the pixel grid of frame ``depth_prior_frame`` (moved to frame 0's here). ``start``
    (a block-averaged fit of the same stack, :func:`gs_dfd.fit.coarse_start.fit_start`) gives the starting depth,
    confidence, warps, lens and exposure instead."""
    torch.manual_seed(settings.seed)
    pose_groups = _pose_groups(scene)
    same_pose = [i in pose_groups[0][1] for i in range(len(scene.frames))]  # frames sharing frame 0's pose
    cam = scene.camera
    center = (cam.cx, cam.cy)
    if start is not None:
        assert start.warps.shape == (len(frames), 4) and len(start.moved) == len(frames), start.warps.shape
        warps, moved = start.warps, list(start.moved)
    else:
        warps = (estimate_frame_warps(frames, same_pose, center, settings.max_shift_px) if settings.align_frames
                 else np.zeros((len(frames), 4)))
        displacement = warp_displacement_px(warps, center, cam.width, cam.height)
        moved = [i > 0 and same and displacement[i] >= settings.min_shift_px for i, same in enumerate(same_pose)]
    warp = FrameWarp(warps, moved, center, cam.width, cam.height)
    frames_ref = np.stack([warp.to_reference(f, i) for i, f in enumerate(frames)])  # in frame 0's grid
    lens = LensModel.from_scene(scene, settings.calibrate_lens, calibrate_sweep=settings.calibrate_sweep)
    if start is not None:
        lens.load_state_dict(start.lens)
        inv = start.inv_depth_at(cam.width, cam.height)
        colours, conf = colours_in_focus(frames_ref, lens, inv), start.confidence_at(cam.width, cam.height)
    else:
        if depth_prior_m is not None:
            depth_prior_m = warp.to_reference(depth_prior_m, depth_prior_frame)
        inv, colours, conf = initial_depth(frames_ref, scene, settings, depth_prior_m)
    model, grid_hw = grid_gaussians(inv, colours, scene.camera, settings.stride,
                                    ref_world_to_cam=scene.world_to_cam(0))
    groups = [
        {"params": [model.inv_depth], "name": "inv_depth",
         "lr": settings.lr_inv_depth * (settings.start_lr_inv_depth_ratio if start is not None else 1.0)},
        {"params": [model.uv], "lr": settings.lr_uv, "name": "uv"},
        {"params": [model.log_size_px], "lr": settings.lr_size, "name": "size"},
        {"params": [model.quats], "lr": settings.lr_quat, "name": "quats"},
        {"params": [model.opacity_logit], "lr": settings.lr_opacity, "name": "opacity"},
        {"params": [model.color_logit], "lr": settings.lr_color, "name": "color"},
    ]
    if lens.sweep_calibrated:
        groups.append({"params": lens.focus_parameters(), "lr": settings.lr_focus_sweep, "name": "focus_sweep"})
    lens_params = [p for p in lens.parameters() if p.requires_grad and not (lens.sweep_calibrated
                                                                          and p is lens.sweep_logits)]
    if lens_params:
        groups.append({"params": lens_params, "lr": settings.lr_lens, "name": "lens"})
    exposure = FrameExposure(len(scene.frames), frames.shape[-1], settings.exposure_compensation)
    if start is not None:
        exposure.load_state_dict(start.exposure)
    if settings.exposure_compensation and len(scene.frames) > 1:
        groups.append({"params": list(exposure.parameters()), "lr": settings.lr_exposure, "name": "exposure"})
    if warp.enabled:
        groups.append({"params": [warp.warp_px], "lr": settings.lr_align_px, "name": "alignment"})
    frame_blur = FrameBlur(len(scene.frames), settings.frame_blur)
    if start is not None and settings.frame_blur:
        with torch.no_grad():
            frame_blur.sigma_px.copy_(torch.from_numpy(start.frame_blur_sigma_px))
    if settings.frame_blur:
        groups.append({"params": [frame_blur.sigma_px], "lr": settings.lr_frame_blur, "name": "frame_blur"})
    for g in groups:
        g["initial_lr"] = g["lr"]  # the schedule's base, kept in checkpoints with the groups
    optimizer = torch.optim.Adam(groups, eps=1e-15)
    return FitState(model=model, lens=lens, exposure=exposure, warp=warp, frame_blur=frame_blur, optimizer=optimizer,
                    grid_hw=grid_hw, pose_groups=pose_groups, stride=settings.stride, init_confidence=conf,
                    sigma_per_coc=settings.sigma_per_coc)


# --------------------------------------------------------------------------- rendering

Window = tuple[int, int, int, int]  # x0, y0, width, height (px) of a frame's pixel grid


def _full_window(scene: Scene) -> Window:
    return 0, 0, scene.camera.width, scene.camera.height


def _camera(scene: Scene, pose: np.ndarray, window: Window, coarse: int = 1) -> PinholeCamera:
    """The camera of ``window`` of the frame, its pixels ``coarse`` x ``coarse`` blocks of the frame's (pixel
    centres at +0.5 in both grids, so a coarse pixel's centre is its block's)."""
    cam = scene.camera
    x0, y0, w, h = window
    assert w % coarse == 0 and h % coarse == 0, (window, coarse)
    return PinholeCamera(width=w // coarse, height=h // coarse, fx=cam.fx / coarse, fy=cam.fy / coarse,
                         cx=(cam.cx - x0) / coarse, cy=(cam.cy - y0) / coarse,
                         world_to_cam=torch.tensor(pose, dtype=torch.float32))


def coarse_coc_px(coc_px: Tensor, coarse: int, sigma_per_coc: float) -> Tensor:
    """CoC diameters (frame px) -> the diameters in a grid ``coarse`` times coarser whose blur also holds the
    averaging of a ``coarse`` x ``coarse`` block of frame pixels (variance (coarse^2 - 1) / 12 frame px^2, beyond
    the single pixel's that the full-resolution render leaves out too), so that a coarse render matches the
    block-averaged frame."""
    if coarse == 1:
        return coc_px
    box_var = (1.0 - 1.0 / coarse**2) / 12.0  # coarse px^2
    return torch.sqrt((coc_px / coarse) ** 2 + box_var / sigma_per_coc**2)


def downsample_blocks(images: Tensor, coarse: int) -> Tensor:
    """``[K, H, W, C]`` -> ``[K, H / coarse, W / coarse, C]``: the mean of each ``coarse`` x ``coarse`` block."""
    if coarse == 1:
        return images
    k, h, w, c = images.shape
    assert h % coarse == 0 and w % coarse == 0, (images.shape, coarse)
    return images.reshape(k, h // coarse, coarse, w // coarse, coarse, c).mean(dim=(2, 4))


def coarse_factors(state: "FitState", scene: Scene, frame_ids: list[int], window: Window, active: Tensor | None,
                   settings: GaussianFitSettings, quantile: float = 0.0) -> list[int]:
    """For each frame, the factor (a power of two) by which a step renders it coarser: the largest at which every
    Gaussian whose footprint reaches ``window`` (all but the ``quantile`` least blurred of them) is still blurred by
    ``settings.coarse_blur_sigma_px`` coarse pixels or more, that divides the window and leaves it at least
    :data:`MIN_COARSE_WINDOW_PX` a side."""
    x0, y0, w, h = window
    limit = 1
    while (limit * 2 <= settings.max_coarse_factor and w % (limit * 2) == 0 and h % (limit * 2) == 0
           and min(w, h) // (limit * 2) >= MIN_COARSE_WINDOW_PX):
        limit *= 2
    if limit == 1:
        return [1] * len(frame_ids)
    with torch.no_grad():
        ids = slice(None) if active is None else active
        uv = state.model.uv[ids].double()  # [M, 2] reference px
        size = torch.exp(state.model.log_size_px[ids, :2]).max(dim=1).values.double()  # [M]
        coc = state.lens.coc_px(state.model.depth_ref(active), frame_ids)  # only the rows that can reach
        sigma = (state.sigma_per_coc * state.frame_blur(coc, frame_ids, state.sigma_per_coc)).double()  # [K, M]
    corners = np.array([[x0, y0], [x0 + w, y0], [x0, y0 + h], [x0 + w, y0 + h]], np.float64)
    factors = []
    for k, i in enumerate(frame_ids):
        ref = state.warp.frame_to_reference_px(i, corners)
        reach = 3.0 * torch.sqrt(sigma[k] ** 2 + size**2) + 2.0 * state.stride + 2.0  # [M]
        near = ((uv[:, 0] >= ref[:, 0].min() - reach) & (uv[:, 0] <= ref[:, 0].max() + reach)
                & (uv[:, 1] >= ref[:, 1].min() - reach) & (uv[:, 1] <= ref[:, 1].max() + reach))
        reaching = sigma[k][near]
        least = (float(reaching.kthvalue(max(1, int(quantile * reaching.numel()))).values) if reaching.numel()
                 else math.inf)
        r = 1
        while r < limit and least / (2 * r) >= settings.coarse_blur_sigma_px:
            r *= 2
        factors.append(r)
    return factors


def _reach_px(state: FitState, frame_ids: list[int], coc_scale: float) -> float:
    """How far (px) a Gaussian's blurred footprint can reach from its centre in these frames: 3 sigma of its
    size and of the largest CoC's blur, plus the pixel positions' drift.

    The CoC grows with the distance in inverse depth from the focus, so its largest value over the model is that of
    its nearest or farthest Gaussian: two CoCs per frame, not one per Gaussian (this runs every step)."""
    with torch.no_grad():
        q = state.model.inv_depth
        extremes = state.model.depth_ref(torch.stack([q.argmin(), q.argmax()]))  # [2]
        coc = state.lens.coc_px(extremes, frame_ids) * coc_scale
        coc_max = float(state.frame_blur(coc, frame_ids, state.sigma_per_coc).max())
        size_max = float(torch.exp(state.model.log_size_px[:, :2].max()))
    return 3.0 * (state.sigma_per_coc * coc_max + size_max) + 2.0 * state.stride + 2.0


def active_gaussians(state: FitState, scene: Scene, frame_ids: list[int], window: Window,
                     coc_scale: float = 1.0) -> tuple[Tensor, tuple[int, int, int, int]] | None:
    """The Gaussians that can touch ``window`` of the listed frames: ``(ids [K], (row0, row1, col0, col1))`` of
    their block of the Gaussian grid, or None for all (the whole frame, or frames with other poses)."""
    x0, y0, w, h = window
    if (w, h) == (scene.camera.width, scene.camera.height) or len(state.pose_groups) > 1:
        return None
    corners = np.array([[x0, y0], [x0 + w, y0], [x0, y0 + h], [x0 + w, y0 + h]], np.float64)
    ref = np.concatenate([state.warp.frame_to_reference_px(i, corners) for i in frame_ids])
    reach = _reach_px(state, frame_ids, coc_scale)
    gh, gw = state.grid_hw
    s = state.stride
    c0, c1 = max(0, math.floor((ref[:, 0].min() - reach) / s)), min(gw, math.ceil((ref[:, 0].max() + reach) / s))
    r0, r1 = max(0, math.floor((ref[:, 1].min() - reach) / s)), min(gh, math.ceil((ref[:, 1].max() + reach) / s))
    if r1 - r0 >= gh and c1 - c0 >= gw:
        return None
    ids = (torch.arange(r0, r1)[:, None] * gw + torch.arange(c0, c1)[None, :]).reshape(-1)
    return ids, (r0, r1, c0, c1)


def render_frames(state: FitState, scene: Scene, backend: str, frame_ids: list[int] | None = None,
                  window: Window | None = None, coc_scale: float = 1.0, warped: bool = True,
                  active: Tensor | None = None, inv_depth_offset: float = 0.0,
                  coarse: int = 1, selected: dict[str, Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Render frames ``frame_ids`` (all: None) from the current Gaussians, in ``window`` of each frame's pixel
    grid (whole frames: None).

    Returns ``rgb`` [K, h, w, C] and ``alpha``/``depth`` [K, h, w, 1]. ``warped`` renders each frame where it
    recorded the scene (its similarity warp and exposure); ``warped=False`` renders every frame in the
    reference's grid and exposure. ``coc_scale = 0`` gives pinhole (all in focus) renders; ``active`` limits the
    render to those Gaussians (:func:`active_gaussians`); ``inv_depth_offset`` shifts every Gaussian along its ray
    (for the sensitivity map) without changing the model. ``coarse`` renders in a grid of ``coarse`` x ``coarse``
    pixel blocks (``[K, h / coarse, w / coarse, C]``), to be compared with the frames' block means
    (:func:`downsample_blocks`). ``selected`` holds the parameters of the rows ``active`` already gathered
    (:meth:`ScreenGaussians.select`; a fit step passes leaf copies, whose gradients its row-wise Adam step takes).
    """
    ids = list(range(len(scene.frames))) if frame_ids is None else list(frame_ids)
    window = window or _full_window(scene)
    model = state.model
    # One render per pose for the frames drawn where frame 0 is, one per warped frame.
    calls: list[tuple[np.ndarray, list[int], int | None]] = []
    for pose, members in state.pose_groups:
        still = [i for i in ids if i in members and not (warped and state.warp.moved(i))]
        if still:
            calls.append((pose, still, None))
        calls += [(pose, [i], i) for i in ids if i in members and warped and state.warp.moved(i)]
    parts: dict[int, dict[str, torch.Tensor]] = {}
    if inv_depth_offset:
        with torch.no_grad():
            model.inv_depth.add_(inv_depth_offset)
    try:
        if selected is None:
            selected = model.select(active)
        for pose, members, moved in calls:
            g = model.world(warp=state.warp.frame_params(moved) if moved is not None else None, selected=selected)
            z = (g.means @ torch.tensor(pose[:3, :3], dtype=g.means.dtype).T)[:, 2] + float(pose[2, 3])
            coc = state.lens.coc_px(z.clamp_min(1e-3), members) * coc_scale
            if coc_scale != 0:
                coc = state.frame_blur(coc, members, state.sigma_per_coc)
            coc = coarse_coc_px(coc, coarse, state.sigma_per_coc)
            out = render_defocus(g.means, g.quats, g.scales, g.opacities, g.colors,
                                 _camera(scene, pose, window, coarse), [], coc_px_override=coc, backend=backend,
                                 sigma_per_coc=state.sigma_per_coc, eps2d=EPS2D / coarse**2)
            # A focal stack looks at an opaque world: divide by the accumulated alpha so that blur
            # (which lowers each splat's opacity and so the composite's coverage) cannot darken
            # a surface; the expected colour is what a pixel of an opaque scene sees.
            rgb = out.rgb / out.alpha.clamp_min(1e-3)
            for k, i in enumerate(members):
                parts[i] = {"rgb": rgb[k], "alpha": out.alpha[k], "depth": out.depth[k]}
    finally:
        if inv_depth_offset:
            with torch.no_grad():
                model.inv_depth.sub_(inv_depth_offset)
    stacked = {k: torch.stack([parts[i][k] for i in ids]) for k in ("rgb", "alpha", "depth")}
    if warped and coc_scale != 0:  # pinhole renders stay in the Gaussians' (frame 0's) exposure
        stacked["rgb"] = state.exposure(stacked["rgb"], ids)
    return stacked


@torch.no_grad()
def render_frame_whole(state: FitState, scene: Scene, settings: GaussianFitSettings, frame: int,
                       warped: bool = True, inv_depth_offset: float = 0.0) -> Tensor:
    """Frame ``frame`` whole, ``[H, W, C]`` (``warped`` and ``inv_depth_offset`` as in :func:`render_frames`):
    rendered as coarse as its blur allows (:func:`coarse_factors`) and interpolated back to the full pixel grid,
    so that the outputs of a long, strongly blurred stack cost little more than its sharp frames."""
    cam = scene.camera
    window = _full_window(scene)
    (r,) = coarse_factors(state, scene, [frame], window, None, settings)
    rgb = render_frames(state, scene, settings.backend, [frame], window, warped=warped,
                        inv_depth_offset=inv_depth_offset, coarse=r)["rgb"]  # [1, h, w, C]
    if r > 1:  # pixel centres at +0.5 in both grids: align_corners=False
        rgb = torch.nn.functional.interpolate(rgb.permute(0, 3, 1, 2), size=(cam.height, cam.width),
                                              mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    return rgb[0]


def _lr_factor(step: int, total: int, final_ratio: float) -> float:
    """Exponential decay from 1 to ``final_ratio`` over the run."""
    return final_ratio ** (step / max(1, total - 1))


def _focus_order(scene: Scene) -> list[int]:
    """Frame ids from the nearest focus to the farthest (ties: by f-number, then id)."""
    return sorted(range(len(scene.frames)), key=lambda i: (scene.frames[i].focus_distance_m, scene.f_number(i), i))


def step_generator(seed: int, step: int) -> torch.Generator:
    """The random draws of one step (its frames and window) depend on the seed and the step only, so that a
    fit resumed after Ctrl-C in the middle of a step draws what an uninterrupted one does."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(step))


def step_frames(scene: Scene, k: int, gen: torch.Generator | None = None) -> list[int]:
    """The frames of one step: all when there are at most ``k``, else one drawn from each of ``k`` consecutive
    parts of the sweep, so that every step sees near and far focus."""
    n = len(scene.frames)
    if n <= k:
        return list(range(n))
    parts = np.array_split(np.array(_focus_order(scene)), k)
    return sorted(int(p[int(torch.randint(len(p), (), generator=gen))]) for p in parts)


def step_window(scene: Scene, settings: GaussianFitSettings, gen: torch.Generator | None = None) -> Window:
    """The window of one step: the whole frame when it fits, else a random one whose centre is uniform over the
    frame, pushed inside it, so that borders are visited about as often as the middle."""
    width, height = scene.camera.width, scene.camera.height
    tw, th = window_size(settings, width, height)
    if (tw, th) == (width, height):
        return 0, 0, width, height
    x0 = min(max(int(torch.randint(-(tw // 2), width - tw // 2 + 1, (), generator=gen)), 0), width - tw)
    y0 = min(max(int(torch.randint(-(th // 2), height - th // 2 + 1, (), generator=gen)), 0), height - th)
    return x0, y0, tw, th


_PER_GAUSSIAN = ("inv_depth", "uv", "log_size_px", "quats", "opacity_logit", "color_logit")


def _window_leaves(state: FitState, active: Tensor) -> dict[str, Tensor]:
    """The rows ``active`` of every per-Gaussian parameter, as leaf tensors of their own: a step's backward pass
    then fills gradients of the window's rows only, not of the whole model."""
    return {name: getattr(state.model, name).detach()[active].requires_grad_() for name in _PER_GAUSSIAN}


def _optimizer_step(state: FitState, active: Tensor | None, leaves: dict[str, Tensor] | None) -> None:
    """``optimizer.step()``, except that with a window (``active`` and its ``leaves``) the Gaussians are stepped
    on those rows only (:func:`gs_dfd.fit.row_adam.adam_step_rows`): a Gaussian that a step cannot see gets no
    gradient, and plain Adam would still move it on its momentum; the lens, exposure and warps step as usual."""
    if active is not None:
        assert leaves is not None
        for name in _PER_GAUSSIAN:
            if leaves[name].grad is not None:
                adam_step_rows(state.optimizer, getattr(state.model, name), active, leaves[name].grad)
    state.optimizer.step()  # the per-Gaussian parameters hold no gradient when stepped by rows above


def fit_gaussians(state: FitState, scene: Scene, frames: np.ndarray, settings: GaussianFitSettings,
                  on_step: Callable[[FitState, dict], None] | None = None) -> FitState:
    """Optimise from ``state.step`` to the fit's step count (:func:`total_steps`); ``on_step`` may save
    checkpoints.

    Each step renders a few frames (:func:`step_frames`) in one window (:func:`step_window`) with only the
    Gaussians that can reach it, so its cost depends on neither the stack's length nor the frame size. A
    KeyboardInterrupt propagates after the last completed step, with ``state`` consistent (the caller saves it).
    """
    target = torch.from_numpy(frames).float()  # [F, H, W, C]
    total = total_steps(settings, scene.camera.width, scene.camera.height)
    smooth_weight = None
    if settings.smooth_weight > 0:
        conf = torch.from_numpy(state.init_confidence if state.init_confidence is not None
                                else np.zeros(frames.shape[1:3], np.float32))
        block_conf = block_mean(conf, settings.stride).reshape(-1)
        smooth_weight = 1.0 - 0.5 * block_conf  # the prior matters most where the data says least
    propagate_step = round(total * settings.propagate_at_fraction)
    while state.step < total:
        if settings.propagate_smoothness > 0 and state.step == propagate_step:
            propagate_depth(state, scene, settings)
        t0 = time.perf_counter()
        factor = _lr_factor(state.step, total, settings.lr_final_ratio)
        for group in state.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        state.optimizer.zero_grad(set_to_none=True)
        gen = step_generator(settings.seed, state.step)
        ids = step_frames(scene, settings.frames_per_step, gen)
        window = step_window(scene, settings, gen)
        x0, y0, w, h = window
        picked = active_gaussians(state, scene, ids, window)
        active = None if picked is None else picked[0]
        leaves = None if active is None else _window_leaves(state, active)
        early = state.step < settings.coarse_until_fraction * total
        factors = coarse_factors(state, scene, ids, window, active, settings,
                                 settings.coarse_blur_quantile if early else 0.0)
        loss_photo, sq_err, n_px = torch.zeros(()), 0.0, 0
        for r in sorted(set(factors)):  # frames blurred alike render together, each at its resolution
            members = [i for i, f in zip(ids, factors) if f == r]
            rgb = render_frames(state, scene, settings.backend, members, window, active=active, coarse=r,
                                selected=leaves)["rgb"]
            tgt = downsample_blocks(target[members, y0:y0 + h, x0:x0 + w], r)
            if state.warp.enabled:  # pixels that show what frame 0 does not see: nothing to fit there
                seen = torch.stack([state.warp.valid_mask(i, x0, y0, w, h) for i in members])[..., None]
                seen = downsample_blocks(seen.float(), r) > 0.999  # a coarse pixel counts if all of its block does
                rgb = torch.where(seen, rgb, tgt)
            if settings.clipped_pixels:
                rgb = clip_like_sensor(rgb, tgt)
            loss_photo = loss_photo + len(members) / len(ids) * photometric_loss(rgb, tgt, settings.ssim_weight)
            with torch.no_grad():
                sq_err += float(((rgb - tgt) ** 2).sum())
                n_px += rgb.numel()
        loss = loss_photo
        loss_smooth = torch.zeros(())
        if smooth_weight is not None:
            if picked is None:
                colours = torch.sigmoid(state.model.color_logit)
                loss_smooth = edge_aware_grid_smoothness(state.model.inv_depth, colours, state.grid_hw,
                                                         settings.smooth_colour_sigma, smooth_weight)
            else:  # the window's rows are a block of the grid, in row-major order (active_gaussians)
                r0, r1, c0, c1 = picked[1]
                loss_smooth = edge_aware_grid_smoothness(leaves["inv_depth"], torch.sigmoid(leaves["color_logit"]),
                                                         (r1 - r0, c1 - c0), settings.smooth_colour_sigma,
                                                         smooth_weight[active])
            loss = loss + settings.smooth_weight * loss_smooth
        loss.backward()
        _optimizer_step(state, active, leaves)
        mse = sq_err / n_px
        record = {"step": state.step, "loss": float(loss.detach()), "photometric": float(loss_photo.detach()),
                  "smooth": float(loss_smooth.detach()), "psnr": -10 * math.log10(max(mse, 1e-12)),
                  "seconds": time.perf_counter() - t0, "coarse": factors}
        state.history.append(record)
        state.step += 1
        if on_step is not None:
            on_step(state, record)
    return state


# At most this many frames, spread over the sweep, measure the depth sensitivity (it is an average over frames).
SENSITIVITY_FRAMES = 8


def depth_sensitivity(state: FitState, scene: Scene, settings: GaussianFitSettings,
                      delta_inv_m: float = 0.05) -> np.ndarray:
    """How much the frames change per unit inverse depth at each pixel of frame 0's grid: ``[H, W]``.

    Depth from defocus is only well posed where moving the surface changes the images (texture); this measures
    that directly by re-rendering (in the reference's grid, up to :data:`SENSITIVITY_FRAMES` frames spread over
    the sweep) with every Gaussian shifted along its ray by +-delta; strongly blurred frames are rendered coarse
    (:func:`render_frame_whole`).
    """
    order = _focus_order(scene)
    picks = sorted({order[round(k)] for k in np.linspace(0, len(order) - 1, min(len(order), SENSITIVITY_FRAMES))})
    total = None
    with torch.no_grad():
        for i in picks:  # one frame at a time: memory stays that of one frame on large stacks
            plus = render_frame_whole(state, scene, settings, i, warped=False, inv_depth_offset=delta_inv_m)
            minus = render_frame_whole(state, scene, settings, i, warped=False, inv_depth_offset=-delta_inv_m)
            diff = (plus - minus).abs().sum(-1)
            total = diff if total is None else total + diff
    return (total / len(picks) / (2 * delta_inv_m)).numpy()


# Depth sensitivity (image units per 1/m of inverse depth, summed over channels) at which confidence is one half.
SENSITIVITY_HALF_CONFIDENCE = 0.02


def depth_confidence(sensitivity: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``[H, W]`` in [0, 1] from :func:`depth_sensitivity` and the sharp render's alpha ``[H, W]``: how well the
    frames pin the depth at each pixel, zero where no Gaussian covers it."""
    return (sensitivity / (sensitivity + SENSITIVITY_HALF_CONFIDENCE) * np.clip(alpha, 0, 1)).astype(np.float32)


def fitted_maps(state: FitState, scene: Scene, settings: GaussianFitSettings
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What a fit measured, in frame 0's grid: (depth ``[H, W]`` float32 metres, filled from the nearest covered
    pixel where the sharp render's alpha is at most 1/2; all-in-focus image ``[H, W, C]`` in [0, 1]; confidence
    ``[H, W]``, :func:`depth_confidence`)."""
    with torch.no_grad():
        sharp = render_frames(state, scene, settings.backend, [0], coc_scale=0.0)
    alpha = sharp["alpha"][0, ..., 0].numpy()
    depth = sharp["depth"][0, ..., 0].numpy()
    if (alpha > 0.5).any():
        depth = fill_nearest(depth, alpha > 0.5)
    aif = sharp["rgb"][0].clamp(0, 1).numpy()
    return depth.astype(np.float32), aif, depth_confidence(depth_sensitivity(state, scene, settings), alpha)


def propagate_depth(state: FitState, scene: Scene, settings: GaussianFitSettings) -> dict:
    """Move each Gaussian along its ray to the edge-aware propagation of the fitted inverse depth
    (:func:`gs_dfd.fit.propagation.propagate_inverse_depth` on the Gaussian grid, guided by the Gaussians'
    colours). Each Gaussian's data weight is the photometric loss's curvature in its inverse depth, in the
    Gauss-Newton sense: the squared depth sensitivity of its pixels (in units of
    ``SENSITIVITY_HALF_CONFIDENCE``, times coverage), averaged over its block. Where the frames measure depth it
    hardly moves; where they cannot, it takes the depth of its surface. Sets and returns ``state.propagation``.

    Why the curvature: it is what the photometric loss itself says about each Gaussian's depth, so the solve
    trades the data against the prior on the loss's own scale. A steeper function of confidence (a first choice)
    weighs half-confident Gaussians far less than their curvature does and smoothed real depth edges of textured
    stacks. docs/results_history.md gives the measurements behind the weight and lambda.
    """
    gh, gw = state.grid_hw
    assert state.model.n == gh * gw, (state.model.n, state.grid_hw)
    with torch.no_grad():
        alpha = render_frames(state, scene, settings.backend, [0], coc_scale=0.0)["alpha"][0, ..., 0].clamp(0, 1).numpy()
    sensitivity = depth_sensitivity(state, scene, settings)
    curvature = (sensitivity / SENSITIVITY_HALF_CONFIDENCE * alpha) ** 2
    block_weight = block_mean(curvature, settings.stride)
    assert block_weight.shape == (gh, gw), (block_weight.shape, state.grid_hw)
    with torch.no_grad():
        q = state.model.inv_depth.numpy().reshape(gh, gw).copy()
        guide = torch.sigmoid(state.model.color_logit).numpy().reshape(gh, gw, -1)
        new_q = propagate_inverse_depth(q, block_weight, guide, settings.propagate_smoothness,
                                        settings.propagate_colour_sigma)
        state.model.inv_depth.copy_(torch.from_numpy(new_q.reshape(-1)))
    change = np.abs(new_q / np.clip(q, 1e-6, None) - 1.0)
    state.propagation = {"step": state.step, "moved_over_10_percent": float(np.mean(change > 0.1))}
    return state.propagation


CHECKPOINT_FORMAT = "gs_dfd.fit_checkpoint/2"  # /2: per-frame similarity warps (/1: translations)
# Settings that may differ on --resume: the step count (resume continues up to a new --iterations) and the
# renderer, which changes speed and float rounding only.
RESUME_FREE_SETTINGS = frozenset({"iterations", "backend"})
# What a fit ran with before a setting existed, where that differs from the setting's default now.
SETTINGS_BEFORE_THEY_EXISTED = {"start_max_px": 0, "clipped_pixels": False}


def save_checkpoint(path: Path, state: FitState, settings: GaussianFitSettings) -> None:
    """Tensors and plain values only, so that :func:`load_checkpoint` reads it with ``weights_only=True``."""
    from gs_dfd.models.checkpoint_io import to_plain
    from gs_dfd.utils.atomic import write_file_atomic

    conf = state.init_confidence
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model": state.model.state_dict(),
        "lens": state.lens.state_dict(),
        "exposure": state.exposure.state_dict(),
        "warp": state.warp.state_dict(),
        "frame_blur": state.frame_blur.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "grid_hw": [int(v) for v in state.grid_hw],
        "step": int(state.step),
        "history": to_plain(state.history, "history"),
        "init_confidence": None if conf is None else torch.from_numpy(np.ascontiguousarray(conf, np.float32)),
        "propagation": to_plain(state.propagation, "propagation"),
        "settings": to_plain(dataclasses.asdict(settings), "settings"),
        "torch_rng": torch.get_rng_state(),
    }
    write_file_atomic(path, lambda p: torch.save(payload, p))


def _setting_name(name: str) -> str:
    """A setting as the user spells it in a refusal; ``--propagate`` also sets ``propagate_smoothness``."""
    return setting_flag(name) + (" (or --propagate)" if name == "propagate_smoothness" else "")


def _shown(value: object) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def check_resume_settings(payload_settings: dict, settings: GaussianFitSettings, path: Path | None = None,
                          field: str = "--resume") -> None:
    """Refuse to resume a fit under settings that change its result, naming each (as its flag) with both
    values. ``iterations`` and ``backend`` may differ (:data:`RESUME_FREE_SETTINGS`); a setting the checkpoint
    lacks (saved before it existed) counts as what that fit ran with: its default, or
    :data:`SETTINGS_BEFORE_THEY_EXISTED`."""
    defaults = dataclasses.replace(GaussianFitSettings(), **SETTINGS_BEFORE_THEY_EXISTED)
    changed = []
    for name, value in settings.__dict__.items():
        if name in RESUME_FREE_SETTINGS:
            continue
        old = payload_settings.get(name, getattr(defaults, name, None))
        if old != value:
            changed.append(f"{_setting_name(name)} {_shown(old)} -> {_shown(value)}")
    if changed:
        raise InputError(path, "settings differ from the checkpoint's: " + ", ".join(changed)
                         + " (resume with the same settings, or start afresh)", field)


def load_checkpoint(path: Path, state: FitState, settings: GaussianFitSettings | None = None,
                    field: str = "--resume") -> FitState:
    """Restore a state built with the same scene and settings (shapes must match), reading the file without
    running code (``weights_only=True``). With ``settings``, refuse a checkpoint saved under settings that change
    the result (:func:`check_resume_settings`). Every problem is one-line :class:`InputError`."""
    from gs_dfd.models.checkpoint_io import require, require_state_dict, safe_load

    payload = safe_load(path, field, "fit checkpoint")
    if isinstance(payload, dict) and str(payload.get("format", "")).startswith("gs_dfd.fit_checkpoint/") \
            and payload.get("format") != CHECKPOINT_FORMAT:
        raise InputError(path, f"was written by another gs-dfd version ({payload.get('format')}, this one reads "
                               f"{CHECKPOINT_FORMAT}): start the fit afresh", "format")
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise InputError(path, f"not a gs_dfd fit checkpoint (expected format {CHECKPOINT_FORMAT})", "format")
    what = "fit checkpoint"
    modules = {key: require_state_dict(path, payload, key, what) for key in ("model", "lens", "exposure")}
    modules["warp"] = require_state_dict(path, payload, "warp", what)
    modules["frame_blur"] = require_state_dict(path, payload, "frame_blur", what)
    optimizer = require(path, payload, "optimizer", dict, what)
    grid_hw = require(path, payload, "grid_hw", (list, tuple), what)
    step = require(path, payload, "step", int, what)
    history = require(path, payload, "history", list, what)
    conf = require(path, payload, "init_confidence", torch.Tensor, what, optional=True)
    propagation = require(path, payload, "propagation", dict, what, optional=True)
    saved_settings = require(path, payload, "settings", dict, what)
    rng = require(path, payload, "torch_rng", torch.Tensor, what)
    if step < 0:
        raise InputError(path, f"must be >= 0 (got {step})", "step")
    if not all(isinstance(record, dict) for record in history):
        raise InputError(path, "must be a list of per-step records (dicts)", "history")
    if settings is not None:
        check_resume_settings(saved_settings, settings, path, field)
    if tuple(grid_hw) != tuple(state.grid_hw):
        raise InputError(path, f"holds a {tuple(grid_hw)} grid of Gaussians, this scene and --stride make "
                               f"{tuple(state.grid_hw)}", "grid_hw")
    try:
        for key, module in (("model", state.model), ("lens", state.lens), ("exposure", state.exposure),
                            ("warp", state.warp), ("frame_blur", state.frame_blur)):
            if key in modules:
                module.load_state_dict(modules[key])
        state.optimizer.load_state_dict(optimizer)
        torch.set_rng_state(rng)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
        first = (str(exc).splitlines() or [""])[0][:120]
        raise InputError(path, f"does not fit this scene and settings ({first})", field) from None
    state.propagation = propagation
    state.step = step
    state.history = history
    state.init_confidence = None if conf is None else conf.numpy().astype(np.float32)
    return state
