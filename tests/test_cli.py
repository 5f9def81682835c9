"""The gs-dfd command line: help texts, one-line errors, exit codes, nothing half-written."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import imageio.v3 as iio
import pytest

from conftest import REPO, edit_scene_json
from gs_dfd.cli import main

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gs_dfd.cli", *args], capture_output=True, text=True, env=ENV,
                          timeout=300)


def test_check_ok_prints_summary(tiny_scene, capsys, tmp_path):
    assert main(["check", "--scene", str(tiny_scene), "--preview", str(tmp_path / "p.png")]) == 0
    out = capsys.readouterr().out
    assert "frames       3" in out and "OK: scene is valid" in out
    assert "1.500" in out  # a focus distance
    assert iio.imread(tmp_path / "p.png").ndim == 3


def test_check_bad_scene_is_one_line_without_traceback(tiny_scene):
    img = iio.imread(tiny_scene / "frames/001.png")
    iio.imwrite(tiny_scene / "frames/001.png", img[2:, 3:])  # a cropped frame
    proc = run_cli("check", "--scene", str(tiny_scene))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "frames/001.png" in lines[0] and "frames[1].image" in lines[0]
    assert "Traceback" not in proc.stderr


def test_help_joins_docstrings_wrapped_in_the_source():
    """A field docstring wrapped over source lines is one paragraph in --help (tyro 1.0 kept each indented source
    line break); list items keep their lines."""
    import gs_dfd.cli  # noqa: F401  (applies the fix)
    from tyro import _docstrings, _strings

    from gs_dfd.train.config import TrainConfig

    if not hasattr(_docstrings, "get_field_docstring"):
        pytest.skip("tyro's internals moved: the fix is a no-op there")
    doc = _docstrings.get_field_docstring(TrainConfig, "init_weights", ())
    assert "e.g. on more scenes: the optimiser, step count" in doc, doc
    assert _strings.remove_single_line_breaks("A list:\n    - one\n    - two\n    (wrapped)") == "A list:\n- one\n- two (wrapped)"


def test_debug_shows_traceback(tiny_scene):
    edit_scene_json(tiny_scene, lambda d: d.update(format="other"))
    proc = run_cli("check", "--scene", str(tiny_scene), "--debug")
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "InputError" in proc.stderr


@pytest.mark.parametrize("argv", [
    ["--help"], ["check", "--help"], ["synth", "--help"], ["synth", "rgbd", "--help"], ["synth", "procedural", "--help"],
    ["fit", "--help"], ["train", "--help"], ["predict", "--help"], ["eval", "--help"], ["export", "--help"],
])
def test_help_documents_every_flag(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for ch in "│╭╮╰╯─":
        text = text.replace(ch, " ")
    lines = [ln.strip() for ln in text.splitlines()]
    flag_rows = [i for i, ln in enumerate(lines) if re.match(r"--[a-z]", ln) and not ln.startswith("--help")]
    for i in flag_rows:
        # A documented flag has prose on its line or the next ones, beyond the "(default: ...)" note.
        block = " ".join([lines[i].split(None, 1)[1] if " " in lines[i] else ""] + lines[i + 1:i + 3])
        prose = block.split("(default")[0].split("(required")[0]
        assert len(re.findall(r"[A-Za-z]{3,}", prose)) >= 3, f"undocumented flag in {argv}: {lines[i]}"
    if argv[-2:] == ["rgbd", "--help"]:
        assert {"--rgb", "--depth", "--depth-scale", "--focus-distances", "--camera", "--out"} <= {
            lines[i].split()[0] for i in flag_rows}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_entry_points_keep_freed_memory_unless_the_environment_says_otherwise():
    """gs_dfd.utils.malloc: every setting applied once per process, a MALLOC_*_ variable left to glibc."""
    code = ("from gs_dfd.utils.malloc import keep_freed_memory as k; "
            "print(sorted(k()), sorted(k()))")
    env = {key: v for key, v in os.environ.items() if not key.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['MALLOC_MMAP_THRESHOLD_', 'MALLOC_TOP_PAD_', 'MALLOC_TRIM_THRESHOLD_'] []", out
    env["MALLOC_MMAP_THRESHOLD_"] = "1048576"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['MALLOC_TOP_PAD_', 'MALLOC_TRIM_THRESHOLD_'] []", out
