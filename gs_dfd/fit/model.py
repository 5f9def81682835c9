"""Gaussians parameterised in the reference camera's screen space.

Each Gaussian stores its pixel position ``uv``, its inverse depth ``q`` and its
size in pixels. Moving a Gaussian along its viewing ray (changing ``q``) then
leaves its pinhole projection unchanged and only changes its defocus blur: the
depth-from-defocus signal is isolated in one well-conditioned coordinate (the
CoC is affine in inverse depth). The world-space Gaussians the renderer takes
are derived from these; this is a reparameterisation, so multi-view frames
(with their own ``world_to_cam``) render the same 3D Gaussians.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from gs_dfd.data.scene import Camera


def quat_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product of ``[..., 4]`` (w, x, y, z) quaternions."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ], dim=-1)


def rotation_to_quat(rot: np.ndarray) -> np.ndarray:
    """``[3, 3]`` rotation matrix -> (w, x, y, z) unit quaternion."""
    m = np.asarray(rot, dtype=np.float64)
    w = np.sqrt(max(0.0, 1.0 + m[0, 0] + m[1, 1] + m[2, 2])) / 2
    x = np.copysign(np.sqrt(max(0.0, 1.0 + m[0, 0] - m[1, 1] - m[2, 2])) / 2, m[2, 1] - m[1, 2])
    y = np.copysign(np.sqrt(max(0.0, 1.0 - m[0, 0] + m[1, 1] - m[2, 2])) / 2, m[0, 2] - m[2, 0])
    z = np.copysign(np.sqrt(max(0.0, 1.0 - m[0, 0] - m[1, 1] + m[2, 2])) / 2, m[1, 0] - m[0, 1])
    q = np.array([w, x, y, z])
    return q / np.linalg.norm(q)


@dataclass
class WorldGaussians:
    means: Tensor  # [N, 3] metres, world
    quats: Tensor  # [N, 4] (w, x, y, z), world
    scales: Tensor  # [N, 3] metres
    opacities: Tensor  # [N]
    colors: Tensor  # [N, C]
    depth_ref: Tensor  # [N] depth in the reference camera (metres)


class ScreenGaussians(nn.Module):
    """Learnable Gaussians: ``uv`` [N, 2] px, ``inv_depth`` [N] 1/m, ``log_size_px`` [N, 3],
    ``quats`` [N, 4] (reference-camera frame), ``opacity_logit`` [N], ``color_logit`` [N, C]."""

    def __init__(self, uv: Tensor, inv_depth: Tensor, log_size_px: Tensor, quats: Tensor, opacity_logit: Tensor,
                 color_logit: Tensor, camera: Camera, ref_world_to_cam: np.ndarray | None = None,
                 min_depth_m: float = 0.05):
        super().__init__()
        n = uv.shape[0]
        assert uv.shape == (n, 2) and inv_depth.shape == (n,) and log_size_px.shape == (n, 3)
        assert quats.shape == (n, 4) and opacity_logit.shape == (n,) and color_logit.shape[0] == n
        self.uv = nn.Parameter(uv.float())
        self.inv_depth = nn.Parameter(inv_depth.float())
        self.log_size_px = nn.Parameter(log_size_px.float())
        self.quats = nn.Parameter(quats.float())
        self.opacity_logit = nn.Parameter(opacity_logit.float())
        self.color_logit = nn.Parameter(color_logit.float())
        self.camera = camera
        self.min_depth_m = min_depth_m
        w2c = np.eye(4) if ref_world_to_cam is None else np.asarray(ref_world_to_cam, dtype=np.float64)
        c2w = np.linalg.inv(w2c)
        self.register_buffer("c2w_rot", torch.tensor(c2w[:3, :3], dtype=torch.float32))
        self.register_buffer("c2w_trans", torch.tensor(c2w[:3, 3], dtype=torch.float32))
        self.register_buffer("c2w_quat", torch.tensor(rotation_to_quat(c2w[:3, :3]), dtype=torch.float32))

    @property
    def n(self) -> int:
        return self.uv.shape[0]

    def depth_ref(self, ids: Tensor | None = None) -> Tensor:  # [N], or [K] of rows ``ids``
        q = self.inv_depth if ids is None else self.inv_depth[ids]
        return 1.0 / q.clamp(min=1e-3, max=1.0 / self.min_depth_m)

    def select(self, ids: Tensor | None = None) -> dict[str, Tensor]:
        """The parameters of the Gaussians ``ids`` (all: None), gathered once (differentiable): pass them to
        :meth:`world` for each of several frames rather than gathering per frame."""
        names = ("inv_depth", "uv", "log_size_px", "quats", "opacity_logit", "color_logit")
        return {k: getattr(self, k) if ids is None else getattr(self, k)[ids] for k in names}

    def world(self, ids: Tensor | None = None, warp: tuple[Tensor, Tensor, Tensor] | None = None,
              selected: dict[str, Tensor] | None = None) -> WorldGaussians:
        """The Gaussians ``ids`` (all: None; or those already ``selected``) in world space, as the renderer
        takes them.

        ``warp = (scale, angle_rad, shift_px [2])`` moves each Gaussian's pixel position by the similarity
        ``uv' = c + scale R(angle) (uv - c) + shift`` about the principal point (and scales and turns its
        footprint with it) at unchanged depth: a frame whose image is magnified, rotated or shifted against the
        reference's (focus breathing, shake) is then rendered directly in its own pixel grid, with the same
        CoCs. Differentiable w.r.t. the warp.
        """
        cam = self.camera
        p = selected if selected is not None else self.select(ids)
        uv, quats_local = p["uv"], p["quats"]
        n = uv.shape[0]
        z = 1.0 / p["inv_depth"].clamp(min=1e-3, max=1.0 / self.min_depth_m)
        size_scale = torch.exp(p["log_size_px"])
        if warp is not None:
            scale, angle, shift = warp
            c = uv.new_tensor([cam.cx, cam.cy])
            cos, sin = torch.cos(angle), torch.sin(angle)
            d = uv - c
            uv = c + scale * torch.stack([cos * d[:, 0] - sin * d[:, 1], sin * d[:, 0] + cos * d[:, 1]], -1) + shift
            size_scale = size_scale * scale
            half = 0.5 * angle
            turn = torch.stack([torch.cos(half), half * 0, half * 0, torch.sin(half)])  # about the optical axis
            quats_local = quat_multiply(turn.expand(n, 4), quats_local)
        x = (uv[:, 0] - cam.cx) / cam.fx * z
        y = (uv[:, 1] - cam.cy) / cam.fy * z
        means_cam = torch.stack([x, y, z], dim=-1)
        means = means_cam @ self.c2w_rot.T + self.c2w_trans
        scales = size_scale * (z / cam.fx)[:, None]
        quats = quat_multiply(self.c2w_quat.expand(n, 4), quats_local)
        return WorldGaussians(means=means, quats=quats, scales=scales, opacities=torch.sigmoid(p["opacity_logit"]),
                              colors=torch.sigmoid(p["color_logit"]), depth_ref=z)


def _logit(p: np.ndarray | float) -> np.ndarray:
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def block_mean(values, stride: int):
    """Mean over each ``stride x stride`` pixel block, the Gaussian grid's cells: ``[H, W, ...]`` ->
    ``[H // stride, W // stride, ...]`` (numpy array or torch tensor; the ragged last rows/columns are dropped)."""
    gh, gw = values.shape[0] // stride, values.shape[1] // stride
    return values[:gh * stride, :gw * stride].reshape(gh, stride, gw, stride, *values.shape[2:]).mean(axis=(1, 3))


def grid_gaussians(inv_depth_map: np.ndarray, colour_map: np.ndarray, camera: Camera, stride: int,
                   opacity: float = 0.9, ref_world_to_cam: np.ndarray | None = None) -> tuple[ScreenGaussians, tuple[int, int]]:
    """One Gaussian per ``stride x stride`` pixel block at the block's mean inverse depth and colour.

    inv_depth_map: ``[H, W]`` 1/m; colour_map: ``[H, W, C]``. Returns the model
    and its grid shape (rows, cols) for grid-neighbour priors.
    """
    q, col = block_mean(inv_depth_map, stride), block_mean(colour_map, stride)
    gh, gw = q.shape
    jj, ii = np.meshgrid(np.arange(gw), np.arange(gh))
    uv = np.stack([(jj + 0.5) * stride, (ii + 0.5) * stride], -1).reshape(-1, 2)
    n = gh * gw
    # Size: half the block spacing in x and y (neighbours overlap smoothly), thinner along the ray.
    size = np.log(np.array([0.5 * stride, 0.5 * stride, 0.25 * stride]))
    quats = np.tile([1.0, 0.0, 0.0, 0.0], (n, 1))
    model = ScreenGaussians(
        uv=torch.tensor(uv), inv_depth=torch.tensor(q.reshape(-1)), log_size_px=torch.tensor(np.tile(size, (n, 1))),
        quats=torch.tensor(quats), opacity_logit=torch.full((n,), float(_logit(opacity))),
        color_logit=torch.tensor(_logit(col.reshape(n, -1))), camera=camera, ref_world_to_cam=ref_world_to_cam,
    )
    return model, (gh, gw)
