"""EWA projection of 3D Gaussians to the image plane (pure PyTorch, differentiable).

Shared by the ``torch`` and ``cpu`` backends so that both rasterise exactly the
same 2D Gaussians. The 3D covariance ``R diag(s^2) R^T`` is moved to camera
space and pushed through the Jacobian of the perspective map (Zwicker et al.
2001, EWA splatting), as 3DGS (Kerbl et al. 2023) and gsplat (Ye et al. 2024)
do, including gsplat's clamp of the Jacobian's view direction to 1.3x the
field of view so that Gaussians far off screen do not explode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Projection:
    """Per-Gaussian screen-space quantities of one camera pose."""

    means2d: Tensor  # [N, 2] pixel coordinates (pixel centres at i + 0.5)
    cov2d: Tensor  # [N, 3] (xx, xy, yy) of the projected covariance, before any dilation
    depths: Tensor  # [N] camera-space z (metres)
    valid: Tensor  # [N] bool: in front of the near plane with a finite, positive-definite footprint


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices from (w, x, y, z) quaternions; normalises first so raw parameters work."""
    assert quats.dim() == 2 and quats.shape[-1] == 4, quats.shape  # [N, 4]
    q = quats / quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, dim=-1).reshape(-1, 3, 3)  # [N, 3, 3]


def project_gaussians(
    means: Tensor,  # [N, 3] world
    quats: Tensor,  # [N, 4] wxyz
    scales: Tensor,  # [N, 3] activated, metres
    world_to_cam: Tensor,  # [4, 4]
    fx: float, fy: float, cx: float, cy: float,
    width: int, height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
) -> Projection:
    """Project Gaussians through a pinhole camera (EWA first-order approximation)."""
    n = means.shape[0]
    assert means.shape == (n, 3), means.shape
    assert quats.shape == (n, 4), quats.shape
    assert scales.shape == (n, 3), scales.shape
    assert world_to_cam.shape == (4, 4), world_to_cam.shape
    rot_wc = world_to_cam[:3, :3].to(means)
    t_wc = world_to_cam[:3, 3].to(means)
    p_cam = means @ rot_wc.T + t_wc  # [N, 3]
    x, y, z = p_cam.unbind(-1)
    valid = (z > near_plane) & (z < far_plane)
    # Gaussians behind the camera are culled; give them a harmless depth so no NaN leaks into gradients.
    zs = torch.where(valid, z, torch.ones_like(z))

    m = quat_to_rotmat(quats) * scales[:, None, :]  # [N, 3, 3] = R diag(s)
    m_cam = rot_wc @ m  # [N, 3, 3]

    tan_fovx = 0.5 * width / fx
    tan_fovy = 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + 0.3 * tan_fovx
    lim_x_neg = cx / fx + 0.3 * tan_fovx
    lim_y_pos = (height - cy) / fy + 0.3 * tan_fovy
    lim_y_neg = cy / fy + 0.3 * tan_fovy
    tx = zs * (x / zs).clamp(-lim_x_neg, lim_x_pos)
    ty = zs * (y / zs).clamp(-lim_y_neg, lim_y_pos)
    zero = torch.zeros_like(zs)
    j = torch.stack(
        [fx / zs, zero, -fx * tx / (zs * zs), zero, fy / zs, -fy * ty / (zs * zs)], dim=-1
    ).reshape(n, 2, 3)  # [N, 2, 3]
    jm = j @ m_cam  # [N, 2, 3]; cov2d = (J M)(J M)^T is symmetric positive semi-definite by construction
    cov_xx = (jm[:, 0] * jm[:, 0]).sum(-1)
    cov_xy = (jm[:, 0] * jm[:, 1]).sum(-1)
    cov_yy = (jm[:, 1] * jm[:, 1]).sum(-1)
    cov2d = torch.stack([cov_xx, cov_xy, cov_yy], dim=-1)  # [N, 3]
    means2d = torch.stack([fx * x / zs + cx, fy * y / zs + cy], dim=-1)  # [N, 2]
    valid = valid & torch.isfinite(cov2d).all(-1) & torch.isfinite(means2d).all(-1)
    return Projection(means2d=means2d, cov2d=cov2d, depths=z, valid=valid)
