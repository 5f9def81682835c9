"""Loss (a)'s renderer: the scene's fitted Gaussians, each blurred by the CoC the network predicts.

Each Gaussian takes the predicted CoC sampled (bilinearly, so gradients reach
the CoC map) at its projected centre, as in Zhang et al., "Depth Estimation
Based on 3D Gaussian Splatting Siamese Defocus" (arXiv 2409.12323). Only a
crop is rendered: the camera's principal point is shifted by the crop's
corner and Gaussians farther than ``margin_px`` outside it are dropped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gs_dfd.optics.thin_lens import DISK_SIGMA_PER_COC
from gs_dfd.render.api import PinholeCamera, render_defocus
from gs_dfd.train.data import CropRef, TrainScene


def sample_at(coc_map: Tensor, uv: Tensor) -> Tensor:
    """coc_map ``[1, 1, h, w]``, uv ``[N, 2]`` pixel coordinates (centres at i + 0.5) -> ``[N]``."""
    h, w = coc_map.shape[-2:]
    grid = torch.stack([2.0 * uv[:, 0] / w - 1.0, 2.0 * uv[:, 1] / h - 1.0], -1).view(1, 1, -1, 2)
    return F.grid_sample(coc_map, grid.to(coc_map.dtype), mode="bilinear", padding_mode="border",
                         align_corners=False).view(-1)


def render_crop(sc: TrainScene, ref: CropRef, coc_maps: Tensor, backend: str = "auto", margin_px: float = 24.0,
                near_m: float = 0.05, sigma_per_coc: float = DISK_SIGMA_PER_COC) -> Tensor:
    """Render the crop of both frames of ``ref`` with CoC maps ``[2, 1, h, w]`` given in the batch's
    (possibly flipped) orientation; returns RGB ``[2, h, w, 3]`` in the same orientation."""
    assert coc_maps.dim() == 4 and coc_maps.shape[:2] == (2, 1), coc_maps.shape
    h, w = coc_maps.shape[-2:]
    coc_scene = coc_maps.flip(-1) if ref.flip else coc_maps
    cam = sc.scene.camera
    out = []
    for k, f in enumerate(ref.frames):
        pose = torch.as_tensor(sc.scene.world_to_cam(f), dtype=torch.float32)
        xyz = sc.means @ pose[:3, :3].T + pose[:3, 3]
        z = xyz[:, 2]
        zc = z.clamp_min(1e-6)
        u = cam.fx * xyz[:, 0] / zc + cam.cx - ref.x0
        v = cam.fy * xyz[:, 1] / zc + cam.cy - ref.y0
        keep = (z > near_m) & (u > -margin_px) & (u < w + margin_px) & (v > -margin_px) & (v < h + margin_px)
        idx = keep.nonzero().squeeze(1)
        coc = sample_at(coc_scene[k: k + 1], torch.stack([u[idx], v[idx]], -1))
        camera = PinholeCamera(width=w, height=h, fx=cam.fx, fy=cam.fy, cx=cam.cx - ref.x0, cy=cam.cy - ref.y0,
                               world_to_cam=pose)
        r = render_defocus(sc.means[idx], sc.quats[idx], sc.scales[idx], sc.opacities[idx], sc.colors[idx], camera, [],
                           coc_px_override=coc[None], backend=backend, sigma_per_coc=sigma_per_coc)
        # As in the fit: an opaque world, so normalise by coverage (blur must not darken a surface).
        out.append(r.rgb[0] / r.alpha[0].clamp_min(1e-3))
    rgb = torch.stack(out)  # [2, h, w, 3]
    return rgb.flip(2) if ref.flip else rgb
