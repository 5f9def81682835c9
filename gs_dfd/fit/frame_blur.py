"""Per-frame blur floor: what blurs a shot beyond its thin-lens defocus.

A real shot can be softer everywhere than the thin lens says: motion blur from hand shake during the exposure,
aberrations that change with focus, demosaicing and JPEG, and, in any stack that was resampled (registered,
resized or warped by other software), an interpolation blur that differs from frame to frame. Unmodelled, the fit
explains such a frame-wide softness with depth: every surface moves away from that frame's focus. So each frame
gets a learnable blur ``b_i`` (px, Gaussian sigma) added in variance to every Gaussian's PSF in that frame:
``sigma_i^2 = (sigma_per_coc CoC)^2 + b_i^2``. It is identifiable because it is the same at every depth, while the
defocus of a surface changes across the sweep as ``|1/s_i - 1/d|`` does. It starts at about zero; stored as
``b_i`` itself (its sign does not matter), so a step of the optimiser moves it by about the learning rate in px.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# A blur floor of 0.05 px sigma: no blur in effect, and away from 0, where b^2 has no gradient.
START_SIGMA_PX = 0.05


class FrameBlur(nn.Module):
    def __init__(self, n_frames: int, enabled: bool = True):
        super().__init__()
        self.enabled = enabled
        self.sigma_px = nn.Parameter(torch.full((n_frames,), START_SIGMA_PX), requires_grad=enabled)

    def variance_px2(self) -> Tensor:  # [F]
        return self.sigma_px**2

    def forward(self, coc_px: Tensor, frame_ids: list[int], sigma_per_coc: float) -> Tensor:
        """``[K, N]`` CoC diameters of frames ``frame_ids`` -> the diameters whose Gaussian PSF also holds each
        frame's blur floor (the renderer takes blur as a CoC)."""
        assert coc_px.shape[0] == len(frame_ids), (coc_px.shape, frame_ids)
        if not self.enabled:
            return coc_px
        extra = self.variance_px2()[list(frame_ids)][:, None] / sigma_per_coc**2  # [K, 1] in CoC px^2
        return torch.sqrt(coc_px**2 + extra)

    def report(self) -> list[dict] | None:
        if not self.enabled:
            return None
        with torch.no_grad():
            return [{"frame": i, "sigma_px": round(float(v) ** 0.5, 4)} for i, v in enumerate(self.variance_px2())]
