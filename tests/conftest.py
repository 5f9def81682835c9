"""Shared test fixtures: tiny scenes written through the public writer."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from gs_dfd.data.scene import Camera, Frame, write_scene
from gs_dfd.optics import get_preset

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Tests run single-threaded: two processes each using two threads thrash a 2-core machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def tiny_camera(width: int = 32, height: int = 24) -> Camera:
    p = get_preset("nyu")
    return Camera(width=width, height=height, **p.intrinsics(width, height), focal_length_m=p.focal_length_m,
                  f_number=p.f_number, pixel_pitch_m=p.pixel_pitch_at(width))


def write_tiny_scene(root: Path, n_frames: int = 3, channels: int = 3, depth_format: str = "npy",
                     bit_depth: int = 8, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    cam = tiny_camera()
    frames = [Frame(image=f"frames/{i:03d}.png", focus_distance_m=1.0 + 0.5 * i) for i in range(n_frames)]
    images = rng.random((n_frames, cam.height, cam.width, channels)).astype(np.float32)
    depth = rng.uniform(0.8, 3.0, (cam.height, cam.width)).astype(np.float32)
    depth[0, 0] = 0.0  # one invalid pixel
    write_scene(root, cam, frames, images, depth_gt_m=depth, all_in_focus=images[0], depth_format=depth_format,
                bit_depth=bit_depth)
    return root


def edit_scene_json(root: Path, edit) -> None:
    path = root / "scene.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.fixture
def tiny_scene(tmp_path: Path) -> Path:
    return write_tiny_scene(tmp_path / "scene")


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test when that folder is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (the shared real data sets)")
    return path


def strip_ground_truth(scenes: Path, dest: Path, monkeypatch) -> Path:
    """A copy of a folder of scenes without depth_gt.npy and aif.png, with Scene's readers of both made to
    raise: a training path that runs on it provably never reads ground truth."""
    import shutil

    from gs_dfd.data.scene import Scene

    shutil.copytree(scenes, dest)
    for d in dest.iterdir():
        (d / "depth_gt.npy").unlink()
        (d / "aif.png").unlink()

    def forbidden(self):
        raise AssertionError("a self-supervised training path read ground truth")

    monkeypatch.setattr(Scene, "load_depth_gt", forbidden)
    monkeypatch.setattr(Scene, "load_all_in_focus", forbidden)
    return dest


@pytest.fixture
def interrupt_fit(monkeypatch):
    """``arm(n)`` makes the per-scene fit raise KeyboardInterrupt (Ctrl-C) at its ``n``-th loss evaluation, so
    ``n - 1`` steps complete; ``arm(None)`` restores the real loss."""
    import gs_dfd.fit.gaussian_fit as gaussian_fit

    real = gaussian_fit.photometric_loss

    def arm(n: int | None) -> None:
        if n is None:
            monkeypatch.setattr(gaussian_fit, "photometric_loss", real)
            return
        calls = {"n": 0}

        def interrupting(*args, **kw):
            calls["n"] += 1
            if calls["n"] == n:
                raise KeyboardInterrupt
            return real(*args, **kw)

        monkeypatch.setattr(gaussian_fit, "photometric_loss", interrupting)

    return arm


def cxx_compiler() -> str | None:
    """The C++ compiler torch's extension builder would use ($CXX, else c++), or g++; None when there is none."""
    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")


def require_cpp_build(exc: BaseException | None) -> None:
    """The one rule for a C++ backend that did not build (``exc``; None = it built): fail the test when a compiler
    exists, so a broken toolchain or csrc/ turns CI red; skip, with the reason, only without a compiler or when
    GS_DFD_ALLOW_NO_CPP=1 says the run knowingly goes without it. The product falls back to torch either way."""
    if exc is None:
        return
    from gs_dfd.render.raster_cpu import describe_build_error

    compiler = cxx_compiler()
    if compiler is None:
        pytest.skip(f"no C++ compiler ($CXX, c++, g++): the C++ renderer cannot be built ({describe_build_error(exc)})")
    if os.environ.get("GS_DFD_ALLOW_NO_CPP") == "1":
        pytest.skip(f"GS_DFD_ALLOW_NO_CPP=1: the C++ renderer did not build ({describe_build_error(exc)})")
    pytest.fail(f"the C++ renderer did not build although a compiler exists ({compiler}); "
                f"set GS_DFD_ALLOW_NO_CPP=1 to skip instead.\n{type(exc).__name__}: {exc}", pytrace=False)


_CPP_BUILD: dict = {}  # "exc": the first build attempt's exception (None = built): one attempt per test session


def cpp_extension():
    """The compiled C++ backend (built on first use), or a failed/skipped test by :func:`require_cpp_build`."""
    from gs_dfd.render import raster_cpu

    if "exc" not in _CPP_BUILD:
        try:
            raster_cpu.load_extension()
            _CPP_BUILD["exc"] = None
        except Exception as exc:  # compiler error, missing headers, ...
            _CPP_BUILD["exc"] = exc
    require_cpp_build(_CPP_BUILD["exc"])
    return raster_cpu.load_extension()


@pytest.fixture(scope="module")
def cpp_ext():
    return cpp_extension()
