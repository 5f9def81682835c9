"""Depth from focus on stacks from the independent layered defocus model."""

from __future__ import annotations

import numpy as np
import pytest

from gs_dfd.eval.metrics import depth_metrics
from gs_dfd.fit.dff import depth_from_focus, modified_laplacian
from gs_dfd.optics import get_preset
from gs_dfd.synth.layered import render_focal_stack
from gs_dfd.synth.procedural import make_procedural_scene


def test_modified_laplacian_is_zero_on_flat_and_ramps():
    assert np.allclose(modified_laplacian(np.full((10, 10), 0.3)), 0)
    ramp = np.tile(np.linspace(0, 1, 12), (12, 1))
    assert np.allclose(modified_laplacian(ramp, window_px=3)[3:-3, 3:-3], 0, atol=1e-12)


def test_dff_recovers_depth_of_textured_scene():
    nyu = get_preset("nyu")
    aif, depth = make_procedural_scene("planes", 192, 144, seed=4, min_depth_m=0.9, max_depth_m=3.5)
    lenses = [nyu.lens(s, width_px=192) for s in nyu.focus_distances_m]
    stack = render_focal_stack(aif, depth, lenses)
    shuffled = [3, 0, 4, 1, 2]  # DFF must not depend on frame order
    res = depth_from_focus(stack[shuffled], np.array(nyu.focus_distances_m)[shuffled], window_px=5)
    m = depth_metrics(res.depth_m, depth, 0.5, 4.0)
    assert m["abs_rel"] < 0.15  # a coarse floor (0.108 measured) on a small 5-frame stack
    # Sub-frame interpolation gives more distinct depths than frames.
    assert len(np.unique(np.round(res.depth_m, 3))) > 20
    assert res.confidence.shape == depth.shape and 0 <= res.confidence.min() <= res.confidence.max() <= 1


def test_dff_needs_distinct_focus():
    with pytest.raises(ValueError, match="two distinct focus"):
        depth_from_focus(np.zeros((2, 8, 8, 3)), np.array([1.7, 1.7]))
