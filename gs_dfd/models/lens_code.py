"""The lens as the networks take it: packed rows ``[B, 4]`` (columns: :meth:`gs_dfd.optics.LensBatch.as_rows`).

A model's forward takes ``lenses`` ``[B, 4]`` so a batch can mix cameras and
focus distances and a checkpoint's interface stays one plain tensor; every
quantity is read back through :class:`~gs_dfd.optics.LensBatch`, which owns
the thin-lens formulas. The networks never see the raw columns: they see
``c / K = |1 - s / d|`` (a camera-free defocus) and :func:`lens_channels`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gs_dfd.optics.thin_lens import LensBatch


def lens_channels(lenses: Tensor, hw: tuple[int, int]) -> Tensor:
    """lenses ``[B, 4]`` -> ``[B, 2, H, W]``: log focus distance (m) and log(K / 10 px), constant per image."""
    lb = LensBatch.from_rows(lenses)
    b = len(lb)
    consts = torch.stack([torch.log(lb.focus_distance_m), torch.log(lb.coc_scale_px / 10.0)], 1)  # [B, 2]
    return consts.view(b, 2, 1, 1).expand(b, 2, *hw)


def coc_px_from_depth(depth_m: Tensor, lenses: Tensor) -> Tensor:
    """Unsigned thin-lens CoC (px) of depth maps ``[B, 1, H, W]`` under each row's lens ``[B, 4]``, differentiable."""
    assert depth_m.dim() == 4 and lenses.shape == (depth_m.shape[0], 4), (depth_m.shape, lenses.shape)
    return LensBatch.from_rows(lenses).coc_px(depth_m)
