"""MDDNet baseline: one encoder, two decoders (depth and defocus map), supervised.

He et al., "Multi-task Learning for Monocular Depth and Defocus Estimations
with Real Images" (the ALL-in-3D data set), arXiv 2208.09848. The paper
feeds one *focused* image; here it gets the same single defocused frame as
every other method, because all methods in the benchmark see the same input.
Its CoC target is the thin-lens CoC of ``depth_gt`` under the frame's lens
(:func:`gs_dfd.models.lens_code.coc_px_from_depth`). Like the paper it takes
no lens input, so both maps are read from the image alone. Small U-Net
encoder and decoders, as everywhere here (2-core CPUs).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from gs_dfd.models.d3net import bounded_depth
from gs_dfd.models.defocus_net import standardise
from gs_dfd.models.unet import UNetDecoder, UNetEncoder


@dataclass
class MDDNetConfig:
    mddnet_widths: tuple[int, ...] = (12, 24, 48, 64, 96)
    """MDDNet (method mddnet): channels per level of the shared encoder and of both decoders."""
    mddnet_max_coc_px: float = 40.0
    """MDDNet: largest CoC its defocus decoder can output (pixels)."""
    mddnet_depth_range_m: tuple[float, float] = (0.1, 20.0)
    """MDDNet: output depth range (metres)."""


class MDDNet(nn.Module):
    def __init__(self, cfg: MDDNetConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or MDDNetConfig()
        assert 0 < self.cfg.mddnet_depth_range_m[0] < self.cfg.mddnet_depth_range_m[1], self.cfg.mddnet_depth_range_m
        self.encoder = UNetEncoder(3, self.cfg.mddnet_widths)
        self.depth_decoder = UNetDecoder(self.cfg.mddnet_widths, 1)
        self.defocus_decoder = UNetDecoder(self.cfg.mddnet_widths, 1)

    def forward(self, images: Tensor, lenses: Tensor | None = None) -> dict[str, Tensor]:
        """images ``[M, 3, h, w]`` in [0, 1] -> ``depth`` (m) and ``coc`` (px, unsigned) ``[M, 1, h, w]``.
        ``lenses`` ``[M, 4]`` is accepted for a common interface and ignored."""
        assert images.dim() == 4 and images.shape[1] == 3, images.shape
        assert lenses is None or lenses.shape == (images.shape[0], 4), lenses.shape
        feats = self.encoder(standardise(images))
        depth = bounded_depth(self.depth_decoder(feats), self.cfg.mddnet_depth_range_m)
        coc = F.softplus(self.defocus_decoder(feats) + 1.0).clamp_max(self.cfg.mddnet_max_coc_px)
        return {"depth": depth, "coc": coc}

    def config_dict(self) -> dict:
        return asdict(self.cfg)

    def model_config(self) -> dict:
        return {"mddnet": self.config_dict()}
