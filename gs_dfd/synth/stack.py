"""From an all-in-focus image and its depth to a ``gs_dfd.scene/1`` focal stack."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import imageio.v3 as iio
import numpy as np

from gs_dfd.data.maps import load_npy
from gs_dfd.data.scene import Camera, Frame, Scene, write_scene
from gs_dfd.errors import InputError
from gs_dfd.optics.presets import CameraPreset
from gs_dfd.utils.fill import fill_nearest
from gs_dfd.synth.layered import add_sensor_noise, render_focal_stack


@dataclass(frozen=True)
class StackSpec:
    """What to synthesise: the camera preset and the frames' lens settings."""

    preset: CameraPreset
    focus_distances_m: tuple[float, ...]
    f_numbers: tuple[float, ...]  # every focus distance is shot at every f-number
    noise_std: float = 0.0
    seed: int = 0
    bit_depth: int = 8
    depth_format: str = "npy"
    max_layer_step_px: float = 0.25

    @classmethod
    def from_preset(cls, preset: CameraPreset, focus_distances_m: Sequence[float] | None = None,
                    f_numbers: Sequence[float] | None = None, **kw) -> "StackSpec":
        focus = tuple(focus_distances_m) if focus_distances_m else preset.focus_distances_m
        numbers = tuple(f_numbers) if f_numbers else (preset.f_number,)
        for s in focus:
            if not (np.isfinite(s) and s > preset.focal_length_m):
                raise InputError(None, f"focus distance {s:g} m must be greater than the focal length "
                                       f"{preset.focal_length_m:g} m of camera '{preset.name}'", "--focus-distances")
        for n in numbers:
            if not (np.isfinite(n) and n > 0):
                raise InputError(None, f"f-number {n:g} must be > 0", "--f-numbers")
        return cls(preset=preset, focus_distances_m=focus, f_numbers=numbers, **kw)

    def camera(self, width: int, height: int) -> Camera:
        return Camera(width=width, height=height, **self.preset.intrinsics(width, height),
                      focal_length_m=self.preset.focal_length_m, f_number=self.preset.f_number,
                      pixel_pitch_m=self.preset.pixel_pitch_at(width))

    def frames(self) -> list[Frame]:
        out = []
        for n in self.f_numbers:
            for s in self.focus_distances_m:
                out.append(Frame(image=f"frames/{len(out):03d}.png", focus_distance_m=float(s),
                                 f_number=None if n == self.preset.f_number else float(n)))
        return out


def fill_depth_holes(depth_m: np.ndarray) -> np.ndarray:
    """Give every invalid pixel (0 / non-finite) the depth of its nearest valid pixel."""
    valid = np.isfinite(depth_m) & (depth_m > 0)
    if not valid.any():
        raise ValueError("depth map has no valid pixel")
    return fill_nearest(depth_m, valid).astype(np.float32)


def read_depth_input(path: Path, scale: float, kind: str = "depth",
                     disparity_depth_range_m: tuple[float, float] | None = None,
                     baseline_focal_m_px: float | None = None) -> np.ndarray:
    """Read a depth or disparity map and return metric depth ``[H, W]``, 0 = unknown.

    ``kind="depth"``: depth = value x scale metres. ``kind="disparity"``:
    disparity = value x scale pixels (Middlebury: 1/4 or 1/8 or 1/16), then
    depth = baseline_focal / disparity, or, with ``disparity_depth_range_m``,
    inverse depth mapped affinely from the valid disparities onto
    [1/far, 1/near] (disparity has no metric calibration in those sets).
    """
    field = "--depth"
    if not path.is_file():
        raise InputError(path, "depth file not found", field)
    try:
        raw = load_npy(path, field, "depth") if path.suffix.lower() == ".npy" else np.asarray(iio.imread(path, plugin="pillow"))
    except InputError:
        raise
    except Exception as exc:
        raise InputError(path, f"cannot read depth ({type(exc).__name__})", field) from None
    if raw.ndim == 3 and raw.shape[2] in (1, 3, 4) and np.all(raw[..., :1] == raw[..., : min(raw.shape[2], 3)]):
        raw = raw[..., 0]
    if raw.ndim != 2:
        raise InputError(path, f"must be a single-channel H x W map (got shape {raw.shape})", field)
    if not (np.issubdtype(raw.dtype, np.floating) or np.issubdtype(raw.dtype, np.integer)):
        raise InputError(path, f"must hold numbers (got dtype {raw.dtype})", field)
    values = raw.astype(np.float64)
    if np.isnan(values).any():
        raise InputError(path, f"NaN depth values ({int(np.isnan(values).sum())} pixels)", field)
    if (values < 0).any():
        raise InputError(path, f"negative depth values ({int((values < 0).sum())} pixels)", field)
    if not np.isfinite(values).all():
        raise InputError(path, "infinite depth values", field)
    if not scale > 0:
        raise InputError(None, f"must be > 0 (got {scale})", "--depth-scale")
    values = values * scale
    valid = values > 0
    if not valid.any():
        raise InputError(path, "no valid (non-zero) depth pixel", field)
    if kind == "depth":
        depth = np.where(valid, values, 0.0)
    elif kind == "disparity":
        if disparity_depth_range_m is not None:
            near, far = disparity_depth_range_m
            if not 0 < near < far:
                raise InputError(None, f"need 0 < near < far (got {near}, {far})", "--disparity-depth-range-m")
            dmin, dmax = values[valid].min(), values[valid].max()
            t = (values - dmin) / max(dmax - dmin, 1e-12)
            inv = 1.0 / far + t * (1.0 / near - 1.0 / far)
            depth = np.where(valid, 1.0 / inv, 0.0)
        elif baseline_focal_m_px is not None and baseline_focal_m_px > 0:
            depth = np.where(valid, baseline_focal_m_px / np.where(valid, values, 1.0), 0.0)
        else:
            raise InputError(None, "disparity input needs --disparity-depth-range-m or --baseline-focal-m-px",
                             "--depth-kind")
    else:
        raise InputError(None, f"unknown depth kind {kind!r} (depth or disparity)", "--depth-kind")
    return depth.astype(np.float32)


def synthesize_scene(out_dir: Path, aif: np.ndarray, depth_gt_m: np.ndarray, spec: StackSpec,
                     progress: bool = False) -> Scene:
    """Render the focal stack of ``aif`` / ``depth_gt_m`` and write the scene into ``out_dir``.

    aif: ``[H, W, C]`` in [0, 1]; depth_gt_m: ``[H, W]`` metres with 0 where
    unknown (holes are filled by the nearest valid depth for rendering and
    stay 0 in the stored ground truth).
    """
    assert aif.ndim == 3 and depth_gt_m.shape == aif.shape[:2], (aif.shape, depth_gt_m.shape)
    height, width = depth_gt_m.shape
    camera = spec.camera(width, height)
    frames = spec.frames()
    lenses = [camera.lens(f.focus_distance_m, f.f_number) for f in frames]
    depth_render = fill_depth_holes(depth_gt_m)
    stack = render_focal_stack(aif.astype(np.float32), depth_render, lenses, max_layer_step_px=spec.max_layer_step_px,
                               progress=progress)
    if spec.noise_std > 0:
        stack = add_sensor_noise(stack, spec.noise_std, np.random.default_rng(spec.seed))
    return write_scene(out_dir, camera, frames, stack, depth_gt_m=depth_gt_m, all_in_focus=aif,
                       depth_format=spec.depth_format, bit_depth=spec.bit_depth)
