"""A small U-Net, the backbone every network here shares (Ronneberger et al., MICCAI 2015).

Small on purpose: it must train on a 2-core CPU in hours and run a 320x240
image in well under 100 ms. Inputs of any size work: the decoder crops or
pads to the skip connection it joins.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ConvBlock(nn.Sequential):
    """3x3 convolutions with group norm and ELU; optional dropout (kept on for Monte-Carlo dropout).

    ``light``: one convolution, no normalisation, ReLU. The full-resolution
    level uses it: there a second convolution and group norm cost more than
    all the coarser levels together (measured on 2 CPU cores).
    """

    def __init__(self, cin: int, cout: int, dropout: float = 0.0, light: bool = False) -> None:
        if light:
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]
        else:
            layers = [nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(_groups(cout), cout), nn.ELU(inplace=True),
                      nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(_groups(cout), cout), nn.ELU(inplace=True)]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        super().__init__(*layers)


def _groups(channels: int) -> int:
    for g in (8, 4, 2):
        if channels % g == 0:
            return g
    return 1


def _match(x: Tensor, ref: Tensor) -> Tensor:
    """Crop or zero-pad ``x`` [B, C, h, w] to ``ref``'s spatial size (odd sizes halve unevenly)."""
    dh, dw = ref.shape[-2] - x.shape[-2], ref.shape[-1] - x.shape[-1]
    if dh or dw:
        x = F.pad(x, (0, max(dw, 0), 0, max(dh, 0)))[..., : ref.shape[-2], : ref.shape[-1]]
    return x


class UNetEncoder(nn.Module):
    def __init__(self, in_channels: int, widths: Sequence[int], dropout: float = 0.0) -> None:
        super().__init__()
        self.stages = nn.ModuleList()
        cin = in_channels
        for i, w in enumerate(widths):
            self.stages.append(ConvBlock(cin, w, dropout if i >= len(widths) - 2 else 0.0, light=i == 0))
            cin = w

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = F.avg_pool2d(x, 2, ceil_mode=True)
            x = stage(x)
            feats.append(x)
        return feats


class UNetDecoder(nn.Module):
    def __init__(self, widths: Sequence[int], out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.stages = nn.ModuleList()
        for i in range(len(widths) - 1, 0, -1):
            self.stages.append(ConvBlock(widths[i] + widths[i - 1], widths[i - 1], dropout if i >= len(widths) - 2 else 0.0,
                                         light=i == 1))
        self.head = nn.Conv2d(widths[0], out_channels, 3, padding=1)

    def forward(self, feats: list[Tensor]) -> Tensor:
        x = feats[-1]
        for stage, skip in zip(self.stages, reversed(feats[:-1])):
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            x = stage(torch.cat([_match(x, skip), skip], dim=1))
        return self.head(x)


class GlobalContext(nn.Module):
    """Adds to every bottleneck position a vector computed from the whole image's pooled features (mean and
    standard deviation per channel). Group norm divides each image's feature statistics out; this hands them
    back as information, a per-image calibration (as in squeeze-and-excitation, Hu et al., CVPR 2018, but
    additive). Starts as the identity."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * channels, channels), nn.ELU(inplace=True),
                                 nn.Linear(channels, channels))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, h, w] -> [B, C, h, w]``."""
        # correction=0: a 1x1 bottleneck (a tiny image) has a spread of 0, not nan
        pooled = torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3), correction=0)], 1)  # [B, 2C]
        return x + self.mlp(pooled)[:, :, None, None]


class UNet(nn.Module):
    """Encoder-decoder with skips: ``[B, in, H, W] -> [B, out, H, W]``."""

    def __init__(self, in_channels: int, out_channels: int, widths: Sequence[int] = (8, 16, 32, 48, 64),
                 dropout: float = 0.0, global_context: bool = False) -> None:
        super().__init__()
        self.encoder = UNetEncoder(in_channels, widths, dropout)
        self.context = GlobalContext(widths[-1]) if global_context else None
        self.decoder = UNetDecoder(widths, out_channels, dropout)
        self.channels_last = False
        """Run in the channels-last layout (:func:`use_channels_last`); the output is always contiguous NCHW."""

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        feats = self.encoder(x)
        if self.context is not None:
            feats[-1] = self.context(feats[-1])
        out = self.decoder(feats)
        return out.contiguous() if self.channels_last else out


def use_channels_last(model: nn.Module) -> nn.Module:
    """Put every U-Net of ``model`` in the channels-last layout, in place; returns ``model``.

    For inference on CPU: oneDNN's convolutions, pooling and upsampling run faster on NHWC tensors (the shipped
    gs-siamese network on a 320x240 image, 2 cores: 0.87-0.88x the NCHW model time, ``tools/bench_predict.py
    --compare-layouts``). Training keeps NCHW: a forward and backward pass of 2 pairs of whole frames took 1.05x as
    long channels-last. Same weights, same results up to float rounding (``tests/test_models.py``)."""
    for module in model.modules():
        if isinstance(module, UNet):
            module.to(memory_format=torch.channels_last)
            module.channels_last = True
    return model


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
