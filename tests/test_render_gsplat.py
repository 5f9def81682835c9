"""The gsplat CUDA backend against the PyTorch reference (skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch

from gs_dfd.render import render_defocus
from test_render_common import lens_for_max_coc, random_scene

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="gsplat backend needs CUDA")


@pytest.mark.parametrize("max_coc", [0.0, 15.0])
def test_gsplat_matches_torch(max_coc):
    pytest.importorskip("gsplat")
    means, quats, scales, opac, colors, cam = random_scene(400, seed=2)
    opac = opac.clamp(max=0.95)  # gsplat clamps alpha at 0.999, the reference at 0.99
    lenses = [lens_for_max_coc(max(max_coc, 1e-6), focus_m=fd) for fd in (1.5, 3.0)]
    outs = {}
    for be, dev in (("torch", "cpu"), ("gsplat", "cuda")):
        ps = [t.to(dev).requires_grad_(True) for t in (means, quats, scales, opac, colors)]
        out = render_defocus(*ps, cam, lenses, backend=be, return_coc=True)
        (out.rgb.sum() + out.depth_accum.mean()).backward()
        outs[be] = (out, [p.grad.cpu() for p in ps])
    ref, got = outs["torch"][0], outs["gsplat"][0]
    assert (ref.rgb - got.rgb.cpu()).abs().max() < 1e-3
    assert (ref.alpha - got.alpha.cpu()).abs().max() < 1e-3
    for gr, gg in zip(outs["torch"][1], outs["gsplat"][1]):
        assert ((gr - gg).norm() / gr.norm()) < 1e-2
