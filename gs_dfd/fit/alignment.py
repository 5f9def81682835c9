"""Per-frame similarity warp in the per-scene fit: the shots of a real sweep are not registered.

A real focus sweep breathes (the lens-to-sensor distance changes with focus, so the image scale does) and a
hand-held or rail shot shakes (rotation, translation). Left alone, the fit explains every such displacement as
blur, and since the far-side CoC is bounded, textured edges run off to infinity. So every frame that shares frame
0's pose and that registration (:func:`gs_dfd.data.registration.register_stack`) finds displaced gets a learnable
similarity ``x_frame = c + s R(a) (x_ref - c) + t`` about the principal point ``c``, started from that estimate.

The warp is applied to the Gaussians, not to the images: each Gaussian's pixel position is moved by the frame's
similarity (its size scaled, its rotation turned) before rendering, so a frame is rendered directly in its own
pixel grid. Resampling an image instead would blur it by a sub-pixel interpolation whose strength varies with the
local phase of the warp: under breathing that is a ring pattern, which the fit would read as blur, i.e. depth.

Frame 0 is the reference: the Gaussians, depth map and all-in-focus image stay in its pixel grid. The four
parameters are stored as pixel displacements at the image's half diagonal (scale and angle times that radius), so
one learning rate in pixels suits them all.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from gs_dfd.data.registration import register_stack, warp_to_reference


def estimate_frame_warps(frames: np.ndarray, movable: list[bool], center: tuple[float, float],
                         max_shift_px: float = 32.0) -> np.ndarray:
    """``[F, 4]`` similarities ``(log_scale, angle_rad, tx_px, ty_px)`` of each frame against frame 0; zero where
    ``movable`` is False (frame 0, frames with their own pose)."""
    if not any(movable[1:]):
        return np.zeros((len(frames), 4), np.float64)
    return np.asarray(register_stack(frames, center, movable, max_shift_px), np.float64)


def warp_displacement_px(params: np.ndarray, center: tuple[float, float], width: int, height: int) -> np.ndarray:
    """``[F]`` largest displacement (px) that each frame's similarity gives a point of the image's border."""
    corners = np.array([[0, 0], [width, 0], [0, height], [width, height]], np.float64) - np.asarray(center)
    out = []
    for log_s, ang, tx, ty in np.asarray(params, np.float64).reshape(-1, 4):
        rot = math.exp(log_s) * np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
        out.append(float(np.abs(corners @ rot.T + [tx, ty] - corners).max()))
    return np.array(out)


class FrameWarp(nn.Module):
    """Learnable per-frame similarity of the frames' pixel grids to the reference's; frame 0 and the frames not
    ``movable`` (another pose, or already registered) stay fixed at the identity."""

    def __init__(self, init_params: np.ndarray, movable: list[bool], center: tuple[float, float], width: int,
                 height: int):
        super().__init__()
        n = len(movable)
        init_params = np.asarray(init_params, np.float64)
        assert init_params.shape == (n, 4), (init_params.shape, n)
        mask = torch.tensor([bool(m) and i > 0 for i, m in enumerate(movable)], dtype=torch.float32)
        self.enabled = bool(mask.any())  # False: no frame moves, and every method passes through
        self.center = (float(center[0]), float(center[1]))
        self.size = (int(width), int(height))
        self.radius_px = 0.5 * math.hypot(width, height)  # scale and angle are stored times this radius (px)
        to_px = torch.tensor([self.radius_px, self.radius_px, 1.0, 1.0], dtype=torch.float64)
        init = (torch.tensor(init_params) * to_px).float() * mask[:, None]
        self.register_buffer("mask", mask[:, None])
        self.register_buffer("init_warp_px", init.clone())
        self.warp_px = nn.Parameter(init, requires_grad=self.enabled)

    def moved(self, frame: int) -> bool:
        return bool(self.mask[frame, 0] > 0)

    def params(self) -> Tensor:
        """``[F, 4]`` ``(log_scale, angle_rad, tx_px, ty_px)`` per frame, differentiable."""
        w = self.warp_px * self.mask
        return torch.cat([w[:, :2] / self.radius_px, w[:, 2:]], dim=1)

    def frame_params(self, frame: int) -> tuple[Tensor, Tensor, Tensor]:
        """``(scale, angle_rad, shift_px [2])`` of one frame, differentiable."""
        p = self.params()[frame]
        return torch.exp(p[0]), p[1], p[2:]

    def _numpy(self, frame: int) -> np.ndarray:
        return self.params()[frame].detach().double().numpy()

    def to_reference(self, image: np.ndarray, frame: int) -> np.ndarray:
        """Frame ``frame``'s ``[H, W]`` or ``[H, W, C]`` image (or map) moved into the reference's pixel grid
        (resampled: for the starting depth and colours, never for the loss)."""
        if not self.moved(frame):
            return image
        return warp_to_reference(image, self._numpy(frame), self.center)

    def frame_to_reference_px(self, frame: int, xy: np.ndarray) -> np.ndarray:
        """``[K, 2]`` pixel positions of frame ``frame`` -> the reference's pixel grid."""
        xy = np.asarray(xy, np.float64)
        if not self.moved(frame):
            return xy
        log_s, ang, tx, ty = self._numpy(frame)
        c = np.asarray(self.center)
        rot_inv = np.array([[math.cos(ang), math.sin(ang)], [-math.sin(ang), math.cos(ang)]]) / math.exp(log_s)
        return (xy - c - [tx, ty]) @ rot_inv.T + c

    def valid_mask(self, frame: int, x0: int, y0: int, width: int, height: int, border_px: float = 1.0) -> Tensor:
        """``[height, width]`` bool: the pixels of frame ``frame``'s window that show part of the reference's view
        (at least ``border_px`` inside it), the only ones the Gaussians can explain."""
        if not self.moved(frame):
            return torch.ones(height, width, dtype=torch.bool)
        log_s, ang, tx, ty = self._numpy(frame)
        cx, cy = self.center
        dx = torch.arange(x0, x0 + width, dtype=torch.float64)[None, :] + 0.5 - cx - tx  # [1, w]
        dy = torch.arange(y0, y0 + height, dtype=torch.float64)[:, None] + 0.5 - cy - ty  # [h, 1]
        inv_s, cos, sin = math.exp(-log_s), math.cos(ang), math.sin(ang)
        ref_x = cx + inv_s * (cos * dx + sin * dy)  # the inverse similarity, as in frame_to_reference_px
        ref_y = cy + inv_s * (-sin * dx + cos * dy)
        w, h = self.size
        return (ref_x >= border_px) & (ref_x <= w - border_px) & (ref_y >= border_px) & (ref_y <= h - border_px)

    def report(self) -> list[dict]:
        """Each frame's warp as a person reads it: scale, rotation (degrees) and shift (px)."""
        with torch.no_grad():
            rows = []
            for i, (log_s, ang, tx, ty) in enumerate(self.params().double().tolist()):
                if i > 0:
                    rows.append({"frame": i, "scale": round(math.exp(log_s), 6),
                                 "rotation_deg": round(math.degrees(ang), 4),
                                 "shift_px": [round(tx, 3), round(ty, 3)]})
            return rows
