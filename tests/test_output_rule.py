"""The output rule (gs_dfd.utils.outputs), tried on every command that writes.

Commands x defect classes: an output that equals, lies inside or contains an input (with and without
--overwrite); --overwrite on something gs-dfd did not write; a second run on a busy output; a full
disk or a read-only folder mid-run; a parent that is a file; stale files of an earlier run; Ctrl-C
and --resume. Every refusal is one line on stderr, exit 2, and the inputs are byte-for-byte unchanged.
"""

from __future__ import annotations

import errno
import hashlib
from pathlib import Path

import numpy as np
import pytest

from gs_dfd.cli import main
from gs_dfd.utils import atomic
from gs_dfd.utils.outputs import (
    MARKER_FILE, OutputDir, check_output, is_gs_dfd_file, output_lock, partial_dir, sign_file,
)
from conftest import write_tiny_scene


def _digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` (or ``root`` itself) and its content hash."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root.parent)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _run(argv: list, capsys) -> tuple[int, str]:
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    return rc, err


def _one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    assert err.startswith("error: ") and "\n" not in err, err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, err


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A tiny scene inside a data folder, a prediction for it, a fit of it, a user's own folder and file."""
    root = tmp_path_factory.mktemp("world")
    data = root / "data"
    scene = write_tiny_scene(data / "scene")
    pred = root / "pred.npy"
    np.save(pred, np.full((24, 32), 1.5, np.float32))
    fit = root / "fit"
    assert main(["fit", "--scene", str(scene), "--out", str(fit), "--method", "dff", "--no-progress"]) == 0
    mine = root / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("a user's own file")
    (root / "photo.png").write_bytes((scene / "frames" / "000.png").read_bytes())  # not signed by gs-dfd
    return {"root": root, "data": data, "scene": scene, "pred": pred, "fit": fit, "mine": mine}


# One argv per command; OUT is the output under test, the rest are its inputs.
def _argv(command: str, w: dict[str, Path], out: Path) -> list:
    s = w["scene"]
    return {
        "fit": ["fit", "--scene", s, "--out", out, "--method", "dff", "--no-progress"],
        "predict": ["predict", "--scene", s, "--out", out, "--no-progress"],
        "predict-image": ["predict", "--image", s / "frames", "--camera", "nyu", "--focus-distance-m", "1",
                          "--out", out, "--no-progress"],
        "eval": ["eval", "--scene", s, "--depth", w["pred"], "--out", out],
        "synth": ["synth", "rgbd", "--rgb", s / "aif.png", "--depth", s / "depth_gt.npy", "--camera", "nyu",
                  "--width", "32", "--out", out, "--no-progress"],
        "train": ["train", "--scenes", s, "--out", out, "--steps", "1", "--batch-size", "1", "--crop-hw", "32", "32",
                  "--fit-iterations", "2", "--no-progress"],
        "check": ["check", "--scene", s, "--preview", out],
        "export": ["export", "--fit", w["fit"], "--out", out],
    }[command]


FOLDER_COMMANDS = ["fit", "predict", "predict-image", "eval", "synth", "train"]
FILE_COMMANDS = ["check", "export"]


def _inside_input_cases(command: str, w: dict[str, Path]) -> list[Path]:
    s = w["scene"]
    if command == "export":
        return [w["fit"] / "gaussians.ply", w["fit"] / "new.ply"]
    if command == "check":
        return [s / "preview.png", s / "frames" / "000.png"]
    if command == "synth":  # its inputs are two files of the scene
        return [s / "aif.png", s / "depth_gt.npy" / "sub", s]
    return [s, s / "frames", w["data"]]  # is, lies inside, contains


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
@pytest.mark.parametrize("command", FOLDER_COMMANDS + FILE_COMMANDS)
def test_an_output_never_touches_an_input(world, command, overwrite, capsys):
    before = {k: _digest(world[k]) for k in ("data", "fit", "pred")}
    for out in _inside_input_cases(command, world):
        rc, err = _run(_argv(command, world, out) + (["--overwrite"] if overwrite else []), capsys)
        _one_line_error(rc, err, "input")
    assert {k: _digest(world[k]) for k in ("data", "fit", "pred")} == before


@pytest.mark.parametrize("command", FOLDER_COMMANDS)
def test_overwrite_never_replaces_a_folder_gs_dfd_did_not_write(world, command, capsys):
    before = _digest(world["mine"])
    rc, err = _run(_argv(command, world, world["mine"]) + ["--overwrite"], capsys)
    _one_line_error(rc, err, str(world["mine"]), "gs-dfd did not write")
    assert _digest(world["mine"]) == before


@pytest.mark.parametrize("command", FILE_COMMANDS)
def test_overwrite_never_replaces_a_file_gs_dfd_did_not_write(world, command, capsys):
    target = world["root"] / "photo.png"
    if command == "export":
        target = world["root"] / "cloud.ply"
        target.write_text("ply\nformat ascii 1.0\nelement vertex 0\nend_header\n")
    before = _digest(target)
    rc, err = _run(_argv(command, world, target) + ["--overwrite"], capsys)
    _one_line_error(rc, err, "not written by gs-dfd")
    assert _digest(target) == before


@pytest.mark.parametrize("command", FOLDER_COMMANDS + FILE_COMMANDS)
def test_a_busy_output_is_refused(world, command, tmp_path, capsys):
    out = tmp_path / ("out.png" if command == "check" else "out.ply" if command == "export" else "out")
    with output_lock(out):
        rc, err = _run(_argv(command, world, out), capsys)
    _one_line_error(rc, err, "another gs-dfd run")
    assert not out.exists()


@pytest.mark.parametrize("command", FOLDER_COMMANDS + FILE_COMMANDS)
def test_an_output_under_a_file_is_one_line(world, command, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    name = "out.png" if command == "check" else "out.ply" if command == "export" else "out"
    rc, err = _run(_argv(command, world, blocker / name), capsys)
    _one_line_error(rc, err, "is a file")


@pytest.mark.parametrize("reason", [errno.ENOSPC, errno.EROFS], ids=["disk-full", "read-only"])
@pytest.mark.parametrize("command", ["fit", "predict", "eval", "synth", "check", "export"])
def test_a_failed_write_leaves_nothing_behind(world, command, reason, tmp_path, capsys, monkeypatch):
    """The OS refuses a file mid-run (the third written; a file command's first): one line, exit 2, no output, no
    partial folder, no temp file."""
    real = atomic._tmp_sibling
    calls = {"n": 0}
    fail_at = 1 if command in FILE_COMMANDS else 3

    def failing(path, suffix=""):
        calls["n"] += 1
        if calls["n"] >= fail_at:
            raise OSError(reason, "injected", str(path))
        return real(path, suffix)

    monkeypatch.setattr(atomic, "_tmp_sibling", failing)
    name = "out.png" if command == "check" else "out.ply" if command == "export" else "out"
    out = tmp_path / "outs" / name
    (tmp_path / "outs").mkdir()
    rc, err = _run(_argv(command, world, out), capsys)
    _one_line_error(rc, err, "injected")
    assert sorted(p.name for p in (tmp_path / "outs").iterdir()) == []


def test_fit_overwrite_leaves_no_stale_files(world, tmp_path, capsys):
    out = tmp_path / "fit"
    assert _run(_argv("fit", world, out), capsys)[0] == 0
    assert (out / "coc" / "002.npy").is_file() and (out / MARKER_FILE).is_file()
    two = write_tiny_scene(tmp_path / "two", n_frames=2)
    rc, err = _run(["fit", "--scene", two, "--out", out, "--method", "dff", "--overwrite", "--no-progress"], capsys)
    assert rc == 0, err
    assert sorted(p.name for p in (out / "coc").iterdir()) == ["000.npy", "000.png", "001.npy", "001.png"]
    assert not partial_dir(out).exists()


def test_fit_ctrl_c_keeps_a_checkpoint_that_resume_finishes(world, tmp_path, capsys, monkeypatch):
    import gs_dfd.fit.pipeline as fit_cmd

    real = fit_cmd.fit_gaussians

    def interrupted(state, scene, frames, settings, on_step=None):
        def step(st, rec):
            on_step(st, rec)
            if st.step == 3:
                raise KeyboardInterrupt

        return real(state, scene, frames, settings, on_step=step)

    monkeypatch.setattr(fit_cmd, "fit_gaussians", interrupted)
    out = tmp_path / "fit"
    argv = ["fit", "--scene", world["scene"], "--out", out, "--iterations", "5", "--checkpoint-every", "100",
            "--no-progress"]
    rc, err = _run(argv, capsys)
    assert rc == 130 and "--resume" in err, err
    assert not out.exists()  # nothing half-written where results go
    assert (partial_dir(out) / "checkpoint.pt").is_file()
    monkeypatch.setattr(fit_cmd, "fit_gaussians", real)
    rc, err = _run(argv + ["--resume", "--seed", "1"], capsys)  # a changed setting is refused, named
    _one_line_error(rc, err, "--seed")
    rc, err = _run(argv + ["--resume"], capsys)
    assert rc == 0, err
    assert (out / "gaussians.ply").is_file() and (out / MARKER_FILE).is_file()
    assert not partial_dir(out).exists()


def test_resume_with_nothing_to_resume_is_one_line(world, tmp_path, capsys):
    rc, err = _run(_argv("fit", world, tmp_path / "none") + ["--resume"], capsys)
    _one_line_error(rc, err, "nothing to resume")


# --------------------------------------------------------------------------- the rule's pieces


def test_check_output_accepts_an_empty_folder_and_its_own_output(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    check_output(empty, kind="dir")
    with OutputDir(tmp_path / "ours", command="test") as work:
        (work.path / "a.txt").write_text("1")
    check_output(tmp_path / "ours", kind="dir", overwrite=True)
    with pytest.raises(Exception, match="pass --overwrite"):
        check_output(tmp_path / "ours", kind="dir")


def test_output_dir_failure_leaves_the_old_output_whole(tmp_path):
    with OutputDir(tmp_path / "o", command="test") as work:
        (work.path / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with OutputDir(tmp_path / "o", command="test", overwrite=True) as work:
            (work.path / "new.txt").write_text("new")
            raise RuntimeError("late failure")
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [MARKER_FILE, "old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]  # no partial, no lock left


@pytest.mark.parametrize("suffix", [".png", ".ply", ".pcd"])
def test_signatures_keep_files_readable(tmp_path, suffix):
    import imageio.v3 as iio
    import open3d as o3d

    path = tmp_path / f"x{suffix}"
    if suffix == ".png":
        iio.imwrite(path, np.zeros((4, 5, 3), np.uint8))
    else:
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.random.default_rng(0).random((7, 3))))
        assert o3d.io.write_point_cloud(str(path), pcd, write_ascii=False)
    assert not is_gs_dfd_file(path)
    sign_file(path)
    sign_file(path)  # idempotent
    assert is_gs_dfd_file(path)
    if suffix == ".png":
        assert iio.imread(path).shape == (4, 5, 3)
    else:
        assert len(o3d.io.read_point_cloud(str(path)).points) == 7


def test_symlinked_output_into_an_input_is_refused(world, tmp_path, capsys):
    link = tmp_path / "link"
    link.symlink_to(world["scene"], target_is_directory=True)
    before = _digest(world["data"])
    rc, err = _run(_argv("predict", world, link) + ["--overwrite"], capsys)
    _one_line_error(rc, err, "input")
    assert _digest(world["data"]) == before


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 256 kB file system (root only; skipped where mounting is not allowed)."""
    import subprocess

    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "--lazy", str(mnt)], capture_output=True)  # a writer may still hold a file


@pytest.mark.parametrize("command", ["fit", "predict", "synth", "check", "export"])
def test_a_real_full_disk_is_one_line_and_leaves_nothing(world, command, small_tmpfs, capfd):
    """capfd: what native code prints to file descriptor 2 counts too."""
    name = "p.png" if command == "check" else "c.ply" if command == "export" else "out"
    (small_tmpfs / "ballast").write_bytes(b"\0" * (256 - 8) * 1024)  # 8 kB left: the run fails part-way
    rc, err = _run(_argv(command, world, small_tmpfs / name), capfd)
    _one_line_error(rc, err, str(small_tmpfs / name), "could not be written")  # one line: no RPly chatter
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["ballast"]
