"""Procedural scenes: shapes, ranges, determinism, and that each kind is what it claims."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage

from gs_dfd.synth.procedural import PROCEDURAL_KINDS, make_procedural_scene

W, H = 96, 72
SEEDS = range(4)


def _flat_fraction(aif: np.ndarray) -> float:
    """Fraction of pixels whose 3x3 neighbourhood has exactly one colour (no texture at all)."""
    spread = ndimage.maximum_filter(aif, size=(3, 3, 1)) - ndimage.minimum_filter(aif, size=(3, 3, 1))
    return float(np.all(spread[1:-1, 1:-1] == 0, axis=-1).mean())


def _depth_steps(depth: np.ndarray, min_d: float, max_d: float) -> int:
    """Neighbour pairs where inverse depth jumps: a step far larger than the steps beside it.

    Planes (creases included) change inverse depth by similar amounts from
    pixel to pixel however slanted they are; an occlusion edge is a spike.
    """
    q = 1.0 / depth.astype(np.float64)
    eps = 0.02 * (1.0 / min_d - 1.0 / max_d)
    count = 0
    for d in (np.abs(np.diff(q, axis=0)), np.abs(np.diff(q, axis=1)).T):
        mid, before, after = d[1:-1], d[:-2], d[2:]
        count += int((mid > 3.0 * np.maximum(before, after) + eps).sum())
    return count


@pytest.mark.parametrize("kind", PROCEDURAL_KINDS)
@pytest.mark.parametrize("size", [(W, H), (32, 24), (40, 64)])
def test_shapes_dtypes_ranges(kind, size):
    w, h = size
    for seed in SEEDS:
        aif, depth = make_procedural_scene(kind, w, h, seed)
        assert aif.shape == (h, w, 3) and aif.dtype == np.float32
        assert depth.shape == (h, w) and depth.dtype == np.float32
        assert np.all(np.isfinite(aif)) and np.all(np.isfinite(depth))
        assert aif.min() >= 0.02 - 1e-7 and aif.max() <= 0.98 + 1e-7
        assert depth.min() >= 0.6 - 1e-6 and depth.max() <= 4.0 + 1e-5


@pytest.mark.parametrize("kind", PROCEDURAL_KINDS)
def test_custom_depth_range(kind):
    aif, depth = make_procedural_scene(kind, W, H, 3, min_depth_m=1.5, max_depth_m=2.0)
    assert depth.min() >= 1.5 - 1e-6 and depth.max() <= 2.0 + 1e-6
    assert depth.max() - depth.min() > 0.1  # the range is used, not collapsed


@pytest.mark.parametrize("kind", PROCEDURAL_KINDS)
def test_deterministic_by_seed(kind):
    a1, d1 = make_procedural_scene(kind, W, H, 11)
    a2, d2 = make_procedural_scene(kind, W, H, 11)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(d1, d2)


@pytest.mark.parametrize("kind", PROCEDURAL_KINDS)
def test_seeds_and_kinds_differ(kind):
    a1, d1 = make_procedural_scene(kind, W, H, 1)
    a2, d2 = make_procedural_scene(kind, W, H, 2)
    assert np.abs(a1 - a2).mean() > 0.02 and np.abs(d1 - d2).mean() > 0.01
    other = PROCEDURAL_KINDS[(PROCEDURAL_KINDS.index(kind) + 1) % len(PROCEDURAL_KINDS)]
    a3, _ = make_procedural_scene(other, W, H, 1)
    assert np.abs(a1 - a3).mean() > 0.02


@pytest.mark.parametrize("kind", ["planes", "occlusion"])
def test_textured_kinds_have_texture_everywhere(kind):
    for seed in SEEDS:
        aif, _ = make_procedural_scene(kind, W, H, seed)
        assert _flat_fraction(aif) < 0.01
        # enough fine detail for a clear defocus signal
        assert np.abs(np.diff(aif, axis=1)).mean() > 0.02


def test_textureless_has_large_uniform_regions():
    for seed in SEEDS:
        aif, _ = make_procedural_scene("textureless", W, H, seed)
        assert _flat_fraction(aif) > 0.08, seed


def test_occlusion_has_depth_discontinuities():
    for seed in SEEDS:
        _, depth = make_procedural_scene("occlusion", W, H, seed)
        assert _depth_steps(depth, 0.6, 4.0) > 0.5 * min(W, H), seed  # object outlines


def test_planes_are_continuous_and_piecewise_planar():
    for seed in SEEDS:
        _, depth = make_procedural_scene("planes", W, H, seed)
        assert _depth_steps(depth, 0.6, 4.0) == 0, seed  # a room has creases, no occlusions
        q = 1.0 / depth.astype(np.float64)
        # inverse depth is affine on each plane: second differences vanish except along creases
        centre = q[1:-1, 1:-1]
        curv = np.abs(q[1:-1, 2:] - 2 * centre + q[1:-1, :-2]) + np.abs(q[2:, 1:-1] - 2 * centre + q[:-2, 1:-1])
        assert (curv > 1e-4).mean() < 0.08, seed


def test_fast_enough():
    start = time.perf_counter()
    for kind in PROCEDURAL_KINDS:
        make_procedural_scene(kind, 320, 240, 0)
    assert (time.perf_counter() - start) / len(PROCEDURAL_KINDS) < 1.5  # about 0.1-0.3 s each, loaded CI slack


def test_invalid_inputs():
    with pytest.raises(ValueError, match="planes, occlusion, textureless, mixed"):
        make_procedural_scene("forest", W, H, 0)
    for w, h in [(0, H), (W, -3), (8, H), (W, 10.5), (True, H)]:
        with pytest.raises(ValueError, match="width|height"):
            make_procedural_scene("planes", w, h, 0)
    for seed in (-1, 1.5, None):
        with pytest.raises(ValueError, match="seed"):
            make_procedural_scene("planes", W, H, seed)
    for lo, hi in [(2.0, 1.0), (1.0, 1.0), (0.0, 3.0), (-1.0, 3.0), (0.5, float("inf")), (float("nan"), 2.0)]:
        with pytest.raises(ValueError, match="min_depth_m < max_depth_m"):
            make_procedural_scene("planes", W, H, 0, min_depth_m=lo, max_depth_m=hi)
