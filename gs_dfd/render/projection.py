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


def project_gaussians(
    means: Tensor,  # [N, 3] world
    quats: Tensor,  # [N, 4] wxyz
    scales: Tensor,  # [N, 3] activated, metres
    world_to_cam: Tensor,  # [4, 4] (treated as a constant)
    fx: float, fy: float, cx: float, cy: float,
    width: int, height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
) -> Projection:
    """Project Gaussians through a pinhole camera (EWA first-order approximation).

    Written per component on [N] tensors rather than with batched 3x3 matrix
    products: on CPU that is several times faster, forward and backward, and
    the formulas stay readable: ``cov2d = (J W R S)(J W R S)^T``.
    """
    n = means.shape[0]
    assert means.shape == (n, 3), means.shape
    assert quats.shape == (n, 4), quats.shape
    assert scales.shape == (n, 3), scales.shape
    assert world_to_cam.shape == (4, 4), world_to_cam.shape
    w2c = [[float(v) for v in row] for row in world_to_cam.detach().cpu().double().tolist()]
    (r00, r01, r02, t0), (r10, r11, r12, t1), (r20, r21, r22, t2) = w2c[0], w2c[1], w2c[2]
    mx, my, mz = means.unbind(-1)
    x = r00 * mx + r01 * my + r02 * mz + t0
    y = r10 * mx + r11 * my + r12 * mz + t1
    z = r20 * mx + r21 * my + r22 * mz + t2
    valid = (z > near_plane) & (z < far_plane)
    # Gaussians behind the camera are culled; give them a harmless depth so no NaN leaks into gradients.
    zs = torch.where(valid, z, torch.ones_like(z))
    rz = 1.0 / zs

    # Jacobian of the perspective map at the (clamped, as gsplat does) view direction, times W (rotation).
    tan_fovx = 0.5 * width / fx
    tan_fovy = 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + 0.3 * tan_fovx
    lim_x_neg = cx / fx + 0.3 * tan_fovx
    lim_y_pos = (height - cy) / fy + 0.3 * tan_fovy
    lim_y_neg = cy / fy + 0.3 * tan_fovy
    ux = (x * rz).clamp(-lim_x_neg, lim_x_pos)  # tx / z
    uy = (y * rz).clamp(-lim_y_neg, lim_y_pos)
    jx = fx * rz  # J = [[jx, 0, -jx ux], [0, jy, -jy uy]]
    jy = fy * rz
    a0 = jx * (r00 - ux * r20)  # rows of J W
    a1 = jx * (r01 - ux * r21)
    a2 = jx * (r02 - ux * r22)
    b0 = jy * (r10 - uy * r20)
    b1 = jy * (r11 - uy * r21)
    b2 = jy * (r12 - uy * r22)

    # R diag(s) from the normalised quaternion.
    qn = quats * torch.rsqrt((quats * quats).sum(-1, keepdim=True).clamp_min(1e-24))
    qw, qx, qy, qz = qn.unbind(-1)
    sx, sy, sz = scales.unbind(-1)
    xx, yy, zz = qx * qx, qy * qy, qz * qz
    xy, xz, yz = qx * qy, qx * qz, qy * qz
    wx, wy, wz = qw * qx, qw * qy, qw * qz
    m00, m01, m02 = (1 - 2 * (yy + zz)) * sx, 2 * (xy - wz) * sy, 2 * (xz + wy) * sz
    m10, m11, m12 = 2 * (xy + wz) * sx, (1 - 2 * (xx + zz)) * sy, 2 * (yz - wx) * sz
    m20, m21, m22 = 2 * (xz - wy) * sx, 2 * (yz + wx) * sy, (1 - 2 * (xx + yy)) * sz

    # T = (J W) (R S): 2 x 3; cov2d = T T^T is positive semi-definite by construction.
    p0 = a0 * m00 + a1 * m10 + a2 * m20
    p1 = a0 * m01 + a1 * m11 + a2 * m21
    p2 = a0 * m02 + a1 * m12 + a2 * m22
    q0 = b0 * m00 + b1 * m10 + b2 * m20
    q1 = b0 * m01 + b1 * m11 + b2 * m21
    q2 = b0 * m02 + b1 * m12 + b2 * m22
    cov2d = torch.stack([p0 * p0 + p1 * p1 + p2 * p2, p0 * q0 + p1 * q1 + p2 * q2, q0 * q0 + q1 * q1 + q2 * q2], -1)
    means2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], dim=-1)  # [N, 2]
    valid = valid & torch.isfinite(cov2d).all(-1) & torch.isfinite(means2d).all(-1)
    return Projection(means2d=means2d, cov2d=cov2d, depths=z, valid=valid)
