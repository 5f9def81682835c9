"""D3Net baseline: supervised single-image depth from ONE defocused image, with Monte-Carlo dropout.

Carvalho et al., "Deep Depth from Defocus: how can defocus blur improve 3D
estimation using dense neural networks?", ECCV Workshops 2018 (arXiv
1809.01567). The original is a DenseNet-121 encoder with a dense decoder
(tens of millions of weights, trained on GPUs); this is a scaled-down version
for 2-core CPUs: the shared small U-Net (:mod:`gs_dfd.models.unet`) with
dropout in its coarse levels. As in the original it sees no lens: depth is
learned from the image (its content and its blur) and ``depth_gt`` alone.

Monte-Carlo dropout (Gal & Ghahramani, ICML 2016), as the D3Net paper uses
for uncertainty: dropout stays on at inference, :meth:`D3Net.mc_predict` runs
N passes and returns their mean depth and per-pixel standard deviation.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from gs_dfd.models.defocus_net import standardise
from gs_dfd.models.unet import UNet


def bounded_depth(raw: Tensor, depth_range_m: tuple[float, float]) -> Tensor:
    """Network output -> depth inside ``depth_range_m``, log-uniform (sigmoid in log depth: a relative error
    costs the same near and far, as the L1-on-log-depth loss counts it)."""
    lo, hi = math.log(depth_range_m[0]), math.log(depth_range_m[1])
    return torch.exp(lo + (hi - lo) * torch.sigmoid(raw))


@dataclass
class D3NetConfig:
    d3net_widths: tuple[int, ...] = (16, 32, 48, 64, 96)
    """D3Net (method d3net): channels per U-Net level (the original's DenseNet-121 is far larger)."""
    dropout: float = 0.2
    """D3Net: dropout probability of the two coarsest encoder and decoder levels (kept on for MC dropout)."""
    d3net_depth_range_m: tuple[float, float] = (0.1, 20.0)
    """D3Net: output depth range (metres)."""


class D3Net(nn.Module):
    def __init__(self, cfg: D3NetConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or D3NetConfig()
        assert 0.0 <= self.cfg.dropout < 1.0, self.cfg.dropout
        assert 0 < self.cfg.d3net_depth_range_m[0] < self.cfg.d3net_depth_range_m[1], self.cfg.d3net_depth_range_m
        self.unet = UNet(3, 1, self.cfg.d3net_widths, dropout=self.cfg.dropout)

    def forward(self, images: Tensor, lenses: Tensor | None = None) -> dict[str, Tensor]:
        """images ``[M, 3, h, w]`` in [0, 1] -> ``depth`` ``[M, 1, h, w]`` (m). ``lenses`` ``[M, 4]`` is
        accepted for a common interface and ignored: D3Net takes no lens."""
        assert images.dim() == 4 and images.shape[1] == 3, images.shape
        assert lenses is None or lenses.shape == (images.shape[0], 4), lenses.shape
        return {"depth": bounded_depth(self.unet(standardise(images)), self.cfg.d3net_depth_range_m)}

    @torch.no_grad()
    def mc_predict(self, images: Tensor, samples: int, chunk: int = 4) -> tuple[Tensor, Tensor]:
        """images ``[1, 3, H, W]`` -> (mean depth, std of depth) ``[1, 1, H, W]`` over ``samples`` passes
        with dropout on. ``samples = 1``: one deterministic pass (dropout off), std 0.

        The passes run as a batch of copies: ``Dropout2d`` draws an independent mask per batch item.
        """
        assert images.dim() == 4 and images.shape[0] == 1, images.shape
        assert samples >= 1, samples
        was_training = self.training
        self.eval()
        if samples == 1 or self.cfg.dropout <= 0:
            depth = self(images)["depth"]
            self.train(was_training)
            return depth, torch.zeros_like(depth)
        for m in self.modules():
            if isinstance(m, nn.modules.dropout._DropoutNd):
                m.train()
        try:
            draws = [self(images.expand(min(chunk, samples - k), -1, -1, -1))["depth"]
                     for k in range(0, samples, chunk)]
        finally:
            self.train(was_training)
        depth = torch.cat(draws)  # [samples, 1, H, W]
        return depth.mean(0, keepdim=True), depth.std(0, keepdim=True)

    def config_dict(self) -> dict:
        return asdict(self.cfg)

    def model_config(self) -> dict:
        return {"d3net": self.config_dict()}
