"""Edge-aware propagation of the fitted depth into textureless regions: the solve, and the fit that uses it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from gs_dfd.cli import main
from gs_dfd.fit.propagation import grid_edges, propagate_inverse_depth
from gs_dfd.optics.presets import get_preset
from gs_dfd.synth.stack import StackSpec, synthesize_scene


def test_grid_edges_join_each_pixel_to_its_right_and_lower_neighbour():
    a, b = grid_edges(3, 4)
    assert len(a) == 3 * 3 + 2 * 4
    assert set(zip(a.tolist(), b.tolist())) >= {(0, 1), (0, 4), (10, 11), (7, 11)}
    assert np.all((b - a == 1) | (b - a == 4))


def test_depth_flows_along_one_colour_and_stops_at_a_colour_edge():
    h, w = 20, 30
    guide = np.zeros((h, w, 3), np.float32)
    guide[:, 15:] = 1.0  # two surfaces: black left, white right
    inv_depth = np.full((h, w), 5.0, np.float32)  # unmeasured: an arbitrary start
    weight = np.zeros((h, w), np.float32)
    inv_depth[10, 2], weight[10, 2] = 0.5, 100.0  # one measured pixel on each surface
    inv_depth[3, 27], weight[3, 27] = 1.0, 100.0
    out = propagate_inverse_depth(inv_depth, weight, guide, smoothness=30.0, colour_sigma=0.1)
    np.testing.assert_allclose(out[:, :15], 0.5, atol=0.02)
    np.testing.assert_allclose(out[:, 15:], 1.0, atol=0.02)


def test_measured_depth_stays_and_no_smoothness_changes_nothing():
    rng = np.random.default_rng(0)
    inv_depth = rng.uniform(0.3, 2.0, (16, 16)).astype(np.float32)
    guide = np.full((16, 16, 3), 0.5, np.float32)
    measured = propagate_inverse_depth(inv_depth, np.full((16, 16), 100.0, np.float32), guide, 0.01, 0.1)
    np.testing.assert_allclose(measured, inv_depth, rtol=0.01)
    np.testing.assert_allclose(propagate_inverse_depth(inv_depth, np.zeros((16, 16), np.float32), guide, 0.0, 0.1),
                               inv_depth, rtol=1e-5)


@pytest.fixture(scope="module")
def wall_scene(tmp_path_factory) -> Path:
    """A slanted textured band above a wide wall of one colour, the same plane (1.2-2.4 m): the wall's depth
    is invisible to defocus."""
    h, w = 48, 96
    rng = np.random.default_rng(1)
    aif = np.full((h, w, 3), 0.55, np.float32)
    aif[:14] = np.clip(0.55 + 0.35 * (ndimage.gaussian_filter(rng.random((14, w, 3)), (1.0, 1.0, 0)) - 0.5) * 4, 0, 1)
    depth = np.tile(np.linspace(1.2, 2.4, w, dtype=np.float32), (h, 1))
    out = tmp_path_factory.mktemp("wall") / "scene"
    spec = StackSpec.from_preset(get_preset("nyu"), focus_distances_m=(1.0, 1.5, 2.5, 4.0))
    synthesize_scene(out, aif, depth, spec)
    return out


def test_the_fit_fills_a_textureless_wall_from_its_textured_edge(wall_scene, tmp_path):
    flags = ["--iterations", "60", "--no-progress", "--init", "constant", "--init-depth-m", "3.5"]
    assert main(["fit", "--scene", str(wall_scene), "--out", str(tmp_path / "p"), *flags]) == 0
    assert main(["fit", "--scene", str(wall_scene), "--out", str(tmp_path / "n"), *flags, "--propagate", "off"]) == 0
    gt = np.tile(np.linspace(1.2, 2.4, 96, dtype=np.float32), (48, 1))
    wall = (slice(24, 48), slice(8, 88))  # well inside the wall, away from the image border

    def wall_abs_rel(run: str) -> float:
        d = np.load(tmp_path / run / "depth.npy")
        return float(np.mean(np.abs(d[wall] - gt[wall]) / gt[wall]))

    propagated, plain = wall_abs_rel("p"), wall_abs_rel("n")
    assert propagated < 0.15 and propagated < 0.25 * plain, (propagated, plain)
    report = json.loads((tmp_path / "p" / "metrics.json").read_text())["propagation"]
    assert report["step"] == 50 and report["moved_over_10_percent"] > 0.3
    assert json.loads((tmp_path / "n" / "metrics.json").read_text())["propagation"] is None


def test_auto_propagates_focal_stacks_but_not_aperture_pairs(wall_scene, tmp_path):
    """An aperture pair's textured depth may sit on the wrong side of the focus plane: auto leaves it alone."""
    pair = tmp_path / "pair"
    shutil.copytree(wall_scene, pair)
    data = json.loads((pair / "scene.json").read_text())
    data["frames"] = [dict(data["frames"][1]), dict(data["frames"][1], f_number=16.0)]
    (pair / "scene.json").write_text(json.dumps(data))
    flags = ["--iterations", "6", "--no-progress", "--init", "constant"]
    for scene, out, expected in ((wall_scene, "stack_fit", True), (pair, "pair_fit", False)):
        assert main(["fit", "--scene", str(scene), "--out", str(tmp_path / out), *flags]) == 0
        report = json.loads((tmp_path / out / "metrics.json").read_text())["propagation"]
        assert (report is not None) == expected, (out, report)
    assert main(["fit", "--scene", str(pair), "--out", str(tmp_path / "on"), *flags, "--propagate", "on"]) == 0
    assert json.loads((tmp_path / "on" / "metrics.json").read_text())["propagation"] is not None


def test_compare_fits_tool_draws_one_panel_and_refuses_a_folder_without_depth(wall_scene, tmp_path):
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    fits = []
    for name, scale in (("a", 1.0), ("b", 1.1)):
        (tmp_path / name).mkdir()
        np.save(tmp_path / name / "depth.npy", (scale * np.tile(np.linspace(1.2, 2.4, 96), (48, 1))).astype(np.float32))
        fits.append(str(tmp_path / name))
    (tmp_path / "a" / "metrics.json").write_text(json.dumps({"depth": {"abs_rel": 0.0, "delta1": 1.0}}))
    cmd = [sys.executable, str(repo / "tools" / "compare_fits.py"), "--scene", str(wall_scene), "--out"]
    ok = subprocess.run([*cmd, str(tmp_path / "cmp.png"), "--fits", *fits], capture_output=True, text=True)
    assert ok.returncode == 0 and (tmp_path / "cmp.png").stat().st_size > 1000, ok.stderr
    bad = subprocess.run([*cmd, str(tmp_path / "bad.png"), "--fits", str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode != 0 and "depth.npy" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "bad.png").exists()
