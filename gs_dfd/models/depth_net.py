"""DepthNet: CoC map + image + lens -> metric depth.

The camera is explicit. The network never sees pixels of blur directly: it
reads the normalised defocus ``c / K = |1 - s/d|`` (see
:class:`gs_dfd.optics.LensBatch`), whose two thin-lens solutions are
``s/d = 1 - c/K`` (behind the focus plane) and ``s/d = 1 + c/K`` (in front).
The network picks between them per pixel (``tanh`` gate: +1 far, -1 near),
from context, and adds a bounded correction where the CoC is unreliable
(textureless regions). Gate and correction are low-frequency, so the U-Net
runs at half resolution and its output is upsampled; depth edges come from
the full-resolution CoC map. So one checkpoint serves any lens whose normalised
defocus falls in the training range, and the thin lens, not the weights,
carries the units.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gs_dfd.models.defocus_net import standardise
from gs_dfd.models.lens_code import lens_channels
from gs_dfd.models.unet import UNet
from gs_dfd.optics.thin_lens import LensBatch


@dataclass
class DepthNetConfig:
    depth_widths: tuple[int, ...] = (8, 16, 32, 48, 64)
    """Channels per U-Net level."""
    max_log_correction: float = 0.7
    """Largest correction (natural log of inverse depth) the network may add to the thin-lens candidate."""
    min_depth_m: float = 0.1
    """Depth floor of the output (metres)."""
    max_depth_m: float = 20.0
    """Depth ceiling of the output (metres)."""
    depth_global_context: bool = False
    """Add the whole image's pooled bottleneck features back at every position, so the near/far gate and the
    correction can use the statistics of the scene as a whole."""


class DepthNet(nn.Module):
    def __init__(self, cfg: DepthNetConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or DepthNetConfig()
        self.unet = UNet(3 + 1 + 2, 2, self.cfg.depth_widths, global_context=self.cfg.depth_global_context)

    def forward(self, image: Tensor, coc_px: Tensor, lenses: Tensor) -> dict[str, Tensor]:
        """image ``[B, 3, H, W]``, coc_px ``[B, 1, H, W]``, lenses ``[B, 4]`` -> ``depth``/``gate``
        ``[B, 1, H, W]``."""
        b, _, h, w = image.shape
        assert coc_px.shape == (b, 1, h, w), coc_px.shape
        assert lenses.shape == (b, 4), lenses.shape
        lens = LensBatch.from_rows(lenses)
        k = lens.coc_scale_px.view(b, 1, 1, 1)
        s = lens.focus_distance_m.view(b, 1, 1, 1)
        defocus = (coc_px / k).clamp_max(3.0)  # |1 - s/d|
        x = torch.cat([standardise(image), defocus, lens_channels(lenses, (h, w))], 1)
        out = self.unet(F.avg_pool2d(x, 2, ceil_mode=True))
        out = F.interpolate(out, scale_factor=2.0, mode="bilinear", align_corners=False)[..., :h, :w]
        gate = torch.tanh(out[:, :1])
        correction = self.cfg.max_log_correction * torch.tanh(out[:, 1:2])
        inv_rel = (1.0 - gate * defocus).clamp_min(0.02) * torch.exp(correction)  # s / d
        depth = (s / inv_rel).clamp(self.cfg.min_depth_m, self.cfg.max_depth_m)
        return {"depth": depth, "gate": gate}

    def config_dict(self) -> dict:
        return asdict(self.cfg)


def log_depth_error(a: Tensor, b: Tensor) -> Tensor:
    return (torch.log(a) - torch.log(b)).abs()


