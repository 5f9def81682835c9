"""Lenses as tensors, so a batch can mix cameras and focus distances.

A lens row is ``(focal_length_m, f_number, pixel_pitch_m, focus_distance_m)``.
The signed thin-lens CoC in pixels is ``K * (1 - s / d)`` with
``K = A f / ((s - f) p)``: dividing a CoC map by ``K`` gives a camera-free
quantity, ``|1 - s/d|``, which is what DepthNet reads.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gs_dfd.optics.thin_lens import ThinLens


def lens_row(lens: ThinLens) -> Tensor:  # [4]
    return torch.tensor([lens.focal_length_m, lens.f_number, lens.pixel_pitch_m, lens.focus_distance_m],
                        dtype=torch.float32)


def coc_scale_px(lenses: Tensor) -> Tensor:  # [B]
    """``K``: the CoC (pixels) of a point at infinity, i.e. ``|c_px|`` as ``d -> inf``."""
    assert lenses.dim() == 2 and lenses.shape[1] == 4, lenses.shape
    f, n, p, s = lenses.unbind(1)
    return (f / n) * f / ((s - f) * p)


def focus_m(lenses: Tensor) -> Tensor:  # [B]
    return lenses[:, 3]


def coc_px_from_depth(depth_m: Tensor, lenses: Tensor) -> Tensor:
    """Unsigned CoC (pixels) of depth maps ``[B, 1, H, W]`` under each row's lens, differentiable."""
    k = coc_scale_px(lenses).view(-1, 1, 1, 1)
    s = focus_m(lenses).view(-1, 1, 1, 1)
    return k * (1.0 - s / depth_m).abs()
