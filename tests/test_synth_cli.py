"""gs-dfd synth end to end: scenes that check accepts, bad input that leaves nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from gs_dfd.cli import main
from gs_dfd.data.scene import load_scene


def _rgbd_inputs(tmp_path: Path, depth: np.ndarray | None = None) -> tuple[Path, Path]:
    rng = np.random.default_rng(1)
    rgb = (rng.random((48, 64, 3)) * 255).astype(np.uint8)
    if depth is None:
        depth = np.tile(np.linspace(0.8, 3.0, 64), (48, 1))
    iio.imwrite(tmp_path / "rgb.png", rgb)
    np.save(tmp_path / "depth.npy", depth.astype(np.float32))
    return tmp_path / "rgb.png", tmp_path / "depth.npy"


def test_synth_rgbd_writes_valid_scene(tmp_path, capsys):
    rgb, depth = _rgbd_inputs(tmp_path)
    out = tmp_path / "scene"
    code = main(["synth", "rgbd", "--rgb", str(rgb), "--depth", str(depth), "--camera", "nyu", "--out", str(out),
                 "--width", "32", "--no-progress"])
    assert code == 0
    scene = load_scene(out)
    assert (scene.camera.width, scene.camera.height) == (32, 24)
    assert [f.focus_distance_m for f in scene.frames] == [1.0, 1.5, 2.5, 4.0, 6.0]
    assert scene.camera.pixel_pitch_m == pytest.approx(12e-6 * 640 / 32)
    gt = scene.load_depth_gt()
    assert gt.min() > 0.79 and gt.max() < 3.01
    assert scene.load_all_in_focus().shape == (24, 32, 3)
    assert main(["check", "--scene", str(out)]) == 0


def test_synth_rgbd_aperture_stack_and_focus_override(tmp_path):
    rgb, depth = _rgbd_inputs(tmp_path)
    out = tmp_path / "scene"
    assert main(["synth", "rgbd", "--rgb", str(rgb), "--depth", str(depth), "--out", str(out), "--camera", "nyu",
                 "--focus-distances", "1.7", "--f-numbers", "2.8", "8", "--no-progress"]) == 0
    scene = load_scene(out)
    assert [scene.f_number(i) for i in range(2)] == [2.8, 8.0]
    frames = scene.load_frames()
    # The wide aperture blurs more: less high-frequency energy.
    hf = [np.abs(np.diff(f, axis=1)).mean() for f in frames]
    assert hf[0] < hf[1]


@pytest.mark.parametrize("bad, words", [
    (np.full((48, 64), np.nan), "NaN depth"),
    (-np.ones((48, 64)), "negative depth"),
    (np.zeros((48, 64)), "no valid"),
    (np.ones((40, 64)), "depth is 64x40 but --rgb is 64x48"),
])
def test_synth_rgbd_bad_depth_writes_nothing(tmp_path, capsys, bad, words):
    rgb, depth = _rgbd_inputs(tmp_path, bad)
    out = tmp_path / "scene"
    assert main(["synth", "rgbd", "--rgb", str(rgb), "--depth", str(depth), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert words in err and "depth.npy" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".scene")]  # no temp left behind


def test_synth_refuses_focus_inside_focal_length(tmp_path, capsys):
    rgb, depth = _rgbd_inputs(tmp_path)
    assert main(["synth", "rgbd", "--rgb", str(rgb), "--depth", str(depth), "--out", str(tmp_path / "s"),
                 "--focus-distances", "0.01"]) == 2
    assert "--focus-distances" in capsys.readouterr().err


def test_synth_existing_output_needs_overwrite_and_only_replaces_its_own(tmp_path, capsys):
    out = tmp_path / "s"
    args = ["synth", "procedural", "--out", str(out), "--width", "32", "--height", "24", "--no-progress"]
    assert main(args) == 0
    (out / "stale.txt").write_text("x")
    assert main(args) == 2
    assert "exists" in capsys.readouterr().err and (out / "stale.txt").exists()
    assert main(args + ["--overwrite"]) == 0
    assert not (out / "stale.txt").exists() and load_scene(out).camera.width == 32
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("x")
    assert main(["synth", "procedural", "--out", str(mine), "--width", "32", "--height", "24", "--overwrite"]) == 2
    assert "did not write" in capsys.readouterr().err and (mine / "keep.txt").exists()


def test_synth_procedural_count_and_seed(tmp_path):
    out = tmp_path / "many"
    assert main(["synth", "procedural", "--kind", "textureless", "--count", "2", "--seed", "5", "--width", "40",
                 "--height", "30", "--depth-format", "png16", "--out", str(out), "--no-progress"]) == 0
    a, b = (load_scene(out / f"scene_00{i}") for i in range(2))
    assert json.loads((out / "scene_000/scene.json").read_text())["depth_gt_scale"] > 0
    assert not np.array_equal(a.load_frames(), b.load_frames())
    again = tmp_path / "again"
    assert main(["synth", "procedural", "--kind", "textureless", "--seed", "5", "--width", "40", "--height", "30",
                 "--depth-format", "png16", "--out", str(again), "--no-progress"]) == 0
    np.testing.assert_array_equal(load_scene(again).load_frames(), a.load_frames())
