"""Coarse start: a large stack is first fitted block-averaged, and the full-resolution fit starts from that fit.

A fit step sees one window of a large frame, and its smoothness prior links grid neighbours only, so depth travels
across a textureless region a few Gaussians per step: on a 1920x1080 stack a uniform quarter of the frame kept the
wrong depth to the end, where the same stack at 480x270 came out right. The classical remedy is a pyramid: fit the
stack with every frame averaged over ``factor x factor`` pixel blocks (the camera's pixels ``factor`` times larger,
so every CoC in pixels ``factor`` times smaller), where a window holds most of the frame, then start the full
resolution from its depth, and from its registration, lens and exposure, which do not depend on the pixel size.

What the full-resolution fit takes (:class:`FitStart`): inverse depth and confidence in frame 0's grid (block
resolution, interpolated up), each frame's warp (shifts scaled to full-resolution pixels) and whether it moves, the
lens and exposure parameters, and the per-frame blur floors (scaled).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from gs_dfd.data.scene import Camera, Scene
from gs_dfd.errors import InputError
from gs_dfd.fit.model import block_mean

if TYPE_CHECKING:  # gaussian_fit imports this module
    from gs_dfd.fit.gaussian_fit import GaussianFitSettings

# A frame whose larger side exceeds this (pixels) by default starts from a block-averaged fit (--start-max-px).
START_MAX_PX = 512

START_FORMAT = "gs_dfd.fit_start/1"


def start_factor(start_max_px: int, width: int, height: int) -> int:
    """The smallest power of two that brings the frame's larger side to at most ``start_max_px`` (1: no coarse
    start; also when ``start_max_px`` is 0)."""
    if start_max_px <= 0:
        return 1
    factor = 1
    while max(width, height) / factor > start_max_px:
        factor *= 2
    return factor


def block_averaged_scene(scene: Scene, frames: np.ndarray, factor: int) -> tuple[Scene, np.ndarray]:
    """``scene`` with pixels ``factor`` times larger (intrinsics divided, pixel pitch multiplied, the ragged last
    rows and columns dropped) and ``frames`` ``[F, H, W, C]`` averaged over ``factor x factor`` blocks. Pixel
    centres sit at +0.5 in both grids, so a block's centre is its coarse pixel's."""
    cam = scene.camera
    w, h = cam.width // factor, cam.height // factor
    assert min(w, h) >= 1, (cam.width, cam.height, factor)
    blocks = block_mean(np.moveaxis(frames, 0, 2), factor)  # [h, w, F, C]: the blocks of every frame at once
    blocks = np.moveaxis(blocks, 2, 0)
    coarse_cam = Camera(width=w, height=h, fx=cam.fx / factor, fy=cam.fy / factor, cx=cam.cx / factor,
                        cy=cam.cy / factor, focal_length_m=cam.focal_length_m, f_number=cam.f_number,
                        pixel_pitch_m=cam.pixel_pitch_m * factor)
    coarse = dataclasses.replace(scene, camera=coarse_cam, depth_gt=None, all_in_focus=None, warnings=[])
    return coarse, blocks.astype(np.float32)


def upsample_map(values: np.ndarray, factor: int, width: int, height: int) -> np.ndarray:
    """``[h, w]`` map of a grid ``factor`` times coarser -> ``[height, width]``, bilinear between block centres
    (the ragged border beyond ``w * factor`` repeats the last column/row)."""
    t = torch.from_numpy(np.ascontiguousarray(values, np.float32))[None, None]
    up = torch.nn.functional.interpolate(t, scale_factor=factor, mode="bilinear", align_corners=False)[0, 0]
    up = torch.nn.functional.pad(up[None], (0, width - up.shape[1], 0, height - up.shape[0]), mode="replicate")[0]
    return up.numpy()


@dataclass
class FitStart:
    """What a block-averaged fit hands the full-resolution fit (see the module docstring)."""

    factor: int
    inv_depth: np.ndarray  # [h, w] 1/m, frame 0's grid at block resolution
    confidence: np.ndarray  # [h, w] in [0, 1]
    warps: np.ndarray  # [F, 4] (log_scale, angle_rad, tx_px, ty_px), shifts in full-resolution pixels
    moved: list[bool]  # [F] frames whose warp the fit learns
    lens: dict  # LensModel.state_dict() (resolution-free: log scales, sweep logits)
    exposure: dict  # FrameExposure.state_dict()
    frame_blur_sigma_px: np.ndarray  # [F] blur floors in full-resolution pixels
    steps: int = 0
    seconds: float = 0.0

    def inv_depth_at(self, width: int, height: int) -> np.ndarray:
        return upsample_map(self.inv_depth, self.factor, width, height)

    def confidence_at(self, width: int, height: int) -> np.ndarray:
        return np.clip(upsample_map(self.confidence, self.factor, width, height), 0.0, 1.0)

    def report(self) -> dict:
        h, w = self.inv_depth.shape
        return {"factor": self.factor, "size": [w, h], "steps": self.steps, "seconds": round(self.seconds, 2)}

    def save(self, path: Path) -> None:
        """Tensors and plain values only (read back with ``weights_only=True``)."""
        from gs_dfd.utils.atomic import write_file_atomic

        payload = {"format": START_FORMAT, "factor": self.factor, "steps": self.steps, "seconds": self.seconds,
                   "inv_depth": torch.from_numpy(self.inv_depth), "confidence": torch.from_numpy(self.confidence),
                   "warps": torch.from_numpy(self.warps), "moved": [bool(m) for m in self.moved],
                   "lens": self.lens, "exposure": self.exposure,
                   "frame_blur_sigma_px": torch.from_numpy(self.frame_blur_sigma_px)}
        write_file_atomic(path, lambda p: torch.save(payload, p))

    @classmethod
    def load(cls, path: Path, field: str = "--resume") -> "FitStart":
        from gs_dfd.models.checkpoint_io import safe_load

        payload = safe_load(path, field, "coarse start")
        if not isinstance(payload, dict) or payload.get("format") != START_FORMAT:
            raise InputError(path, f"not a gs_dfd coarse start (expected format {START_FORMAT})", "format")
        try:
            return cls(factor=int(payload["factor"]), inv_depth=payload["inv_depth"].numpy(),
                       confidence=payload["confidence"].numpy(), warps=payload["warps"].numpy(),
                       moved=[bool(m) for m in payload["moved"]], lens=dict(payload["lens"]),
                       exposure=dict(payload["exposure"]),
                       frame_blur_sigma_px=payload["frame_blur_sigma_px"].numpy(), steps=int(payload["steps"]),
                       seconds=float(payload["seconds"]))
        except (KeyError, AttributeError, TypeError, ValueError) as exc:
            raise InputError(path, f"is not a complete coarse start ({type(exc).__name__}: {exc})", "format") from None


def coarse_settings(settings: "GaussianFitSettings", width: int, height: int) -> "GaussianFitSettings":
    """The block-averaged fit's settings: the same, except its step count (the default rule at its size, or
    ``--iterations`` scaled by the ratio of the two sizes' default counts)."""
    from gs_dfd.fit.gaussian_fit import total_steps

    factor = start_factor(settings.start_max_px, width, height)
    cw, ch = width // factor, height // factor
    default = dataclasses.replace(settings, iterations=None)
    steps = total_steps(default, cw, ch)
    if settings.iterations is not None:
        steps = max(1, round(settings.iterations * steps / total_steps(default, width, height)))
    return dataclasses.replace(settings, iterations=steps)


def fit_start(scene: Scene, frames: np.ndarray, settings: "GaussianFitSettings",
              on_step: Callable | None = None) -> FitStart:
    """Fit the stack block-averaged (:func:`block_averaged_scene`, by :func:`start_factor`) and return what the
    full-resolution fit starts from."""
    from gs_dfd.fit.gaussian_fit import build_state, fit_gaussians, fitted_maps

    t0 = time.perf_counter()
    cam = scene.camera
    factor = start_factor(settings.start_max_px, cam.width, cam.height)
    assert factor > 1, (cam.width, cam.height, settings.start_max_px)
    small, small_frames = block_averaged_scene(scene, frames, factor)
    small_settings = dataclasses.replace(coarse_settings(settings, cam.width, cam.height), start_max_px=0)
    state = build_state(small, small_frames, small_settings)
    fit_gaussians(state, small, small_frames, small_settings, on_step=on_step)
    depth, _, confidence = fitted_maps(state, small, small_settings)
    with torch.no_grad():
        warps = state.warp.params().double().numpy().copy()
        warps[:, 2:] *= factor
        moved = [state.warp.moved(i) for i in range(len(frames))]
        blur = torch.sqrt(state.frame_blur.variance_px2()).double().numpy() * factor
    return FitStart(factor=factor, inv_depth=(1.0 / np.clip(depth, 1e-3, None)).astype(np.float32),
                    confidence=confidence.astype(np.float32), warps=warps, moved=moved,
                    lens={k: v.clone() for k, v in state.lens.state_dict().items()},
                    exposure={k: v.clone() for k, v in state.exposure.state_dict().items()},
                    frame_blur_sigma_px=blur.astype(np.float32), steps=small_settings.iterations,
                    seconds=time.perf_counter() - t0)

