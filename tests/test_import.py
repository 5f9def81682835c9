"""gs-dfd import: photos + EXIF (or flags) -> a gs_dfd.scene/1 scene; every refusal is one line, exit 2, nothing
written. Photos are made here with Pillow, EXIF included; no fitting."""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.TiffImagePlugin import IFDRational

from gs_dfd.cli import main
from gs_dfd.data.images import read_image
from gs_dfd.data.photos import focus_sweep_m, natural_key
from gs_dfd.data.scene import load_scene
from gs_dfd.utils.outputs import partial_dir

from conftest import shared_path

W, H = 48, 32


def exif_of(f_mm=None, n=None, fp_res=None, fp_unit=None, full=None, f35=None, subject_m=None, make=None):
    """An Exif block the way cameras write it: lens tags in the Exif IFD."""
    exif = Image.Exif()
    if make:
        exif[0x010F] = make
    ifd = exif.get_ifd(0x8769)
    for tag, value in ((0x920A, f_mm), (0x829D, n), (0xA20E, fp_res), (0xA210, fp_unit), (0xA405, f35),
                       (0x9206, subject_m)):
        if value is not None:
            ifd[tag] = IFDRational(value) if isinstance(value, float) else value
    if full:
        ifd[0xA002], ifd[0xA003] = full
    return exif


def photo(path: Path, size=(W, H), seed=0, exif=None, mode="RGB") -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        img = Image.fromarray((rng.random((size[1], size[0])) * 65535).astype(np.uint16))
    else:
        img = Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8))
    kw = {"exif": exif} if exif is not None else {}
    if path.suffix.lower() in (".jpg", ".jpeg"):
        kw["quality"] = 95
    img.save(path, **kw)
    return path


def canon_stack(folder: Path, distances=(1.5, 1.0, 2.0), **exif_kw) -> list[Path]:
    """Photos whose EXIF says: 50 mm, f/2.8, 4000 px/cm over a 96x64 original (2.5 um; 5 um at 48 px)."""
    kw = dict(f_mm=50.0, n=2.8, fp_res=4000.0, fp_unit=3, full=(2 * W, 2 * H), make="Canon")
    kw.update(exif_kw)
    return [photo(folder / f"IMG_{i + 1}.jpg", seed=i, exif=exif_of(subject_m=d, **kw))
            for i, d in enumerate(distances)]


def run(argv, capsys) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err.strip()


def source_of(out: Path) -> dict:
    return json.loads((out / "scene.json").read_text())["source"]


def assert_refused(rc: int, err: str, out: Path, *needles: str) -> None:
    assert rc == 2, err
    assert err.startswith("error: ") and "\n" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    assert not out.exists() and not partial_dir(out).exists(), "a refused import wrote something"


# --------------------------------------------------------------------------- optics from EXIF, flags, resize


def test_exif_gives_the_optics_and_frames_come_nearest_first(tmp_path, capsys):
    files = canon_stack(tmp_path / "photos")
    out = tmp_path / "scene"
    rc, stdout, err = run(["import", tmp_path / "photos", "--out", out, "--max-size", 0], capsys)
    assert rc == 0, err
    scene = load_scene(out)
    cam = scene.camera
    assert (cam.width, cam.height) == (W, H)
    assert cam.focal_length_m == pytest.approx(0.05) and cam.f_number == pytest.approx(2.8)
    assert cam.pixel_pitch_m == pytest.approx(5e-6)  # 2.5 um on the 96 px original, 48 px stored
    assert cam.fx == cam.fy == pytest.approx(0.05 / 5e-6) and (cam.cx, cam.cy) == (W / 2, H / 2)
    assert [f.focus_distance_m for f in scene.frames] == pytest.approx([1.0, 1.5, 2.0])
    assert all(f.f_number is None for f in scene.frames)  # one aperture: the camera's
    src = scene.source
    assert src["photos"] == [files[1].name, files[0].name, files[2].name]
    assert (src["focal_length_m"], src["f_number"], src["pixel_pitch_m"], src["focus_distance_m"]) == \
        ("exif", "exif", "exif", "exif")
    assert src["depth"] == "metric" and src["resized_from"] is None and src["bit_depth"] == 8
    assert not scene.warnings
    # Frame 0 is the photo focused nearest (IMG_2), pixel for pixel up to JPEG decoding.
    np.testing.assert_allclose(scene.load_frame(0), read_image(files[1]), atol=1 / 255)
    assert main(["check", "--scene", str(out)]) == 0
    assert "OK: scene is valid" in capsys.readouterr().out


def test_35mm_equivalent_gives_the_sensor_when_the_focal_plane_tags_are_missing(tmp_path, capsys):
    folder = tmp_path / "photos"
    for i in range(2):
        photo(folder / f"p{i}.jpg", seed=i, exif=exif_of(f_mm=4.2, n=1.8, f35=26, subject_m=0.5 + i))
    out = tmp_path / "scene"
    rc, _, err = run(["import", folder, "--out", out], capsys)
    assert rc == 0, err
    cam = load_scene(out).camera
    diagonal_m = math.hypot(0.036, 0.024) * 4.2 / 26
    assert cam.pixel_pitch_m == pytest.approx(diagonal_m / math.hypot(W, H))
    assert source_of(out)["pixel_pitch_m"] == "exif-35mm"


def test_focal_plane_pitch_that_disagrees_with_the_35mm_size_is_noted(tmp_path, capsys):
    canon_stack(tmp_path / "photos", f35=50)  # a full-frame 50 mm: ~0.75 mm pixels at 48 px, not 5 um
    out = tmp_path / "scene"
    rc, stdout, err = run(["import", tmp_path / "photos", "--out", out], capsys)
    assert rc == 0, err
    assert load_scene(out).camera.pixel_pitch_m == pytest.approx(5e-6)
    assert "FocalLengthIn35mmFilm" in stdout and "--pixel-pitch-um" in stdout


def test_flags_override_exif(tmp_path, capsys):
    files = canon_stack(tmp_path / "photos")
    out = tmp_path / "scene"
    rc, _, err = run(["import", *files, "--out", out, "--focal-length-mm", 35, "--f-number", 4,
                      "--pixel-pitch-um", 10, "--focus-distances-m", 3, 1, 2], capsys)
    assert rc == 0, err
    scene = load_scene(out)
    cam = scene.camera
    assert (cam.focal_length_m, cam.f_number, cam.pixel_pitch_m) == pytest.approx((0.035, 4.0, 10e-6))
    assert [f.focus_distance_m for f in scene.frames] == [1.0, 2.0, 3.0]
    assert scene.source["photos"] == [files[1].name, files[2].name, files[0].name]
    assert {scene.source[k] for k in ("focal_length_m", "f_number", "pixel_pitch_m", "focus_distance_m")} == {"flag"}


def test_sensor_width_flag(tmp_path, capsys):
    files = [photo(tmp_path / f"{i}.png", seed=i) for i in range(2)]
    out = tmp_path / "scene"
    rc, _, err = run(["import", *files, "--out", out, "--focal-length-mm", 50, "--f-number", 2,
                      "--sensor-width-mm", 4.8, "--focus-distances-m", 1, 2], capsys)
    assert rc == 0, err
    assert load_scene(out).camera.pixel_pitch_m == pytest.approx(4.8e-3 / W)


def test_resize_scales_pitch_and_intrinsics(tmp_path, capsys):
    files = [photo(tmp_path / f"{i}.png", size=(200, 100), seed=i) for i in range(2)]
    out = tmp_path / "scene"
    rc, stdout, err = run(["import", *files, "--out", out, "--max-size", 50, "--focal-length-mm", 50,
                           "--f-number", 2, "--pixel-pitch-um", 4, "--focus-distances-m", 1, 2], capsys)
    assert rc == 0, err
    scene = load_scene(out)
    cam = scene.camera
    assert (cam.width, cam.height) == (50, 25)
    assert cam.pixel_pitch_m == pytest.approx(16e-6)  # 4 um at 200 px -> 16 um at 50 px
    assert cam.fx == pytest.approx(0.05 / 16e-6) and (cam.cx, cam.cy) == (25.0, 12.5)
    assert scene.load_frames().shape == (2, 25, 50, 3)
    assert scene.source["resized_from"] == [200, 100]
    assert "resized from 200x100" in stdout


def test_sixteen_bit_photos_stay_sixteen_bit(tmp_path, capsys):
    files = [photo(tmp_path / f"{i}.png", seed=i, mode="I;16") for i in range(2)]
    out = tmp_path / "scene"
    rc, _, err = run(["import", *files, "--out", out, "--focal-length-mm", 50, "--f-number", 2,
                      "--pixel-pitch-um", 5, "--focus-distances-m", 1, 2], capsys)
    assert rc == 0, err
    assert source_of(out)["bit_depth"] == 16
    written = np.asarray(Image.open(out / "frames" / "000.png"))
    np.testing.assert_array_equal(written, np.asarray(Image.open(files[0])))


def write_tiff16_rgb(path: Path, arr: np.ndarray, deflate: bool = False) -> Path:
    """A 16-bit RGB TIFF as raw converters write it (one strip; deflate with the horizontal predictor)."""
    h, w, _ = arr.shape
    data = arr.astype("<u2")
    if deflate:
        diff = data.copy()
        diff[:, 1:] = data[:, 1:] - data[:, :-1]  # wraps modulo 2^16, as the predictor does
        payload = zlib.compress(diff.tobytes())
    else:
        payload = data.tobytes()
    short = lambda tag, v: struct.pack("<HHIHH", tag, 3, 1, v, 0)  # noqa: E731
    long_ = lambda tag, v: struct.pack("<HHII", tag, 4, 1, v)  # noqa: E731
    n_tags = 11 if deflate else 10
    bps_at = 8 + 2 + 12 * n_tags + 4
    data_at = bps_at + 6
    entries = [long_(256, w), long_(257, h), struct.pack("<HHII", 258, 3, 3, bps_at), short(259, 8 if deflate else 1),
               short(262, 2), long_(273, data_at), short(277, 3), long_(278, h), long_(279, len(payload)),
               short(284, 1)] + ([short(317, 2)] if deflate else [])
    blob = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", n_tags) + b"".join(entries) + b"\x00" * 4
    path.write_bytes(blob + struct.pack("<HHH", 16, 16, 16) + payload)
    return path


@pytest.mark.parametrize("deflate", [False, True])
def test_sixteen_bit_rgb_tiff_keeps_its_low_byte(tmp_path, capsys, deflate):
    rng = np.random.default_rng(0)
    arrs = [(rng.random((H, W, 3)) * 65535).astype(np.uint16) for _ in range(2)]
    files = [write_tiff16_rgb(tmp_path / f"{i}.tif", a, deflate) for i, a in enumerate(arrs)]
    out = tmp_path / "scene"
    rc, _, err = run(["import", *files, "--out", out, "--focal-length-mm", 50, "--f-number", 2,
                      "--pixel-pitch-um", 5, "--focus-distances-m", 1, 2], capsys)
    assert rc == 0, err
    assert source_of(out)["bit_depth"] == 16
    back = np.round(read_image(out / "frames" / "000.png") * 65535).astype(np.uint16)
    np.testing.assert_array_equal(back, arrs[0])


# --------------------------------------------------------------------------- focus order and spacing


def test_focus_range_spacing_and_order(tmp_path, capsys):
    files = [photo(tmp_path / "p" / f"{i}.png", seed=i) for i in range(4)]
    base = ["--focal-length-mm", 50, "--f-number", 2, "--pixel-pitch-um", 5, "--focus-range-m", 1, 4]
    rc, _, err = run(["import", *files, "--out", tmp_path / "a", *base], capsys)
    assert rc == 0, err
    scene = load_scene(tmp_path / "a")
    assert [f.focus_distance_m for f in scene.frames] == pytest.approx([1.0, 4 / 3, 2.0, 4.0])  # even in 1/s
    assert scene.source["photos"] == ["0.png", "1.png", "2.png", "3.png"]
    assert (scene.source["focus_distance_m"], scene.source["focus_order"]) == ("range", "near-to-far")

    rc, _, err = run(["import", *files, "--out", tmp_path / "b", *base, "--focus-order", "far-to-near"], capsys)
    assert rc == 0, err
    scene = load_scene(tmp_path / "b")
    assert [f.focus_distance_m for f in scene.frames] == pytest.approx([1.0, 4 / 3, 2.0, 4.0])
    assert scene.source["photos"] == ["3.png", "2.png", "1.png", "0.png"]  # the last photo was focused nearest

    rc, _, err = run(["import", *files, "--out", tmp_path / "c", *base, "--focus-spacing", "linear"], capsys)
    assert rc == 0, err
    assert [f.focus_distance_m for f in load_scene(tmp_path / "c").frames] == pytest.approx([1.0, 2.0, 3.0, 4.0])


def test_given_distances_out_of_order_are_sorted_nearest_first(tmp_path, capsys):
    files = [photo(tmp_path / f"{c}.png", seed=i) for i, c in enumerate("abc")]
    out = tmp_path / "scene"
    rc, _, err = run(["import", *files, "--out", out, "--focal-length-mm", 50, "--f-number", 2, "--pixel-pitch-um",
                      5, "--focus-distances-m", 2, 0.5, 1], capsys)
    assert rc == 0, err
    scene = load_scene(out)
    assert [f.focus_distance_m for f in scene.frames] == [0.5, 1.0, 2.0]
    assert scene.source["photos"] == ["b.png", "c.png", "a.png"]
    np.testing.assert_array_equal(scene.load_frame(0), read_image(files[1]))


def test_unknown_focus_needs_the_flag_and_is_marked_assumed(tmp_path, capsys):
    files = [photo(tmp_path / "p" / f"{i}.png", seed=i) for i in range(3)]
    optics = ["--focal-length-mm", 50, "--f-number", 2, "--pixel-pitch-um", 5]
    rc, _, err = run(["import", *files, "--out", tmp_path / "refused", *optics], capsys)
    assert_refused(rc, err, tmp_path / "refused", "--focus-distances-m", "--focus-range-m", "--focus-unknown")
    out = tmp_path / "scene"
    rc, stdout, err = run(["import", *files, "--out", out, *optics, "--focus-unknown"], capsys)
    assert rc == 0, err
    scene = load_scene(out)
    assert [f.focus_distance_m for f in scene.frames] == pytest.approx([1.0, 1 / (0.5 + 0.05), 10.0])  # 20f..200f
    assert (scene.source["focus_distance_m"], scene.source["depth"]) == ("assumed", "relative")
    assert "relative" in stdout and "ASSUMED" in stdout
    # A guessed range is still a guess.
    rc, _, err = run(["import", *files, "--out", tmp_path / "g", *optics, "--focus-unknown", "--focus-range-m", 0.3,
                      0.6], capsys)
    assert rc == 0, err
    scene = load_scene(tmp_path / "g")
    assert scene.source["focus_distance_m"] == "assumed"
    assert [scene.frames[0].focus_distance_m, scene.frames[-1].focus_distance_m] == pytest.approx([0.3, 0.6])


def test_aperture_pair_writes_each_frames_f_number(tmp_path, capsys):
    files = [photo(tmp_path / f"pair_f{n}.png", seed=i) for i, n in enumerate(("2.8", "8"))]
    out = tmp_path / "scene"
    rc, _, err = run(["import", *files, "--out", out, "--focal-length-mm", 35, "--pixel-pitch-um", 36,
                      "--f-numbers", 2.8, 8, "--focus-distances-m", 1.7, 1.7], capsys)
    assert rc == 0, err
    scene = load_scene(out)
    assert [f.f_number for f in scene.frames] == [2.8, 8.0]  # equal focus: input order kept
    assert [f.focus_distance_m for f in scene.frames] == [1.7, 1.7]
    assert scene.camera.f_number == 2.8 and scene.source["photos"] == [files[0].name, files[1].name]


def test_exif_f_numbers_that_differ_are_an_aperture_stack(tmp_path, capsys):
    folder = tmp_path / "photos"
    for i, n in enumerate((2.8, 8.0)):
        photo(folder / f"{i}.jpg", seed=i, exif=exif_of(f_mm=35.0, n=n, f35=52, subject_m=1.7))
    out = tmp_path / "scene"
    rc, _, err = run(["import", folder, "--out", out], capsys)
    assert rc == 0, err
    assert [f.f_number for f in load_scene(out).frames] == pytest.approx([2.8, 8.0])


def test_folder_order_is_natural_and_other_files_are_skipped_with_a_note(tmp_path, capsys):
    folder = tmp_path / "photos"
    for i, name in enumerate(("img10.png", "img2.png", "img1.png")):
        photo(folder / name, seed=i)
    (folder / "notes.txt").write_text("focus 1 2 3")
    (folder / "IMG_0001.CR2").write_bytes(b"raw")
    (folder / "sub").mkdir()
    out = tmp_path / "scene"
    rc, stdout, err = run(["import", folder, "--out", out, "--focal-length-mm", 50, "--f-number", 2,
                           "--pixel-pitch-um", 5, "--focus-range-m", 1, 3], capsys)
    assert rc == 0, err
    assert load_scene(out).source["photos"] == ["img1.png", "img2.png", "img10.png"]
    assert "skipped" in stdout and "notes.txt" in stdout and "IMG_0001.CR2" in stdout and "sub/" in stdout
    assert sorted(["b10", "a", "b2"], key=natural_key) == ["a", "b2", "b10"]


def test_focus_sweep_helper():
    assert focus_sweep_m(1.0, 4.0, 4) == pytest.approx([1.0, 4 / 3, 2.0, 4.0])
    assert focus_sweep_m(1.0, 4.0, 4, "linear") == pytest.approx([1.0, 2.0, 3.0, 4.0])


# --------------------------------------------------------------------------- exiftool maker notes


def fake_exiftool(bin_dir: Path, records_by_name: dict[str, dict]) -> Path:
    """An ``exiftool`` on PATH that answers ``-j -n`` with the given maker-note tags (and logs its argv)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "records.json").write_text(json.dumps(records_by_name))
    script = bin_dir / "exiftool"
    script.write_text(f"""#!{sys.executable}
import json, os, sys
here = os.path.dirname(os.path.abspath(__file__))
records = json.load(open(os.path.join(here, "records.json")))
open(os.path.join(here, "argv.json"), "w").write(json.dumps(sys.argv[1:]))
files = [a for a in sys.argv[1:] if not a.startswith("-")]
print(json.dumps([dict(SourceFile=f, **records.get(os.path.basename(f), {{}})) for f in files]))
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return script


def test_exiftool_maker_note_focus_distances(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "photos"
    # SubjectDistance says 5 m everywhere; the maker notes know better and win.
    canon_stack(folder, distances=(5.0, 5.0, 5.0))
    bin_dir = tmp_path / "bin"
    fake_exiftool(bin_dir, {
        "IMG_1.jpg": {"FocusDistanceUpper": 0.8, "FocusDistanceLower": 0.8},
        "IMG_2.jpg": {"FocusDistanceUpper": 655.35, "FocusDistanceLower": 2.0},  # Canon: upper = infinity
        "IMG_3.jpg": {"FocusDistance": 0.6},  # Nikon-style single value
    })
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "scene"
    rc, stdout, err = run(["import", folder, "--out", out], capsys)
    assert rc == 0, err
    scene = load_scene(out)
    assert [f.focus_distance_m for f in scene.frames] == pytest.approx([0.6, 0.8, 4.0])  # 1/s midway: 2/(1/2+0)
    assert scene.source["photos"] == ["IMG_3.jpg", "IMG_1.jpg", "IMG_2.jpg"]
    assert scene.source["focus_distance_m"] == "exif"
    argv = json.loads((bin_dir / "argv.json").read_text())
    assert "-j" in argv and "-n" in argv and all(os.path.isabs(a) for a in argv if not a.startswith("-"))


def test_exiftool_that_fails_is_a_warning_not_an_error(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "photos"
    canon_stack(folder)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "exiftool"
    script.write_text("#!/bin/sh\necho 'not json'\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "scene"
    rc, _, err = run(["import", folder, "--out", out], capsys)
    assert rc == 0, err
    assert "exiftool" in err and [f.focus_distance_m for f in load_scene(out).frames] == [1.0, 1.5, 2.0]


# --------------------------------------------------------------------------- refusals: one line, exit 2, nothing written

FLAGS = ["--focal-length-mm", 50, "--f-number", 2, "--pixel-pitch-um", 5]


def _stack(tmp_path: Path, n: int = 2) -> list[Path]:
    return [photo(tmp_path / "p" / f"{i}.png", seed=i) for i in range(n)]


def _case_one_photo(tmp_path):
    return [*_stack(tmp_path, 1), *FLAGS, "--focus-unknown"], ["at least two photos", "0.png"]


def _case_mixed_sizes(tmp_path):
    files = _stack(tmp_path, 3)
    photo(files[1], size=(W + 2, H), seed=9)
    return [*files, *FLAGS, "--focus-unknown"], ["1.png", f"{W + 2}x{H}", f"{W}x{H}"]


def _case_mixed_focal_lengths(tmp_path):
    folder = tmp_path / "p"
    photo(folder / "a.jpg", seed=0, exif=exif_of(f_mm=50.0, n=2.0, f35=75, subject_m=1.0))
    photo(folder / "b.jpg", seed=1, exif=exif_of(f_mm=35.0, n=2.0, f35=52, subject_m=2.0))
    return [folder], ["b.jpg", "35 mm", "50 mm", "--focal-length-mm"]


def _case_listed_twice(tmp_path):
    files = _stack(tmp_path)
    return [*files, files[0], *FLAGS, "--focus-unknown"], ["listed twice", "0.png"]


def _case_same_content(tmp_path):
    files = _stack(tmp_path)
    shutil.copy(files[0], tmp_path / "p" / "2.png")
    return [tmp_path / "p", *FLAGS, "--focus-unknown"], ["2.png", "same content", "0.png"]


def _case_unreadable(tmp_path):
    _stack(tmp_path)
    (tmp_path / "p" / "2.png").write_bytes(b"this is not a PNG")
    return [tmp_path / "p", *FLAGS, "--focus-unknown"], ["2.png", "cannot read image"]


def _case_truncated(tmp_path):
    files = _stack(tmp_path)
    big = photo(tmp_path / "p" / "2.jpg", size=(W, H), seed=5)
    data = big.read_bytes()
    big.write_bytes(data[:len(data) * 2 // 3])  # header intact, pixels cut: found only while writing frames
    return [*files, big, *FLAGS, "--focus-unknown", "--no-progress"], ["2.jpg", "truncated"]


def _case_raw_listed(tmp_path):
    files = _stack(tmp_path)
    raw = tmp_path / "p" / "IMG_1.NEF"
    raw.write_bytes(b"raw")
    return [*files, raw, *FLAGS, "--focus-unknown"], ["IMG_1.NEF", "16-bit TIFF"]


def _case_raw_folder(tmp_path):
    folder = tmp_path / "raw"
    folder.mkdir()
    for i in range(2):
        (folder / f"IMG_{i}.CR2").write_bytes(b"raw")
    return [folder, *FLAGS, "--focus-unknown"], ["IMG_0.CR2", "16-bit TIFF"]


def _case_not_a_photo(tmp_path):
    files = _stack(tmp_path)
    txt = tmp_path / "p" / "focus.txt"
    txt.write_text("1 2")
    return [*files, txt, *FLAGS, "--focus-unknown"], ["focus.txt", "not a photo"]


def _case_missing(tmp_path):
    return [*_stack(tmp_path), tmp_path / "nope.jpg", *FLAGS, "--focus-unknown"], ["nope.jpg", "not found"]


def _case_no_focal_length(tmp_path):
    return [*_stack(tmp_path), "--f-number", 2, "--pixel-pitch-um", 5, "--focus-unknown"], ["--focal-length-mm"]


def _case_no_f_number(tmp_path):
    return [*_stack(tmp_path), "--focal-length-mm", 50, "--pixel-pitch-um", 5, "--focus-unknown"], ["--f-number"]


def _case_no_pixel_pitch(tmp_path):
    return [*_stack(tmp_path), "--focal-length-mm", 50, "--f-number", 2, "--focus-unknown"], \
        ["--pixel-pitch-um", "--sensor-width-mm"]


def _case_focus_count(tmp_path):
    return [*_stack(tmp_path, 3), *FLAGS, "--focus-distances-m", 1, 2], ["--focus-distances-m", "got 2 for 3"]


def _case_f_numbers_count(tmp_path):
    return [*_stack(tmp_path, 3), "--focal-length-mm", 50, "--pixel-pitch-um", 5, "--f-numbers", 2, 8,
            "--focus-unknown"], ["--f-numbers", "got 2 for 3"]


def _case_focus_inside_focal_length(tmp_path):
    return [*_stack(tmp_path), *FLAGS, "--focus-distances-m", 0.04, 1], ["--focus-distances-m", "focal length"]


def _case_negative_pitch(tmp_path):
    return [*_stack(tmp_path), "--focal-length-mm", 50, "--f-number", 2, "--pixel-pitch-um", -5,
            "--focus-unknown"], ["--pixel-pitch-um", "> 0"]


def _case_nan_focal_length(tmp_path):
    return [*_stack(tmp_path), "--focal-length-mm", "nan", "--f-number", 2, "--pixel-pitch-um", 5,
            "--focus-unknown"], ["--focal-length-mm", "finite"]


def _case_range_reversed(tmp_path):
    return [*_stack(tmp_path), *FLAGS, "--focus-range-m", 4, 1], ["--focus-range-m", "NEAR < FAR"]


def _case_pitch_and_sensor(tmp_path):
    return [*_stack(tmp_path), *FLAGS, "--sensor-width-mm", 36, "--focus-unknown"], ["--sensor-width-mm", "not both"]


def _case_order_with_distances(tmp_path):
    return [*_stack(tmp_path), *FLAGS, "--focus-distances-m", 1, 2, "--focus-order", "far-to-near"], \
        ["--focus-order"]


def _case_no_photos(tmp_path):
    return [*FLAGS, "--focus-unknown"], ["give the photos"]


REFUSALS = {name[len("_case_"):]: fn for name, fn in globals().items() if name.startswith("_case_")}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals_are_one_line_exit_2_and_write_nothing(tmp_path, capsys, case):
    args, needles = REFUSALS[case](tmp_path)
    out = tmp_path / "scene"
    rc, _, err = run(["import", *args, "--out", out], capsys)
    assert_refused(rc, err, out, *needles)


def test_output_rule(tmp_path, capsys):
    files = _stack(tmp_path, 2)
    folder = tmp_path / "p"
    inside = folder / "scene"
    rc, _, err = run(["import", folder, "--out", inside, *FLAGS, "--focus-unknown"], capsys)
    assert_refused(rc, err, inside, "lies inside the input")
    rc, _, err = run(["import", *files, "--out", folder, *FLAGS, "--focus-unknown", "--overwrite"], capsys)
    assert rc == 2 and "\n" not in err and sorted(p.name for p in folder.iterdir()) == ["0.png", "1.png"]
    out = tmp_path / "scene"
    assert run(["import", *files, "--out", out, *FLAGS, "--focus-unknown"], capsys)[0] == 0
    rc, _, err = run(["import", *files, "--out", out, *FLAGS, "--focus-unknown"], capsys)
    assert rc == 2 and "--overwrite" in err
    rc, _, err = run(["import", *files, "--out", out, *FLAGS, "--focus-range-m", 1, 2, "--overwrite"], capsys)
    assert rc == 0, err
    assert load_scene(out).source["focus_distance_m"] == "range"


def test_old_scenes_without_source_still_load(tiny_scene):
    scene = load_scene(tiny_scene)
    assert scene.source is None and not scene.warnings and "source" not in scene.to_json()


# --------------------------------------------------------------------------- the real stacks in ../shared/data


@pytest.mark.shared
def test_real_stacks_import(tmp_path, capsys):
    wn = shared_path("watanabe_nayar_breakfast")
    out = tmp_path / "breakfast"
    rc, _, err = run(["import", wn / "breakfast_far.png", wn / "breakfast_near.png", "--out", out,
                      "--focal-length-mm", 25, "--f-number", 8.3, "--pixel-pitch-um", 25,
                      "--focus-distances-m", 0.869, 0.529], capsys)
    assert rc == 0, err
    scene = load_scene(out)
    cam = scene.camera
    assert (cam.width, cam.height, cam.fx) == (640, 480, pytest.approx(1000.0))
    assert [f.focus_distance_m for f in scene.frames] == [0.529, 0.869]
    assert scene.source["photos"] == ["breakfast_near.png", "breakfast_far.png"]

    balls = shared_path("dffinthewild_balls")
    cm = [float(v) for v in (balls / "focus_distance.txt").read_text().split()]  # centimetres (assumed)
    out = tmp_path / "balls"
    rc, _, err = run(["import", balls, "--out", out, "--focal-length-mm", 4.3, "--f-number", 1.8,
                      "--sensor-width-mm", 5.6, "--focus-distances-m", *[c / 100 for c in cm]], capsys)
    assert rc == 0, err
    scene = load_scene(out)
    assert (scene.camera.width, scene.camera.height) == (1024, 576)
    assert scene.camera.pixel_pitch_m == pytest.approx(5.6e-3 / 1024)  # the sensor spread over 1024 px now
    assert scene.source["resized_from"] == [1280, 720]
    assert scene.source["photos"] == [f"{i:02d}.jpg" for i in range(9, -1, -1)]  # frame 09 focused nearest
    distances = [f.focus_distance_m for f in scene.frames]
    assert distances == sorted(distances) and distances[0] == pytest.approx(0.10)


def test_help_documents_every_flag(capsys):
    import re

    with pytest.raises(SystemExit) as exc:
        main(["import", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for ch in "│╭╮╰╯─":
        text = text.replace(ch, " ")
    lines = [ln.strip() for ln in text.splitlines()]
    flags = [i for i, ln in enumerate(lines) if re.match(r"--[a-z]", ln) and not ln.startswith("--help")]
    for i in flags:
        block = " ".join([lines[i].split(None, 1)[1] if " " in lines[i] else ""] + lines[i + 1:i + 3])
        assert len(re.findall(r"[A-Za-z]{3,}", block.split("(default")[0].split("(required")[0])) >= 3, lines[i]
    assert {"--out", "--focal-length-mm", "--f-number", "--f-numbers", "--pixel-pitch-um", "--sensor-width-mm",
            "--focus-distances-m", "--focus-range-m", "--focus-spacing", "--focus-order", "--focus-unknown",
            "--max-size", "--overwrite", "--debug"} <= {lines[i].split()[0].rstrip(",") for i in flags}
    assert "PHOTO [PHOTO ...]" in text
