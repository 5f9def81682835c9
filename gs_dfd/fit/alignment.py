"""Per-frame image translation in the per-scene fit: the shots of a real stack are not registered.

Left alone, the fit explains an offset between shots as blur, and since the
far-side CoC is bounded, textured edges run off to infinity. So every frame
that shares the reference frame's pose and that phase correlation
(``gs_dfd.data.registration``) finds offset gets a learnable 2D translation of
its render, started from that estimate. Frame 0 is the reference: the
Gaussians, depth map and all-in-focus image stay in its pixel grid.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from gs_dfd.data.registration import estimate_shift_px, move_to_reference, translate_images


def register_frames(frames: np.ndarray, movable: list[bool], max_shift_px: float = 32.0) -> np.ndarray:
    """``[F, 2]`` phase-correlation shifts of each frame against frame 0; zero where ``movable`` is False."""
    shifts = np.zeros((len(frames), 2), np.float32)
    for i in range(1, len(frames)):
        if movable[i]:
            shifts[i] = estimate_shift_px(frames[0], frames[i], max_shift_px)
    return shifts


class FrameAlignment(nn.Module):
    """Learnable per-frame translation of the renders; frame 0 and the frames not ``movable`` (another pose, or
    already registered) stay fixed."""

    def __init__(self, init_shift_px: np.ndarray, movable: list[bool]):
        super().__init__()
        n = len(movable)
        assert init_shift_px.shape == (n, 2), (init_shift_px.shape, n)
        mask = torch.tensor([bool(m) and i > 0 for i, m in enumerate(movable)], dtype=torch.float32)
        self.enabled = bool(mask.any())  # False: no frame moves, and every method passes images through
        self.register_buffer("mask", mask[:, None])
        init = torch.tensor(init_shift_px, dtype=torch.float32) * self.mask
        self.register_buffer("init_shift_px", init.clone())
        self.shift_px = nn.Parameter(init, requires_grad=self.enabled)

    def shifts(self) -> Tensor:  # [F, 2]
        return self.shift_px * self.mask

    def forward(self, rgb: Tensor) -> Tensor:
        """``[F, H, W, C]`` renders in the reference's pixel grid -> where each frame recorded them."""
        return translate_images(rgb, self.shifts()) if self.enabled else rgb

    def to_reference(self, image: np.ndarray, frame: int) -> np.ndarray:
        """Frame ``frame``'s ``[H, W]`` or ``[H, W, C]`` image (or map) moved into the reference's pixel grid."""
        if not self.enabled or frame == 0:
            return image
        return move_to_reference(image, self.shifts()[frame].detach().numpy())

    def margin_px(self) -> int:
        """Border left out of the loss, where a translated render repeats its edge instead of showing the
        scene: the starting shift plus 2 px of learned change (fixed, so a resumed fit sees the same loss)."""
        return int(np.ceil(float(self.init_shift_px.abs().max()))) + 2 if self.enabled else 0

    def report(self) -> list[dict]:
        with torch.no_grad():
            return [{"frame": i, "shift_px": [round(float(v), 3) for v in s]}
                    for i, s in enumerate(self.shifts()) if i > 0]
