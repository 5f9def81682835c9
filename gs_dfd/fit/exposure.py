"""Per-frame exposure: real stacks change brightness between shots (auto exposure, aperture steps).

Each frame after the first gets a learnable per-channel gain and offset on
the rendered image; frame 0 is the reference, so the fitted Gaussians (and
the all-in-focus image) keep its exposure. Global per-frame terms cannot
mimic defocus, which is local.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FrameExposure(nn.Module):
    def __init__(self, n_frames: int, channels: int, enabled: bool = True):
        super().__init__()
        self.enabled = enabled
        self.log_gain = nn.Parameter(torch.zeros(max(n_frames - 1, 0), channels), requires_grad=enabled)
        self.offset = nn.Parameter(torch.zeros(max(n_frames - 1, 0), channels), requires_grad=enabled)

    def forward(self, rgb: Tensor, frame_ids: list[int] | None = None) -> Tensor:
        """``[K, H, W, C]`` renders of the frames ``frame_ids`` (all: None) -> as each frame's exposure would
        record them."""
        ids = list(range(self.log_gain.shape[0] + 1)) if frame_ids is None else list(frame_ids)
        assert rgb.shape[0] == len(ids), (rgb.shape, ids)
        if not self.enabled or self.log_gain.shape[0] == 0:
            return rgb
        gain = torch.cat([torch.ones_like(self.log_gain[:1]), torch.exp(self.log_gain)])[ids][:, None, None, :]
        offset = torch.cat([torch.zeros_like(self.offset[:1]), self.offset])[ids][:, None, None, :]
        return rgb * gain + offset

    def report(self) -> list[dict]:
        with torch.no_grad():
            return [{"frame": i + 1, "gain": torch.exp(g).tolist(), "offset": o.tolist()}
                    for i, (g, o) in enumerate(zip(self.log_gain, self.offset))]
