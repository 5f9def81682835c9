"""gs-dfd predict: the three input forms, outputs, the shipped weights, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gs_dfd.cli import main
from gs_dfd.data.images import write_png
from gs_dfd.infer.pair import fuse_pair
from gs_dfd.infer.predictor import SHIPPED_WEIGHTS, Predictor
from gs_dfd.export.camera_json import read_camera_json
from gs_dfd.optics.thin_lens import ThinLens
from gs_dfd.models.siamese import SiameseDepthModel
from gs_dfd.train.checkpoint import export_weights

from conftest import write_tiny_scene


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "model.pt"
    export_weights(path, SiameseDepthModel(), {"method": "gs-siamese"})
    return path


def test_scene_frame_form_writes_the_contract(tiny_scene, weights, tmp_path):
    out = tmp_path / "pred"
    assert main(["predict", "--scene", str(tiny_scene), "--frame", "1", "--out", str(out), "--checkpoint", str(weights)]) == 0
    depth, coc = np.load(out / "depth.npy"), np.load(out / "coc.npy")
    assert depth.shape == coc.shape == (24, 32) and depth.dtype == coc.dtype == np.float32
    assert np.isfinite(depth).all() and (depth > 0).all() and (coc >= 0).all()
    for name in ("depth.png", "coc.png", "image.png", "panel.png", "prediction.json"):
        assert (out / name).is_file(), name
    meta = json.loads((out / "prediction.json").read_text())
    assert meta["lens"]["focus_distance_m"] == 1.5  # frame 1 of the tiny scene
    camera, pose = read_camera_json(out / "camera.json")
    assert (camera.width, camera.height) == (32, 24) and np.allclose(pose, np.eye(4))


def test_predict_matches_the_model_in_memory(tiny_scene, weights, tmp_path):
    out = tmp_path / "pred"
    assert main(["predict", "--scene", str(tiny_scene), "--out", str(out), "--checkpoint", str(weights)]) == 0
    from gs_dfd.data.scene import load_scene

    scene = load_scene(tiny_scene)
    pred = Predictor(weights).predict(scene.load_frames()[0], scene.lens(0))
    np.testing.assert_array_equal(np.load(out / "depth.npy"), pred.depth_m)


def test_image_and_folder_forms(weights, tmp_path, capsys):
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    for name in ("a", "b"):
        write_png(images / f"{name}.png", rng.random((40, 48, 3)))
    one = tmp_path / "one"
    assert main(["predict", "--image", str(images / "a.png"), "--camera", "nyu", "--focus-distance-m", "1.0",
                 "--out", str(one), "--checkpoint", str(weights)]) == 0
    assert np.load(one / "depth.npy").shape == (40, 48)
    many = tmp_path / "many"
    assert main(["predict", "--image", str(images), "--camera", "d3net", "--f-number", "2.8", "--focus-distance-m", "1.7",
                 "--out", str(many), "--checkpoint", str(weights)]) == 0
    for name in ("a", "b"):
        assert np.load(many / name / "coc.npy").shape == (40, 48)
        assert json.loads((many / name / "prediction.json").read_text())["lens"]["f_number"] == 2.8
    capsys.readouterr()
    assert main(["predict", "--image", str(images), "--camera", "nyu", "--focus-distance-m", "1.0", "--no-progress",
                 "--out", str(tmp_path / "quiet"), "--checkpoint", str(weights)]) == 0
    assert "predict:" not in capsys.readouterr().err  # no progress bar


@pytest.mark.parametrize("args, needle", [
    (["--image", "missing.png", "--camera", "nyu", "--focus-distance-m", "1"], "missing.png"),
    (["--image", "IMG"], "--camera"),
    (["--image", "IMG", "--camera", "nyu", "--focus-distance-m", "0.01"], "--focus-distance-m"),
    (["--image", "IMG", "--camera", "nyu", "--focus-distance-m", "1", "--f-number", "-2"], "--f-number"),
    (["--scene", "SCENE", "--frame", "7"], "--frame"),
    (["--scene", "SCENE", "--image", "IMG"], "exactly one"),
    (["--scene", "SCENE", "--checkpoint", "nope.pt"], "nope.pt"),
])
def test_bad_input_is_one_line_and_writes_nothing(tiny_scene, weights, tmp_path, capsys, args, needle):
    write_png(tmp_path / "img.png", np.zeros((8, 8, 3)))
    args = [str(tiny_scene) if a == "SCENE" else str(tmp_path / "img.png") if a == "IMG" else
            str(tmp_path / a) if a in ("missing.png", "nope.pt") else a for a in args]
    if "--checkpoint" not in args:
        args += ["--checkpoint", str(weights)]
    out = tmp_path / "out"
    assert main(["predict", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    assert not out.exists()


def test_shipped_weights_load_and_predict_in_range():
    assert SHIPPED_WEIGHTS.is_file(), "the package must ship trained weights"
    assert SHIPPED_WEIGHTS.stat().st_size <= 20 * 1024 * 1024
    predictor = Predictor()
    assert predictor.meta.get("steps", 0) > 0  # trained, not freshly initialised
    img = np.random.default_rng(1).random((240, 320, 3)).astype(np.float32)
    pred = predictor.predict(img, ThinLens(0.05, 8.0, 1.0, 24e-6))
    assert pred.depth_m.shape == (240, 320) and np.isfinite(pred.depth_m).all()
    assert 0.1 <= pred.depth_m.min() and pred.depth_m.max() <= 20.0


def test_folder_of_scenes_and_pair_frame(weights, tmp_path):
    scenes = tmp_path / "scenes"
    for k in range(2):
        write_tiny_scene(scenes / f"s{k}", seed=k)
    out = tmp_path / "pred"
    assert main(["predict", "--scene", str(scenes), "--pair-frame", "2", "--out", str(out), "--checkpoint", str(weights)]) == 0
    from gs_dfd.data.scene import load_scene

    scene = load_scene(scenes / "s1")
    frames = scene.load_frames()
    single = Predictor(weights).predict(frames[0], scene.lens(0)).depth_m
    other = Predictor(weights).predict(frames[2], scene.lens(2)).depth_m
    a = Predictor(weights).predict(frames[0], scene.lens(0))
    b = Predictor(weights).predict(frames[2], scene.lens(2))
    fused = fuse_pair(a.depth_m, a.coc_px, scene.lens(0), b.depth_m, b.coc_px, scene.lens(2))
    np.testing.assert_allclose(np.load(out / "s1" / "depth.npy"), fused, rtol=1e-4)
    assert single.shape == other.shape
    assert "frame 2" in json.loads((out / "s0" / "prediction.json").read_text())["source"]


def test_pair_fusion_resolves_near_far_where_both_cocs_agree():
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.6, 4.0, (20, 30))
    la, lb = ThinLens(0.05, 8.0, 1.0, 24e-6), ThinLens(0.05, 8.0, 2.5, 24e-6)
    coc_a, coc_b = np.asarray(la.coc_px(depth)), np.asarray(lb.coc_px(depth))
    prior = depth * 1.2  # the networks' guess, 20% off
    fused = fuse_pair(prior, coc_a, la, prior, coc_b, lb)
    np.testing.assert_allclose(fused, depth, rtol=1e-4)
    # Contradictory CoC maps (no candidate pair agrees): the networks' depth stays.
    kept = fuse_pair(prior, coc_a * 0 + 40.0, la, prior, coc_b * 0, lb)
    np.testing.assert_allclose(kept, prior, rtol=1e-5)


def test_pair_fusion_weighs_each_frame_by_its_coc_precision():
    """An aperture pair: one CoC pixel of the f/8 frame means (8 / 2.8) times more inverse depth than one of
    the f/2.8 frame, so the f/2.8 frame weighs (8 / 2.8)^2 as much."""
    la, lb = ThinLens(0.05, 2.8, 1.7, 24e-6), ThinLens(0.05, 8.0, 1.7, 24e-6)
    w_a = 1.0 / (1.0 + (2.8 / 8.0) ** 2)
    ones = np.ones((4, 5))
    kept = fuse_pair(2.0 * ones, 40.0 * ones, la, 1.0 * ones, 0.0 * ones, lb)  # no candidates agree
    np.testing.assert_allclose(kept, 2.0 ** w_a, rtol=1e-5)
    depth = np.random.default_rng(1).uniform(2.0, 4.0, (20, 30))  # one side of the focus plane
    coc_b_noisy = np.asarray(lb.coc_px(depth)) + 0.4
    fused = fuse_pair(depth, np.asarray(la.coc_px(depth)), la, depth, coc_b_noisy, lb)
    alone_b = lb.depth_from_signed_coc_px(coc_b_noisy)  # behind the focus plane, as every depth here is
    err_fused, err_b = np.abs(1 / fused - 1 / depth), np.abs(1 / alone_b - 1 / depth)
    np.testing.assert_allclose(err_fused, (1 - w_a) * err_b, rtol=1e-3)


def test_box_filter_matches_average_pooling():
    import torch.nn.functional as F

    from gs_dfd.models.defocus_net import _box

    x = torch.rand(2, 3, 37, 53)
    for k in (1, 5, 11, 21):
        ref = F.avg_pool2d(F.pad(x, (k // 2,) * 4, mode="replicate"), k, stride=1)
        torch.testing.assert_close(_box(x, k), ref, atol=1e-5, rtol=1e-5)


def test_composed_weights_run_one_models_defocusnet_and_the_others_depthnet(tmp_path):
    """tools/compose_weights.py (how v2's weights were made): the result predicts exactly what the two
    parts give one after the other; a model without the two networks is a one-line error and writes nothing."""
    import subprocess
    import sys

    from gs_dfd.models.d3net import D3Net
    from gs_dfd.models.defocus_net import DefocusNetConfig
    from gs_dfd.optics.thin_lens import LensBatch

    torch.manual_seed(1)
    a = SiameseDepthModel(DefocusNetConfig(reblur_features=True, defocus_global_context=True)).eval()
    b = SiameseDepthModel().eval()
    for p in b.depth.parameters():  # so that taking the wrong DepthNet would show
        p.data.add_(0.05 * torch.randn_like(p))
    export_weights(tmp_path / "a.pt", a, {"method": "gs-siamese", "steps": 7})
    export_weights(tmp_path / "b.pt", b, {"method": "gs-siamese", "steps": 9})
    tool = Path(__file__).resolve().parents[1] / "tools" / "compose_weights.py"
    out = tmp_path / "ab.pt"
    run = subprocess.run([sys.executable, str(tool), "--defocus-from", str(tmp_path / "a.pt"), "--depth-from",
                          str(tmp_path / "b.pt"), "--out", str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    predictor = Predictor(out)
    assert predictor.meta["steps"] == 7
    assert predictor.meta["composed_from"]["depth_net"]["file"] == str(tmp_path / "b.pt")
    img = np.random.default_rng(2).random((48, 64, 3)).astype(np.float32)
    lens = ThinLens(0.05, 8.0, 1.0, 24e-6)
    got = predictor.predict(img, lens)
    a16, b16 = Predictor(tmp_path / "a.pt").model, Predictor(tmp_path / "b.pt").model  # the float16 round trip
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    with torch.no_grad():
        rows = LensBatch.from_lenses([lens]).as_rows()  # [1, 4]
        coc = a16.defocus(x, rows)
        want = b16.depth(x, coc, rows)["depth"][0, 0].numpy()
        other = a16.depth(x, coc, rows)["depth"][0, 0].numpy()
    np.testing.assert_allclose(got.coc_px, coc[0, 0].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got.depth_m, want, rtol=1e-5, atol=1e-5)
    assert np.abs(other - want).max() > 1e-3

    export_weights(tmp_path / "d3.pt", D3Net(), {"method": "d3net"})
    bad = tmp_path / "bad.pt"
    run = subprocess.run([sys.executable, str(tool), "--defocus-from", str(tmp_path / "a.pt"), "--depth-from",
                          str(tmp_path / "d3.pt"), "--out", str(bad)], capture_output=True, text=True)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1 and "d3.pt" in run.stderr, run.stderr
    assert not bad.exists()
