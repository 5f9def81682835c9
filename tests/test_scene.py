"""Scene format gs_dfd.scene/1: round trip and every kind of bad input."""

from __future__ import annotations

import json
import math

import imageio.v3 as iio
import numpy as np
import pytest

from conftest import edit_scene_json, write_tiny_scene
from gs_dfd.data.images import png_header
from gs_dfd.data.scene import SCENE_FORMAT, load_scene
from gs_dfd.errors import InputError


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("bit_depth", [8, 16])
@pytest.mark.parametrize("depth_format", ["npy", "png16"])
def test_round_trip(tmp_path, channels, bit_depth, depth_format):
    root = write_tiny_scene(tmp_path / "s", channels=channels, bit_depth=bit_depth, depth_format=depth_format)
    scene = load_scene(root)
    frames = scene.load_frames()
    assert frames.shape == (3, 24, 32, channels) and frames.dtype == np.float32
    assert png_header(root / "frames/000.png")[0] == bit_depth
    expected = np.random.default_rng(0).random((3, 24, 32, channels)).astype(np.float32)
    np.testing.assert_allclose(frames, expected, atol=0.51 / (2**bit_depth - 1))  # only rounding is lost
    depth = scene.load_depth_gt()
    assert depth.shape == (24, 32) and depth[0, 0] == 0 and depth[1:].min() > 0.79
    assert scene.lens(1).focus_distance_m == 1.5
    data = json.loads((root / "scene.json").read_text())
    assert data["format"] == SCENE_FORMAT
    assert set(data["camera"]) == {"width", "height", "fx", "fy", "cx", "cy", "focal_length_m", "f_number",
                                   "pixel_pitch_m"}


def test_design_example_json_is_accepted(tmp_path):
    """The example of DESIGN.md, verbatim, with images of the stated size."""
    root = tmp_path / "s"
    (root / "frames").mkdir(parents=True)
    for name in ("000", "001"):
        iio.imwrite(root / f"frames/{name}.png", np.zeros((240, 320, 3), np.uint8))
    np.save(root / "depth_gt.npy", np.full((240, 320), 2.0, np.float32))
    iio.imwrite(root / "aif.png", np.zeros((240, 320), np.uint8))
    (root / "scene.json").write_text("""{
  "format": "gs_dfd.scene/1",
  "camera": {"width": 320, "height": 240, "fx": 2083.3, "fy": 2083.3, "cx": 160.0, "cy": 120.0,
             "focal_length_m": 0.05, "f_number": 8.0, "pixel_pitch_m": 2.4e-05},
  "frames": [
    {"image": "frames/000.png", "focus_distance_m": 1.0},
    {"image": "frames/001.png", "focus_distance_m": 1.5, "f_number": 2.8}
  ],
  "depth_gt": "depth_gt.npy",
  "all_in_focus": "aif.png"
}""")
    scene = load_scene(root)
    assert [scene.f_number(i) for i in range(2)] == [8.0, 2.8]
    assert scene.load_all_in_focus().shape == (240, 320, 1)


def test_mixed_gray_and_rgb_frames_promote_to_rgb(tiny_scene):
    iio.imwrite(tiny_scene / "frames/001.png", np.full((24, 32), 40000, np.uint16))
    frames = load_scene(tiny_scene).load_frames()
    assert frames.shape[-1] == 3
    np.testing.assert_allclose(frames[1], 40000 / 65535, atol=1e-6)


def test_jpeg_frames_accepted(tiny_scene):
    iio.imwrite(tiny_scene / "frames/002.jpg", np.zeros((24, 32, 3), np.uint8))
    edit_scene_json(tiny_scene, lambda d: d["frames"][2].update(image="frames/002.jpg"))
    assert load_scene(tiny_scene).load_frames().shape[0] == 3


def test_world_to_cam_round_trip(tiny_scene):
    m = np.eye(4)
    m[:3, 3] = [0.1, 0.0, 0.2]
    edit_scene_json(tiny_scene, lambda d: d["frames"][1].update(world_to_cam=m.tolist()))
    np.testing.assert_allclose(load_scene(tiny_scene).world_to_cam(1), m)


def _set(path, value):
    def edit(d):
        obj = d
        for key in path[:-1]:
            obj = obj[key]
        if value is _DELETE:
            del obj[path[-1]]
        else:
            obj[path[-1]] = value
    return edit


_DELETE = object()

BAD_JSON_CASES = {
    "unknown format": (_set(["format"], "gs_dfd.scene/2"), "format", "unknown format"),
    "no format": (_set(["format"], _DELETE), "format", "unknown format"),
    "empty frames": (_set(["frames"], []), "frames", "empty"),
    "frames not list": (_set(["frames"], {}), "frames", "not a list"),
    "focus <= focal length": (_set(["frames", 1, "focus_distance_m"], 0.05), "frames[1].focus_distance_m",
                              "greater than camera.focal_length_m"),
    "negative focus": (_set(["frames", 0, "focus_distance_m"], -1.0), "frames[0].focus_distance_m", "> 0"),
    "focus as string": (_set(["frames", 0, "focus_distance_m"], "1.0"), "frames[0].focus_distance_m", "number"),
    "missing focus": (_set(["frames", 2, "focus_distance_m"], _DELETE), "frames[2].focus_distance_m", "missing"),
    "zero f-number": (_set(["camera", "f_number"], 0), "camera.f_number", "> 0"),
    "negative frame f-number": (_set(["frames", 1, "f_number"], -2.8), "frames[1].f_number", "> 0"),
    "zero pixel pitch": (_set(["camera", "pixel_pitch_m"], 0.0), "camera.pixel_pitch_m", "> 0"),
    "negative pixel pitch": (_set(["camera", "pixel_pitch_m"], -1e-5), "camera.pixel_pitch_m", "> 0"),
    "missing fx": (_set(["camera", "fx"], _DELETE), "camera.fx", "missing"),
    "fractional width": (_set(["camera", "width"], 32.5), "camera.width", "integer"),
    "no camera": (_set(["camera"], _DELETE), "camera", "missing"),
    "missing image name": (_set(["frames", 0, "image"], _DELETE), "frames[0].image", "missing"),
    "bad pose": (_set(["frames", 0, "world_to_cam"], [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1]]),
                 "frames[0].world_to_cam", "rotation"),
    "png depth without scale": (_set(["depth_gt"], "frames/000.png"), "depth_gt_scale", "needs depth_gt_scale"),
}


@pytest.mark.parametrize("case", sorted(BAD_JSON_CASES))
def test_bad_scene_json_names_file_and_field(tiny_scene, case):
    edit, field, words = BAD_JSON_CASES[case]
    edit_scene_json(tiny_scene, edit)
    with pytest.raises(InputError) as err:
        load_scene(tiny_scene)
    msg = str(err.value)
    assert field in msg and words in msg
    assert "\n" not in msg
    assert "scene.json" in msg or str(tiny_scene) in msg


def test_nan_focus_refused(tiny_scene):
    text = (tiny_scene / "scene.json").read_text()
    data = json.loads(text)
    data["frames"][0]["focus_distance_m"] = math.nan
    (tiny_scene / "scene.json").write_text(json.dumps(data))  # writes NaN, which Python's json reads back
    with pytest.raises(InputError, match=r"frames\[0\].focus_distance_m.*finite"):
        load_scene(tiny_scene)


def test_missing_image(tiny_scene):
    (tiny_scene / "frames/001.png").unlink()
    with pytest.raises(InputError, match=r"frames/001.png: field 'frames\[1\].image': image file not found"):
        load_scene(tiny_scene)


def test_unreadable_image(tiny_scene):
    (tiny_scene / "frames/002.png").write_bytes(b"not a png at all")
    with pytest.raises(InputError, match=r"frames/002.png: field 'frames\[2\].image': cannot read image"):
        load_scene(tiny_scene)


def test_frame_of_another_size(tiny_scene):
    img = iio.imread(tiny_scene / "frames/001.png")
    iio.imwrite(tiny_scene / "frames/001.png", img[:20])
    with pytest.raises(InputError, match=r"frames/001.png: field 'frames\[1\].image': image is 32x20 but camera is 32x24"):
        load_scene(tiny_scene)


def test_negative_depth_refused_nan_depth_masked(tiny_scene):
    d = np.load(tiny_scene / "depth_gt.npy")
    d[3, 3] = np.nan  # DESIGN.md: non-finite = invalid
    np.save(tiny_scene / "depth_gt.npy", d)
    assert load_scene(tiny_scene).load_depth_gt()[3, 3] == 0
    d[4, 4] = -1.0
    np.save(tiny_scene / "depth_gt.npy", d)
    with pytest.raises(InputError, match=r"depth_gt.npy: field 'depth_gt': negative depth"):
        load_scene(tiny_scene)


def test_depth_of_wrong_size(tiny_scene):
    np.save(tiny_scene / "depth_gt.npy", np.ones((10, 10), np.float32))
    with pytest.raises(InputError, match=r"depth_gt.npy: field 'depth_gt': depth is 10x10 but camera is 32x24"):
        load_scene(tiny_scene)


def test_missing_scene_json_and_invalid_json(tmp_path, tiny_scene):
    with pytest.raises(InputError, match="scene.json not found"):
        load_scene(tmp_path)
    with pytest.raises(InputError, match="scene folder not found"):
        load_scene(tmp_path / "nope")
    (tiny_scene / "scene.json").write_text("{ not json")
    with pytest.raises(InputError, match="invalid JSON at line 1"):
        load_scene(tiny_scene)


def test_aif_of_wrong_size(tiny_scene):
    iio.imwrite(tiny_scene / "aif.png", np.zeros((5, 5, 3), np.uint8))
    with pytest.raises(InputError, match=r"aif.png: field 'all_in_focus'"):
        load_scene(tiny_scene)


def test_unknown_fields_warn_not_fail(tiny_scene):
    edit_scene_json(tiny_scene, lambda d: (d.update(comment="x"), d["frames"][0].update(exposure=1)))
    scene = load_scene(tiny_scene)
    assert any("comment" in w for w in scene.warnings) and any("exposure" in w for w in scene.warnings)


def test_frames_do_not_touch_ground_truth(tiny_scene):
    """The fitting/training path (load_frames) must work with ground truth gone."""
    scene = load_scene(tiny_scene)
    (tiny_scene / "depth_gt.npy").unlink()
    (tiny_scene / "aif.png").unlink()
    assert scene.load_frames().shape[0] == 3


def test_atomic_outputs_get_the_usual_permissions(tmp_path):
    import os

    from gs_dfd.utils.atomic import write_json_atomic
    from gs_dfd.utils.outputs import atomic_output_dir

    mask = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "a.json", {"x": 1})
        with atomic_output_dir(tmp_path / "dir", overwrite=False) as tmp:
            (tmp / "f").write_text("x")
    finally:
        os.umask(mask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "dir").stat().st_mode & 0o777 == 0o755


def test_output_folder_refusals_leave_it_untouched(tmp_path):
    from gs_dfd.errors import GsDfdError
    from gs_dfd.utils.outputs import MARKER_FILE, atomic_output_dir

    (tmp_path / "file").write_text("keep")
    with atomic_output_dir(tmp_path / "dir") as tmp:
        (tmp / "old").write_text("keep")
    with pytest.raises(GsDfdError, match="is not a folder"):
        with atomic_output_dir(tmp_path / "file", overwrite=True):
            pass
    with pytest.raises(GsDfdError, match="pass --overwrite"):
        with atomic_output_dir(tmp_path / "dir", overwrite=False):
            pass
    with pytest.raises(KeyboardInterrupt):
        with atomic_output_dir(tmp_path / "dir", overwrite=True) as tmp:
            (tmp / "new").write_text("half")
            raise KeyboardInterrupt
    assert (tmp_path / "file").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "file"]
    assert sorted(p.name for p in (tmp_path / "dir").iterdir()) == [MARKER_FILE, "old"]
