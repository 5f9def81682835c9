"""clip_like_sensor: a clipped pixel only bounds the light it saw."""

import pytest
import torch

from gs_dfd.fit.losses import clip_like_sensor


def test_clipped_targets_accept_renders_past_them_and_nothing_else():
    target = torch.tensor([1.0, 1.0, 0.5, 0.0, 0.0, 0.9])
    rgb = torch.tensor([1.3, 0.8, 0.7, -0.2, 0.1, 1.2], requires_grad=True)
    out = clip_like_sensor(rgb, target)
    # Brighter than a clipped-white pixel, darker than a clipped-black one: no error; everything else kept.
    assert out.tolist() == pytest.approx([1.0, 0.8, 0.7, 0.0, 0.1, 1.2])
    out.sum().backward()
    assert rgb.grad.tolist() == [0.0, 1.0, 1.0, 0.0, 1.0, 1.0]
