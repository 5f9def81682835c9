"""DefocusNet: one defocused image -> its CoC map in pixels.

The siamese use (two frames of a scene through the same weights) is a matter
of calling it twice; see :mod:`gs_dfd.train`. Blur is a local, exposure-free
cue, so images are standardised per image before the network sees them
(the real f/2.8 photographs are exposed differently from synthetic stacks).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from gs_dfd.models.unet import UNet


def standardise(image: Tensor) -> Tensor:
    """``[B, C, H, W]`` -> zero mean, unit-ish contrast per image and channel."""
    mean = image.mean(dim=(2, 3), keepdim=True)
    std = image.std(dim=(2, 3), keepdim=True)
    return (image - mean) / (std + 0.05)


@dataclass
class DefocusNetConfig:
    defocus_widths: tuple[int, ...] = (8, 16, 32, 48, 64)
    """Channels per U-Net level (the depth of the U-Net is their count)."""
    max_coc_px: float = 40.0
    """Largest CoC the head can output (pixels)."""
    coc_unit_px: float = 4.0
    """Output scale: the head predicts CoC / coc_unit_px, so a fresh network starts near a typical blur."""


class DefocusNet(nn.Module):
    def __init__(self, cfg: DefocusNetConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or DefocusNetConfig()
        self.unet = UNet(3, 1, self.cfg.defocus_widths)

    def forward(self, image: Tensor) -> Tensor:
        """image ``[B, 3, H, W]`` in [0, 1] -> unsigned CoC diameter ``[B, 1, H, W]`` (pixels)."""
        assert image.dim() == 4 and image.shape[1] == 3, image.shape
        raw = self.unet(standardise(image))
        return (self.cfg.coc_unit_px * F.softplus(raw)).clamp_max(self.cfg.max_coc_px)

    def config_dict(self) -> dict:
        return asdict(self.cfg)
