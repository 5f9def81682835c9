"""tools/validation/make_real_like_stacks.py: real-like stacks (breathing, shake, exposure, JPEG without EXIF)
from the real RGB-D of ../shared/data, and the runner that scores fits on them (skipped without the data)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, SHARED_DATA, shared_path
from gs_dfd.data.scene import load_scene

TOOL = REPO / "tools" / "validation" / "make_real_like_stacks.py"
NAME = "nyuv2_0045"


def _tool():
    if "make_real_like_stacks" not in sys.modules:  # dataclasses need the module registered while it loads
        spec = importlib.util.spec_from_file_location("make_real_like_stacks", TOOL)
        mod = importlib.util.module_from_spec(spec)
        sys.modules["make_real_like_stacks"] = mod
        try:
            spec.loader.exec_module(mod)
        except BaseException:
            del sys.modules["make_real_like_stacks"]
            raise
    return sys.modules["make_real_like_stacks"]


def _photo(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0


def _warp_grid_sample(img: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Independent of the tool's warp (scipy map_coordinates): torch's bicubic grid_sample of the clean image at
    M^-1 x_photo, pixel centres at integer coordinates (align_corners=True)."""
    h, w = img.shape[:2]
    lin, t = matrix[:, :2], matrix[:, 2]
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    src = np.einsum("ij,jhw->ihw", np.linalg.inv(lin), np.stack([xx - t[0], yy - t[1]]))
    grid = np.stack([2 * src[0] / (w - 1) - 1, 2 * src[1] / (h - 1) - 1], axis=-1)[None]
    x = torch.from_numpy(img.transpose(2, 0, 1)[None].copy())
    out = torch.nn.functional.grid_sample(x, torch.from_numpy(grid), mode="bicubic", padding_mode="border",
                                          align_corners=True)
    return out[0].numpy().transpose(1, 2, 0)


def _exposed(img: np.ndarray, frame: dict) -> np.ndarray:
    return img * frame["gain"] * np.asarray(frame["white_balance"])[None, None, :] + frame["offset"]


# --------------------------------------------------------------------------- no data needed


def test_affine_in_inverse_depth_recovers_an_affine_distortion():
    tool = _tool()
    rng = np.random.default_rng(0)
    gt = rng.uniform(0.6, 3.5, (20, 30))
    gt[0, :5] = 0.0  # unknown
    pred = 1.0 / (0.4 / np.where(gt > 0, gt, 1.0) + 0.3)  # 1/pred = 0.4/gt + 0.3
    aligned, a, b = tool.affine_in_inverse_depth(pred, gt, 0.5, 4.0)
    assert a == pytest.approx(2.5, rel=1e-6) and b == pytest.approx(-0.75, rel=1e-6)
    valid = gt > 0
    assert np.allclose(aligned[valid], gt[valid], rtol=1e-6)


def test_focus_distances_and_breathing():
    tool = _tool()
    assert tool.focus_distances(5) == [1.0, 1.5, 2.5, 4.0, 6.0]
    seven = tool.focus_distances(7)
    assert seven[0] == 1.0 and seven[-1] == 6.0 and np.allclose(np.diff(seven), 5 / 6)  # even in distance
    # thin lens: farther focus, shorter lens-to-sensor distance, smaller image (about 4 % from 1 to 6 m at 50 mm)
    ratio = tool.lens_to_sensor_m(0.05, 6.0) / tool.lens_to_sensor_m(0.05, 1.0)
    assert 0.95 < ratio < 0.97


# --------------------------------------------------------------------------- on the shared data


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    shared_path("nyuv2_sample")
    out = tmp_path_factory.mktemp("real_like") / "set"
    proc = subprocess.run([sys.executable, str(TOOL), "build", "--src", str(SHARED_DATA), "--out", str(out),
                           "--only", NAME, "--width", "96"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.shared
def test_truth_json_and_depth(built):
    truth = json.loads((built / "truth" / f"{NAME}.json").read_text())
    for key in ("format", "purpose", "name", "seed", "settings", "camera", "focus_distances_m", "coordinates",
                "centre_xy", "frames", "depth"):
        assert key in truth, key
    assert truth["focus_distances_m"] == [1.0, 1.5, 2.5, 4.0, 6.0]
    cam = truth["camera"]
    assert (cam["width"], cam["height"], cam["focal_length_m"], cam["f_number"]) == (96, 72, 0.05, 8.0)
    frames = truth["frames"]
    assert len(frames) == 5
    for f in frames:
        for key in ("scale", "angle_deg", "shift_px", "matrix_clean_to_photo", "gain", "white_balance", "offset",
                    "focus_distance_m", "photo"):
            assert key in f, key
    f0 = frames[0]
    assert (f0["scale"], f0["angle_deg"], f0["shift_px"], f0["gain"], f0["offset"]) == (1.0, 0.0, [0.0, 0.0], 1.0,
                                                                                         0.0)
    scales = [f["scale"] for f in frames]
    assert all(a > b for a, b in zip(scales, scales[1:])) and 0.95 < scales[-1] < 0.97  # thin-lens breathing
    assert all(abs(f["angle_deg"]) <= 0.3 and 0.85 <= f["gain"] <= 1.15 for f in frames)
    depth = np.load(built / "truth" / f"{NAME}_depth.npy")
    assert depth.dtype == np.float32 and depth.shape == (72, 96)
    assert np.array_equal(depth, load_scene(built / "clean" / NAME).load_depth_gt())
    assert 0.6 < depth[depth > 0].min() and depth.max() < 2.0  # metres


@pytest.mark.shared
def test_photos_are_jpeg_without_exif(built):
    photos = sorted((built / "photos" / NAME).iterdir())
    assert [p.name for p in photos] == [f"IMG_{i:04d}.jpg" for i in range(5)]
    for p in photos:
        with Image.open(p) as im:
            assert im.format == "JPEG" and im.size == (96, 72)
            assert len(im.getexif()) == 0 and "exif" not in im.info
        assert b"Exif\x00\x00" not in p.read_bytes()


@pytest.mark.shared
def test_frame0_is_the_clean_frame_and_later_frames_the_recorded_similarity(built):
    truth = json.loads((built / "truth" / f"{NAME}.json").read_text())
    clean = load_scene(built / "clean" / NAME).load_frames().astype(np.float64)
    photo0 = _photo(built / truth["frames"][0]["photo"])
    assert np.abs(photo0 - clean[0]).mean() < 0.015  # JPEG (q 92) and noise only (about 0.008 here)

    m = 8  # away from the border, where the warps' edge rules differ
    for i in (1, len(truth["frames"]) - 1):
        f = truth["frames"][i]
        photo = _photo(built / f["photo"])[m:-m, m:-m]
        warped = _exposed(_warp_grid_sample(clean[i], np.asarray(f["matrix_clean_to_photo"])), f)[m:-m, m:-m]
        unwarped = _exposed(clean[i], f)[m:-m, m:-m]
        err_warped = np.abs(photo - warped).mean()
        err_unwarped = np.abs(photo - unwarped).mean()
        assert err_warped < 0.02, (i, err_warped)  # about 0.01: JPEG and noise, as frame 0
        assert err_warped < 0.3 * err_unwarped, (i, err_warped, err_unwarped)  # about 0.1-0.15


@pytest.mark.shared
def test_run_one_scene_writes_table_and_json(built, tmp_path, capsys):
    tool = _tool()
    out, js = tmp_path / "fits", tmp_path / "results.json"
    assert tool.main(tool.RunConfig(dir=built, out=out, iterations=3, json=js)) == 0
    text = capsys.readouterr().out
    assert "unknown affine" in text and NAME in text and "mean" in text
    result = json.loads(js.read_text())
    assert result == json.loads((out / "results.json").read_text())
    (rec,) = result["records"]
    cells = [rec["exact"], rec["given"], rec["range"], rec["unknown"]["raw"], rec["unknown"]["affine"]]
    for cell in cells:
        assert math.isfinite(cell["abs_rel"]) and math.isfinite(cell["delta1"]) and cell["valid_px"] > 0
    assert math.isfinite(rec["seconds"]) and math.isfinite(rec["unknown"]["affine"]["a"])
    for variant in ("exact", "given", "range", "unknown"):
        assert (out / variant / NAME / "depth.npy").is_file()
    assert load_scene(out / "imported" / "given" / NAME).source["focus_distance_m"] == "flag"
    scene = load_scene(out / "imported" / "range" / NAME)
    assert [f.focus_distance_m for f in scene.frames][::4] == pytest.approx([1.0, 6.0])
    assert scene.source["focus_distance_m"] == "range"
    assert load_scene(out / "imported" / "unknown" / NAME).source["focus_distance_m"] == "assumed"
    assert set(result["means"]) == {"exact", "given", "range", "unknown raw", "unknown affine"}
