"""Frames that software moved: render in frame 0's pixel grid, then resample as that software did.

A camera samples each shot in its own pixel grid, so the fit renders a moved frame (breathing, shake) directly
there (gs_dfd.fit.alignment). A stack that a program aligned, or re-shot from one image, was made otherwise: frame
0's grid was interpolated at the frame's warped pixel positions. That interpolation blurs, by an amount that
follows the sub-pixel phase of the warp (constant under a shift, rings under a scale change), and a fit that does
not model it reads it as defocus. Here the frame is rendered in a box of frame 0's grid that covers the window,
then interpolated at the window's pixel centres mapped back through the frame's similarity, differentiably in the
warp. torch's ``grid_sample`` does the interpolation: bilinear, or bicubic (Keys' cubic convolution, a = -0.75).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from gs_dfd.fit.alignment import FrameWarp

Window = tuple[int, int, int, int]  # x0, y0, width, height (px)

RESAMPLING_MODES = {"linear": "bilinear", "cubic": "bicubic"}
# Pixels of frame 0's grid kept around the window's preimage: the bicubic kernel reads two beyond its point.
BOX_PAD_PX = 3


def reference_box(warp: FrameWarp, frame: int, window: Window, pad_px: int = BOX_PAD_PX) -> Window:
    """The box of frame 0's grid (it may extend past the image) whose pixels the interpolation of ``window`` of
    frame ``frame`` reads."""
    x0, y0, w, h = window
    corners = np.array([[x0, y0], [x0 + w, y0], [x0, y0 + h], [x0 + w, y0 + h]], np.float64)
    ref = warp.frame_to_reference_px(frame, corners)
    bx0, by0 = math.floor(ref[:, 0].min()) - pad_px, math.floor(ref[:, 1].min()) - pad_px
    bx1, by1 = math.ceil(ref[:, 0].max()) + pad_px, math.ceil(ref[:, 1].max()) + pad_px
    return bx0, by0, bx1 - bx0, by1 - by0


def resample_to_frame(images: Tensor, box: Window, warp: FrameWarp, frame: int, window: Window,
                      mode: str) -> Tensor:
    """``images`` ``[h_box, w_box, C]`` in ``box`` of frame 0's grid -> ``[h, w, C]`` at the pixel centres of
    ``window`` of frame ``frame``: each centre ``x`` is read at ``c + R(-a) (x - c - t) / s`` (the frame's
    similarity inverted), pixel centres at +0.5 in both grids."""
    assert mode in RESAMPLING_MODES, mode
    bx0, by0, bw, bh = box
    assert images.dim() == 3 and images.shape[:2] == (bh, bw), (images.shape, box)
    x0, y0, w, h = window
    scale, angle, shift = warp.frame_params(frame)
    cx, cy = warp.center
    dx = (torch.arange(x0, x0 + w, dtype=torch.float32) + 0.5 - cx)[None, :] - shift[0]  # [1, w]
    dy = (torch.arange(y0, y0 + h, dtype=torch.float32) + 0.5 - cy)[:, None] - shift[1]  # [h, 1]
    cos, sin = torch.cos(angle), torch.sin(angle)
    ref_x = cx + (cos * dx + sin * dy) / scale  # [h, w]
    ref_y = cy + (-sin * dx + cos * dy) / scale
    # align_corners=True: -1 and 1 are the centres of the box's first and last pixels.
    gx = (ref_x - bx0 - 0.5) / max(bw - 1, 1) * 2 - 1
    gy = (ref_y - by0 - 0.5) / max(bh - 1, 1) * 2 - 1
    grid = torch.stack([gx, gy], dim=-1)[None]  # [1, h, w, 2]
    out = F.grid_sample(images.permute(2, 0, 1)[None], grid, mode=RESAMPLING_MODES[mode], padding_mode="border",
                        align_corners=True)
    return out[0].permute(1, 2, 0)


__all__ = ["RESAMPLING_MODES", "BOX_PAD_PX", "reference_box", "resample_to_frame"]
