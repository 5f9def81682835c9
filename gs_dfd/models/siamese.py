"""gs-siamese's network (and dered's): DefocusNet then DepthNet, one module.

One module, so training wraps it in one DDP wrapper and saves one state dict, and ``predict`` runs it as it
was trained: both frames of a pair go through the same weights (the siamese part is calling it twice).
"""

from __future__ import annotations

import torch

from gs_dfd.models.defocus_net import DefocusNet, DefocusNetConfig
from gs_dfd.models.depth_net import DepthNet, DepthNetConfig


class SiameseDepthModel(torch.nn.Module):
    """DefocusNet and DepthNet as one module (one DDP wrapper, one state dict)."""

    def __init__(self, defocus_cfg: DefocusNetConfig | None = None, depth_cfg: DepthNetConfig | None = None) -> None:
        super().__init__()
        self.defocus = DefocusNet(defocus_cfg)
        self.depth = DepthNet(depth_cfg)

    def forward(self, images: torch.Tensor, lenses: torch.Tensor) -> dict[str, torch.Tensor]:
        """images ``[M, 3, h, w]``, lenses ``[M, 4]`` -> ``coc`` (px), ``depth`` (m), ``gate`` ``[M, 1, h, w]``."""
        coc = self.defocus(images, lenses)
        out = self.depth(images, coc, lenses)
        return {"coc": coc, **out}

    def model_config(self) -> dict:
        return {"defocus_net": self.defocus.config_dict(), "depth_net": self.depth.config_dict()}
