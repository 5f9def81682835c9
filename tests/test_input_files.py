"""Reading user files is safe and strict: scene paths stay inside the scene; images, depth maps, Gaussian
PLYs and JSONs that are wrong give one-line errors naming the file and field, never a traceback.

Scenes are copies of the small bundled ``scenes/textureless_nyu_160`` in tmp_path; nothing is fitted."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, edit_scene_json
from gs_dfd.cli import main
from gs_dfd.data.images import MIN_IMAGE_SIDE_PX, image_megapixels, image_size, read_image
from gs_dfd.data.maps import load_npy
from gs_dfd.data.scene import load_scene
from gs_dfd.errors import InputError
from gs_dfd.export.camera_json import read_camera_json, write_camera_json
from gs_dfd.export.gaussian_ply import GaussianCloud, read_gaussian_ply, write_gaussian_ply
from gs_dfd.export.points import load_depth_output

BUNDLED = REPO / "scenes" / "textureless_nyu_160"


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    """A private copy of the bundled scene (160x120, five frames, 16-bit PNG depth)."""
    return Path(shutil.copytree(BUNDLED, tmp_path / "scene"))


def _one_line(exc: InputError) -> str:
    msg = str(exc)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def _check_cli(scene_dir: Path, capsys) -> str:
    """``gs-dfd check`` exits 2 with exactly one line on stderr; returns that line."""
    capsys.readouterr()
    assert main(["check", "--scene", str(scene_dir)]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


# --------------------------------------------------------------------------- scene paths stay inside the scene


def _outside_png(scene_dir: Path) -> Path:
    """A readable image of the right size outside the scene folder (so only the path rule can refuse it)."""
    out = scene_dir.parent / "outside.png"
    shutil.copy(scene_dir / "frames/002.png", out)
    return out


def _abs_path(scene_dir: Path) -> str:
    return str(_outside_png(scene_dir))


def _dotdot(scene_dir: Path) -> str:
    _outside_png(scene_dir)
    return "../outside.png"


def _deep_dotdot(scene_dir: Path) -> str:
    return "../../../../../../../../etc/passwd"


def _symlink_out(scene_dir: Path) -> str:
    os.symlink(_outside_png(scene_dir), scene_dir / "frames/link.png")
    return "frames/link.png"


def _symlinked_folder_out(scene_dir: Path) -> str:
    other = scene_dir.parent / "elsewhere"
    other.mkdir()
    shutil.copy(scene_dir / "frames/002.png", other / "002.png")
    os.symlink(other, scene_dir / "more")
    return "more/002.png"


ESCAPES = {
    "absolute": _abs_path,
    "dot-dot": _dotdot,
    "deep dot-dot to /etc/passwd": _deep_dotdot,
    "symlink to a file outside": _symlink_out,
    "symlinked folder outside": _symlinked_folder_out,
}


@pytest.mark.parametrize("field", ["frames[2].image", "depth_gt", "all_in_focus"])
@pytest.mark.parametrize("case", sorted(ESCAPES))
def test_escaping_paths_refused_at_parse_time(scene, case, field):
    rel = ESCAPES[case](scene)

    def edit(d):
        if field == "frames[2].image":
            d["frames"][2]["image"] = rel
        else:
            d[field] = rel

    edit_scene_json(scene, edit)
    with pytest.raises(InputError) as err:
        load_scene(scene, check_files=False)  # refused before any file is opened
    msg = _one_line(err.value)
    assert err.value.path == scene / "scene.json" and err.value.field == field
    assert f"must be a path inside the scene folder (got '{rel}')" in msg


@pytest.mark.parametrize("case", sorted(ESCAPES))
def test_escaping_paths_refused_by_the_cli(scene, case, capsys):
    rel = ESCAPES[case](scene)
    edit_scene_json(scene, lambda d: d["frames"][2].update(image=rel))
    line = _check_cli(scene, capsys)
    assert "scene.json" in line and "field 'frames[2].image'" in line and "inside the scene folder" in line


def test_symlinks_inside_the_scene_are_fine(scene):
    os.symlink("002.png", scene / "frames/alias.png")  # relative link, inside
    os.symlink(scene / "frames", scene / "frames_again")  # absolute link to a folder inside
    edit_scene_json(scene, lambda d: (d["frames"][1].update(image="frames/alias.png"),
                                      d["frames"][3].update(image="frames_again/003.png"),
                                      d.update(all_in_focus="frames/../aif.png")))
    s = load_scene(scene)
    frames = s.load_frames()
    np.testing.assert_array_equal(frames[1], frames[2])


def test_two_frames_may_name_the_same_file(scene):
    edit_scene_json(scene, lambda d: d["frames"][1].update(image="frames/000.png"))
    assert load_scene(scene).load_frames().shape[0] == 5


def test_image_path_that_is_a_folder_is_refused(scene, capsys):
    edit_scene_json(scene, lambda d: d["frames"][0].update(image="frames"))
    with pytest.raises(InputError, match=r"scene.json: field 'frames\[0\].image': must name a file, not a folder"):
        load_scene(scene, check_files=False)
    assert "not a folder" in _check_cli(scene, capsys)


# --------------------------------------------------------------------------- images


def _gradient_rgb(w: int = 48, h: int = 32) -> np.ndarray:
    """A smooth, saturated picture: JPEG keeps it within a few levels."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([40 + 4 * xx, 200 - 5 * yy, 60 + 2 * xx + 2 * yy], -1).clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("mode, fmt, suffix, mean_tol, max_tol", [
    ("CMYK", "JPEG", ".jpg", 3, 18),
    ("YCbCr", "TIFF", ".tif", 1.5, 9),
    ("LAB", "TIFF", ".tif", 1.5, 15),  # 8-bit a/b steps: Pillow's own RGB -> LAB -> RGB is this far off
    ("P", "PNG", ".png", 20, 60),  # the web palette, dithered: coarse but RGB, not palette indices
])
def test_other_colour_models_read_as_rgb(tmp_path, mode, fmt, suffix, mean_tol, max_tol):
    rgb = _gradient_rgb()
    path = tmp_path / f"img{suffix}"
    Image.fromarray(rgb).convert(mode).save(path, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    with Image.open(path) as im:
        assert im.mode == mode
    img = read_image(path)
    assert img.shape == (32, 48, 3) and img.dtype == np.float32
    err = np.abs(img * 255 - rgb.astype(np.float32))
    assert err.mean() < mean_tol and err.max() <= max_tol, (err.mean(), err.max())


def test_cmyk_jpeg_frame_in_a_scene(scene):
    rgb = (read_image(scene / "frames/002.png") * 255).round().astype(np.uint8)
    Image.fromarray(rgb).convert("CMYK").save(scene / "frames/002.jpg", "JPEG", quality=95)
    edit_scene_json(scene, lambda d: d["frames"][2].update(image="frames/002.jpg"))
    frames = load_scene(scene).load_frames()
    assert np.abs(frames[2] * 255 - rgb).mean() < 3


def test_sixteen_bit_gray_stays_sixteen_bit(tmp_path):
    Image.fromarray(np.full((12, 16), 40000, np.uint16)).save(tmp_path / "g.png")
    np.testing.assert_allclose(read_image(tmp_path / "g.png"), 40000 / 65535, atol=1e-7)


@pytest.mark.parametrize("w, h", [(1, 1), (4000, 1), (1, 300), (7, 64)])
def test_tiny_images_refused(tmp_path, w, h):
    path = tmp_path / "tiny.png"
    Image.new("RGB", (w, h), (10, 20, 30)).save(path)
    with pytest.raises(InputError) as err:
        read_image(path, field="frames[0].image")
    assert f"image is {w}x{h}: too small (need at least 8x8 pixels)" in _one_line(err.value)
    assert err.value.field == "frames[0].image"
    assert image_size(path) == (w, h)  # the header alone is still readable


def test_smallest_allowed_image():
    assert MIN_IMAGE_SIDE_PX == 8


def test_smallest_allowed_image_reads(tmp_path):
    Image.new("L", (8, 8), 128).save(tmp_path / "eight.png")
    assert read_image(tmp_path / "eight.png").shape == (8, 8, 1)


def test_tiny_frame_in_a_scene_is_named(scene, capsys):
    Image.new("RGB", (1, 1)).save(scene / "frames/001.png")
    with pytest.raises(InputError, match=r"frames/001.png: field 'frames\[1\].image': image is 1x1: too small"):
        load_scene(scene)
    assert "too small" in _check_cli(scene, capsys)


def test_image_size_reads_the_header_only(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(_gradient_rgb(400, 300)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])  # header intact, pixel data cut
    assert image_size(path) == (400, 300)
    assert image_megapixels(path) == pytest.approx(0.12)
    with pytest.raises(InputError, match="cannot read image"):
        read_image(path)


def test_decompression_bomb_is_one_line(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("L", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 px > 2 x limit: Pillow refuses to open it
    for reader in (read_image, image_size, image_megapixels):
        with pytest.raises(InputError, match="too large to decode safely") as err:
            reader(path)
        _one_line(err.value)


def test_image_folder_and_garbage(tmp_path):
    (tmp_path / "d.png").mkdir()
    with pytest.raises(InputError, match="is a folder"):
        read_image(tmp_path / "d.png")
    (tmp_path / "g.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 50)
    with pytest.raises(InputError, match="cannot read image") as err:
        read_image(tmp_path / "g.jpg")
    _one_line(err.value)


# --------------------------------------------------------------------------- depth maps


def _write_npz_as_npy(p: Path) -> None:
    with open(p, "wb") as fh:
        np.savez(fh, depth=np.ones((120, 160), np.float32))


def _write_truncated(p: Path) -> None:
    np.save(p, np.ones((120, 160), np.float32))
    p.write_bytes(p.read_bytes()[:-1000])


def _write_pickle(p: Path) -> None:
    np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True)


DEPTH_CASES = {
    "int16": (lambda p: np.save(p, np.full((120, 160), 1500, np.int16)), "integer depth .npy: store float32 metres, "
                                                                         "or a 16-bit PNG with depth_gt_scale"),
    "uint16": (lambda p: np.save(p, np.full((120, 160), 1500, np.uint16)), "integer depth .npy"),
    "bool": (lambda p: np.save(p, np.ones((120, 160), bool)), "boolean depth .npy"),
    "npz as npy": (_write_npz_as_npy, ".npz archive"),
    "text": (lambda p: p.write_text("1.0 2.0\n3.0 4.0\n"), "not a .npy file"),
    "truncated": (_write_truncated, "truncated"),
    "pickle": (_write_pickle, "Python objects"),
    "complex": (lambda p: np.save(p, np.ones((120, 160), np.complex64)), "float32 metres"),
    "3-d": (lambda p: np.save(p, np.ones((120, 160, 1), np.float32)), "H x W"),
}


@pytest.mark.parametrize("case", sorted(DEPTH_CASES))
def test_bad_depth_gt_npy(scene, case, capsys):
    write, words = DEPTH_CASES[case]
    write(scene / "depth_gt.npy")
    edit_scene_json(scene, lambda d: (d.update(depth_gt="depth_gt.npy"), d.pop("depth_gt_scale")))
    with pytest.raises(InputError) as err:
        load_scene(scene)
    msg = _one_line(err.value)
    assert words in msg and err.value.field == "depth_gt" and err.value.path == scene / "depth_gt.npy"
    assert words in _check_cli(scene, capsys)


def test_float_depth_npy_still_read(scene):
    np.save(scene / "depth_gt.npy", np.full((120, 160), 2.5, np.float32))
    edit_scene_json(scene, lambda d: d.update(depth_gt="depth_gt.npy"))
    assert float(load_scene(scene).load_depth_gt().mean()) == 2.5


def test_forged_npy_header_is_refused_before_allocating(tmp_path):
    """A header declaring a terabyte of data must not reach numpy's allocation."""
    path = tmp_path / "big.npy"
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": (999999, 999999)})
        fh.write(b"\x00" * 16)
    with pytest.raises(InputError, match="truncated: header declares shape") as err:
        load_npy(path, "depth")
    _one_line(err.value)


# --------------------------------------------------------------------------- fit / predict output folders


def _fit_folder(root: Path, scene_dir: Path) -> Path:
    """What gs-dfd fit leaves, by hand: depth.npy, confidence.npy, aif.png, camera.json, metrics.json."""
    cam = load_scene(scene_dir, check_files=False).camera
    root.mkdir()
    np.save(root / "depth.npy", np.full((cam.height, cam.width), 2.0, np.float32))
    np.save(root / "confidence.npy", np.full((cam.height, cam.width), 0.5, np.float32))
    shutil.copy(scene_dir / "aif.png", root / "aif.png")
    write_camera_json(root / "camera.json", cam)
    (root / "metrics.json").write_text("{}")
    return root


EXPORT_CASES = {
    "depth npz": (lambda r: _write_npz_as_npy(r / "depth.npy"), "depth.npy", "depth", ".npz archive"),
    "depth int": (lambda r: np.save(r / "depth.npy", np.full((120, 160), 2, np.int32)), "depth.npy", "depth",
                  "floating-point"),
    "depth object": (lambda r: _write_pickle(r / "depth.npy"), "depth.npy", "depth", "Python objects"),
    "depth truncated": (lambda r: _write_truncated(r / "depth.npy"), "depth.npy", "depth", "truncated"),
    "depth empty file": (lambda r: (r / "depth.npy").write_bytes(b""), "depth.npy", "depth", "not a .npy"),
    "depth folder": (lambda r: ((r / "depth.npy").unlink(), (r / "depth.npy").mkdir()), "depth.npy", "depth",
                     "is a folder"),
    "confidence > 1": (lambda r: np.save(r / "confidence.npy", np.full((120, 160), 2.0, np.float32)),
                       "confidence.npy", "confidence", "in [0, 1]"),
    "confidence inf": (lambda r: np.save(r / "confidence.npy", np.full((120, 160), np.inf, np.float32)),
                       "confidence.npy", "confidence", "in [0, 1]"),
    "confidence shape": (lambda r: np.save(r / "confidence.npy", np.ones((10, 10), np.float32)),
                         "confidence.npy", "confidence", "camera is 160x120"),
    "colour 1x1": (lambda r: Image.new("RGB", (1, 1)).save(r / "aif.png"), "aif.png", "colour", "too small"),
    "camera deep JSON": (lambda r: (r / "camera.json").write_text("[" * 100_000 + "]" * 100_000),
                         "camera.json", None, "invalid JSON"),
    "camera huge int": (lambda r: (r / "camera.json").write_text('{"a": 1' + "0" * 5000 + "}"),
                        "camera.json", None, "invalid JSON"),
    "camera binary": (lambda r: (r / "camera.json").write_bytes(b"\xff\xfe\x00garbage"), "camera.json", None,
                      "cannot read"),
    "camera string pose": (lambda r: _edit_camera(r, lambda d: d.update(world_to_cam=[["1", 0, 0, 0]] * 4)),
                           "camera.json", "world_to_cam", "4x4 array of numbers"),
    "camera overflow": (lambda r: _edit_camera(r, lambda d: d["camera"].update(fx=10 ** 400)),
                        "camera.json", "camera.fx", "finite"),
    "camera format list": (lambda r: _edit_camera(r, lambda d: d.update(format=list(range(10_000)))),
                           "camera.json", "format", "unknown format"),
}


def _edit_camera(root: Path, edit) -> None:
    data = json.loads((root / "camera.json").read_text())
    edit(data)
    (root / "camera.json").write_text(json.dumps(data))


@pytest.mark.parametrize("case", sorted(EXPORT_CASES))
def test_bad_fit_output_files(tmp_path, scene, case):
    breaks, name, field, words = EXPORT_CASES[case]
    fit = _fit_folder(tmp_path / "fit", scene)
    breaks(fit)
    with pytest.raises(InputError) as err:
        load_depth_output(fit, "fit")
    msg = _one_line(err.value)
    assert err.value.path == fit / name and err.value.field == field and words in msg, msg
    assert len(msg) < 400


def test_good_fit_output_still_reads(tmp_path, scene):
    out = load_depth_output(_fit_folder(tmp_path / "fit", scene), "fit")
    assert out.depth.shape == (120, 160) and float(out.confidence.mean()) == 0.5
    cam, w2c = read_camera_json(tmp_path / "fit" / "camera.json")
    assert cam == out.camera and np.array_equal(w2c, np.eye(4))


# --------------------------------------------------------------------------- Gaussian PLY


def _cloud(n: int = 20, seed: int = 0) -> GaussianCloud:
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n, 4))
    return GaussianCloud(means=rng.uniform(-1, 1, (n, 3)), quats=q / np.linalg.norm(q, axis=1, keepdims=True),
                         scales=rng.uniform(1e-3, 0.1, (n, 3)), opacities=rng.uniform(0.05, 0.95, n),
                         colors=rng.uniform(0, 1, (n, 3)))


def _header_and_body(path: Path) -> tuple[bytes, bytes]:
    raw = path.read_bytes()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    return raw[:end], raw[end:]


def test_written_ply_round_trips_with_the_signature(tmp_path):
    cloud = _cloud()
    path = write_gaussian_ply(tmp_path / "g.ply", cloud)
    header, body = _header_and_body(path)
    lines = header.decode().splitlines()
    assert lines[:4] == ["ply", "format binary_little_endian 1.0", "comment gs-dfd", "element vertex 20"]
    assert len(body) == 20 * 62 * 4  # INRIA layout: 62 float32 properties, nothing else
    back = read_gaussian_ply(path)
    for name in ("means", "scales", "opacities", "colors"):
        np.testing.assert_allclose(getattr(back, name), getattr(cloud, name), rtol=1e-5, atol=1e-6)
    o3d = pytest.importorskip("open3d")
    np.testing.assert_allclose(np.asarray(o3d.io.read_point_cloud(str(path)).points), cloud.means, rtol=1e-5,
                               atol=1e-6)


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[:-(62 * 4 + 7)])


def _ascii(p: Path) -> None:
    header, _ = _header_and_body(p)
    p.write_bytes(header.replace(b"binary_little_endian", b"ascii") + b"0 " * 62 * 20)


def _drop_property(p: Path) -> None:
    header, body = _header_and_body(p)
    p.write_bytes(header.replace(b"property float opacity\n", b"property float opacitx\n") + body)


def _nan_value(p: Path) -> None:
    header, body = _header_and_body(p)
    vals = np.frombuffer(body, "<f4").copy()
    vals[62 * 3] = np.nan  # x of the fourth vertex
    p.write_bytes(header + vals.tobytes())


def _bad_count(p: Path) -> None:
    header, body = _header_and_body(p)
    p.write_bytes(header.replace(b"element vertex 20", b"element vertex lots") + body)


PLY_CASES = {
    "truncated": (_truncate, "truncated: header declares 20 vertices, file holds 18"),
    "garbage": (lambda p: p.write_bytes(os.urandom(2000)), "not a PLY file"),
    "text file": (lambda p: p.write_text("hello\n"), "not a PLY file"),
    "no end_header": (lambda p: p.write_bytes(b"ply\nformat binary_little_endian 1.0\n" + b"\x00" * 100),
                      "no end_header"),
    "ascii": (_ascii, "ASCII PLY is not supported"),
    "big endian": (lambda p: p.write_bytes(p.read_bytes().replace(b"binary_little_endian", b"binary_big_endian")),
                   "binary_little_endian"),
    "missing property": (_drop_property, "missing INRIA 3DGS properties: opacity"),
    "nan": (_nan_value, "non-finite values in property 'x' (1 of 20 vertices)"),
    "bad count": (_bad_count, "bad vertex count"),
    "empty": (lambda p: p.write_bytes(b""), "not a PLY file"),
}


@pytest.mark.parametrize("case", sorted(PLY_CASES))
def test_bad_gaussian_ply(tmp_path, case):
    breaks, words = PLY_CASES[case]
    path = write_gaussian_ply(tmp_path / "gaussians.ply", _cloud())
    breaks(path)
    with pytest.raises(InputError) as err:
        read_gaussian_ply(path)
    msg = _one_line(err.value)
    assert words in msg and err.value.path == path, msg
