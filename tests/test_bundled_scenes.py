"""The bundled scenes are valid, small, and reproducible by the commands in scenes/README.md."""

from __future__ import annotations

import shlex

import numpy as np
import pytest

from conftest import REPO
from gs_dfd.cli import main
from gs_dfd.data.scene import load_scene

SCENES = REPO / "scenes"


def _commands() -> dict[str, list[str]]:
    text = (SCENES / "README.md").read_text().replace("\\\n", " ")
    cmds = {}
    for line in text.splitlines():
        if line.strip().startswith("gs-dfd synth"):
            argv = shlex.split(line.strip())[1:]
            cmds[argv[argv.index("--out") + 1].split("/")[-1]] = argv
    return cmds


def test_bundled_scenes_are_small_and_valid():
    folders = sorted(p for p in SCENES.iterdir() if (p / "scene.json").exists())
    assert len(folders) >= 3
    total = sum(f.stat().st_size for f in SCENES.rglob("*") if f.is_file())
    assert total <= 2 * 1024 * 1024, f"scenes/ is {total / 2**20:.2f} MB (limit 2 MB)"
    for folder in folders:
        scene = load_scene(folder)
        assert scene.load_depth_gt() is not None and scene.all_in_focus is not None
    assert set(_commands()) == {f.name for f in folders}


@pytest.mark.parametrize("name", ["textureless_nyu_160"])
def test_bundled_scene_is_reproducible(tmp_path, name):
    argv = _commands()[name]
    argv[argv.index("--out") + 1] = str(tmp_path / name)
    assert main(argv + ["--no-progress"]) == 0
    fresh, shipped = load_scene(tmp_path / name), load_scene(SCENES / name)
    np.testing.assert_array_equal(fresh.load_frames(), shipped.load_frames())
    np.testing.assert_array_equal(fresh.load_depth_gt(), shipped.load_depth_gt())
