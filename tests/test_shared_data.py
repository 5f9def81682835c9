"""Real data from ../shared/data (skipped when absent): converters and the issue's acceptance checks."""

from __future__ import annotations

import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest

from conftest import REPO, shared_path
from gs_dfd.cli import main
from gs_dfd.data.scene import load_scene

pytestmark = pytest.mark.shared


def test_nyuv2_synth_is_accepted_and_cropped_copy_refused(tmp_path, capsys):
    src = shared_path("nyuv2_sample")
    out = tmp_path / "nyu"
    assert main(["synth", "rgbd", "--rgb", str(src / "rgb_0045.png"), "--depth", str(src / "depth_0045.png"),
                 "--depth-scale", "1e-4", "--camera", "nyu", "--width", "320", "--out", str(out),
                 "--no-progress"]) == 0
    assert main(["check", "--scene", str(out)]) == 0
    scene = load_scene(out)
    assert (scene.camera.width, scene.camera.height, len(scene.frames)) == (320, 240, 5)
    gt = scene.load_depth_gt()
    assert 0.6 < gt[gt > 0].min() and gt.max() < 2.0  # the sample spans 0.71-1.91 m

    # A copy with one frame cropped is refused, naming its file.
    bad = tmp_path / "nyu_cropped"
    subprocess.run(["cp", "-r", str(out), str(bad)], check=True)
    img = iio.imread(bad / "frames/002.png")
    iio.imwrite(bad / "frames/002.png", img[:-8])
    capsys.readouterr()
    assert main(["check", "--scene", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "frames/002.png" in err and "320x232" in err and len(err.strip().splitlines()) == 1


def test_convert_d3net_indoor(tmp_path):
    src = shared_path("d3net_indoor_train")
    out = tmp_path / "d3"
    proc = subprocess.run([sys.executable, str(REPO / "tools/convert_d3net_indoor.py"), "--src", str(src),
                           "--out", str(out), "--ids", "000", "005"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    scene = load_scene(out / "005")
    assert [scene.f_number(i) for i in range(2)] == [2.8, 8.0]
    assert all(f.focus_distance_m == 1.7 for f in scene.frames)
    frames = scene.load_frames()
    assert frames.shape == (2, 432, 645, 3)
    depth = scene.load_depth_gt()
    valid = depth > 0
    assert valid.mean() > 0.5 and 0.3 < np.median(depth[valid]) < 6.0  # metres, not millimetres
    # The f/2.8 frame is the more defocused one.
    hf = [np.abs(np.diff(f.mean(-1), axis=1)).mean() for f in frames]
    assert hf[0] < hf[1]


def test_convert_d3net_missing_source_is_clean_error(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "tools/convert_d3net_indoor.py"), "--src", str(tmp_path),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "index.csv not found" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_convert_rgbd_sets_middlebury_and_nyu(tmp_path):
    shared_path("middlebury_2001_2003")
    out = tmp_path / "stacks"
    proc = subprocess.run([sys.executable, str(REPO / "tools/convert_rgbd_sets.py"), "--src", str(REPO.parent / "shared/data"),
                           "--out", str(out), "--width", "160", "--only", "nyuv2_0045", "middlebury_tsukuba"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    tsukuba = load_scene(out / "middlebury_tsukuba")
    gt = tsukuba.load_depth_gt()
    assert gt[gt > 0].min() == pytest.approx(1.0, rel=0.02) and gt.max() == pytest.approx(4.0, rel=0.02)
    assert load_scene(out / "nyuv2_0045").camera.width == 160
