"""The baseline methods (d3net, mddnet) and the dered ablation: training, predict, the image-space re-blur,
what each reads, configs and --help."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import strip_ground_truth
from gs_dfd.cli import main
from gs_dfd.models.checkpoint_io import model_from_checkpoint
from gs_dfd.models.registry import get_method, method_names, new_model
from gs_dfd.train.config import TrainConfig, load_yaml_defaults
from gs_dfd.train.data import find_scenes, load_train_scene, sample_batch
from gs_dfd.train.loop import compute_losses
from gs_dfd.train.reblur import margin_for, reblur, reblur_reference, sigma_levels

REPO = Path(__file__).resolve().parents[1]
METHODS = ("d3net", "mddnet", "dered")
SMALL = ["--d3net-widths", "8", "16", "32", "--mddnet-widths", "8", "16", "32", "--defocus-widths", "8", "16", "32",
         "--depth-widths", "8", "16", "32"]
TINY = ["--batch-size", "2", "--crop-hw", "48", "64", "--fit-iterations", "20", "--no-progress", "--log-every", "5",
        "--checkpoint-every", "100", *SMALL]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("baselines") / "scenes"
    for kind, seed in (("planes", 3), ("mixed", 5)):
        assert main(["synth", "procedural", "--kind", kind, "--seed", str(seed), "--width", "96", "--height", "72",
                     "--focus-distances", "1", "2", "4", "--out", str(root / f"{kind}_{seed}"), "--no-progress"]) == 0
    return root


@pytest.fixture(scope="module")
def runs(scenes, tmp_path_factory) -> dict[str, Path]:
    """Each method trained 30 steps once (dered fills the shared fit cache; the others must not touch it)."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for method in METHODS:
        out[method] = root / method
        assert main(["train", "--method", method, "--scenes", str(scenes), "--out", str(out[method]),
                     "--fit-cache", str(root / "fits"), "--steps", "30", "--lr", "3e-3", *TINY]) == 0
    return out


def _small_cfg(method: str, out: Path) -> TrainConfig:
    cfg = TrainConfig(out=out, method=method)
    w = (8, 16, 32)
    return dataclasses.replace(cfg, d3net=dataclasses.replace(cfg.d3net, d3net_widths=w),
                               mddnet=dataclasses.replace(cfg.mddnet, mddnet_widths=w),
                               defocus_net=dataclasses.replace(cfg.defocus_net, defocus_widths=w),
                               depth_net=dataclasses.replace(cfg.depth_net, depth_widths=w))


@pytest.mark.parametrize("method", METHODS)
def test_each_method_lowers_its_training_loss(method, runs, scenes):
    """Its own loss on fixed batches: the initial weights (same seed) against the weights after 30 steps."""
    run = runs[method]
    cfg = _small_cfg(method, run)
    torch.manual_seed(cfg.seed)
    before = new_model(cfg)
    after, ck = model_from_checkpoint(run / "checkpoint.pt")
    assert ck["method"] == method and type(after) is type(before)
    spec = get_method(method)
    fits = run.parent / "fits"
    train_scenes = [load_train_scene(d, fits / d.name if spec.needs_fit else None, supervised=spec.supervised,
                                     fit_aif=spec.fit_aif) for d in find_scenes([scenes])]
    losses = []
    for model in (before, after):
        model.eval()
        with torch.no_grad():
            losses.append(np.mean([float(compute_losses(model, sample_batch(train_scenes, np.random.default_rng(100 + k),
                                                                            4, (48, 64)), train_scenes, cfg)["total"])
                                   for k in range(4)]))
    assert losses[1] < 0.8 * losses[0], losses
    resolved = json.loads((run / "config.json").read_text())
    assert resolved["method"] == method and resolved["supervised"] == spec.supervised
    if spec.supervised:  # the baselines never fit a scene: no fit cache of their own
        assert not (run / "fits").exists()
        assert set(json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()) >= {5, 30}


@pytest.mark.parametrize("method", METHODS)
def test_predict_with_each_method(method, runs, scenes, tmp_path):
    out = tmp_path / "pred"
    scene = scenes / "mixed_5"
    assert main(["predict", "--scene", str(scene), "--frame", "1", "--checkpoint", str(runs[method] / "model.pt"),
                 "--out", str(out)]) == 0
    depth, coc = np.load(out / "depth.npy"), np.load(out / "coc.npy")
    assert depth.shape == coc.shape == (72, 96) and depth.dtype == coc.dtype == np.float32
    assert np.isfinite(depth).all() and (depth > 0).all() and (coc >= 0).all()
    meta = json.loads((out / "prediction.json").read_text())
    assert meta["method"] == method
    assert meta["coc_source"] == ("thin lens of the predicted depth" if method == "d3net" else "network")
    assert (out / "uncertainty.npy").is_file() == (method == "d3net")


def test_d3net_mc_dropout_uncertainty(runs, scenes, tmp_path, capsys):
    args = ["predict", "--scene", str(scenes / "planes_3"), "--checkpoint", str(runs["d3net"] / "model.pt")]
    assert main([*args, "--out", str(tmp_path / "mc")]) == 0  # default: 8 passes
    std = np.load(tmp_path / "mc" / "uncertainty.npy")
    assert std.shape == (72, 96) and std.dtype == np.float32 and std.mean() > 0
    assert (tmp_path / "mc" / "uncertainty.png").is_file()
    assert json.loads((tmp_path / "mc" / "prediction.json").read_text())["mc_samples"] == 8
    assert main([*args, "--mc-samples", "1", "--out", str(tmp_path / "one")]) == 0
    assert (np.load(tmp_path / "one" / "uncertainty.npy") == 0).all()
    # Methods without dropout ignore the flag, and say so.
    capsys.readouterr()
    assert main(["predict", "--scene", str(scenes / "planes_3"), "--checkpoint", str(runs["mddnet"] / "model.pt"),
                 "--mc-samples", "4", "--out", str(tmp_path / "mdd")]) == 0
    assert "--mc-samples ignored" in capsys.readouterr().out
    assert not (tmp_path / "mdd" / "uncertainty.npy").exists()


def test_reblur_matches_the_brute_force_reference():
    torch.manual_seed(0)
    max_sigma = 10.0
    m = margin_for(max_sigma)
    h, w = 9, 11
    noise = torch.rand(2, 3, h + 2 * m, w + 2 * m, dtype=torch.float64)
    smooth = torch.nn.functional.avg_pool2d(noise, 5, 1, 2)
    coc = torch.rand(2, 2, h, w, dtype=torch.float64) * 40.0  # sigma 0..10 px
    for aif, max_err, mean_err in ((noise, 0.05, 0.003), (smooth, 0.006, 0.0005)):
        err = (reblur(aif, coc, m, max_sigma) - reblur_reference(aif, coc, m)).abs()
        assert err.max() < max_err and err.mean() < mean_err, (err.max(), err.mean())
    # On the ladder's own sigmas the interpolation is exact.
    levels = sigma_levels(max_sigma).double()
    on_levels = 4.0 * levels[torch.randint(len(levels), (2, 2, h, w))]
    torch.testing.assert_close(reblur(noise, on_levels, m, max_sigma), reblur_reference(noise, on_levels, m))


def test_reblur_gradient_reaches_the_coc_map():
    torch.manual_seed(1)
    m = margin_for(2.0)
    aif = torch.rand(1, 3, 6 + 2 * m, 7 + 2 * m, dtype=torch.float64)
    coc = (0.3 + torch.rand(1, 2, 6, 7, dtype=torch.float64) * 7.0).requires_grad_()  # sigma 0.08..1.8 px
    torch.autograd.gradcheck(lambda c: reblur(aif, c, m, 2.0), (coc,))
    # More blur of a step edge spreads it: the gradient has the sign a finite difference of the reference has.
    step = torch.zeros(1, 1, 6 + 2 * m, 7 + 2 * m, dtype=torch.float64)
    step[..., :, 3 + m:] = 1.0
    c = torch.full((1, 1, 6, 7), 4.0, dtype=torch.float64, requires_grad=True)
    reblur(step, c, m, 2.0)[0, 0, 0, 2, 2].backward()  # left of the edge: brightens with blur
    fd = (reblur_reference(step, c.detach() + 0.1, m) - reblur_reference(step, c.detach() - 0.1, m))[0, 0, 0, 2, 2]
    assert c.grad[0, 0, 2, 2] > 0 and fd > 0


def test_dered_never_reads_depth_gt_or_all_in_focus(runs, scenes, tmp_path, monkeypatch):
    stripped = strip_ground_truth(scenes, tmp_path / "scenes", monkeypatch)  # GT gone, its readers raise
    fits = runs["dered"].parent / "fits"  # keyed by scene name: the stripped copies reuse the cached fits
    assert main(["train", "--method", "dered", "--scenes", str(stripped), "--out", str(tmp_path / "run"),
                 "--fit-cache", str(fits), "--steps", "3", *TINY]) == 0
    # The supervised baselines do read depth_gt: here a missing file, a clean error.
    monkeypatch.undo()
    assert main(["train", "--method", "d3net", "--scenes", str(stripped), "--out", str(tmp_path / "sup"),
                 "--steps", "2", *TINY]) == 2


def test_supervised_baselines_run_no_gaussian_fit(scenes, tmp_path, monkeypatch):
    import gs_dfd.train.loop as loop

    def no_fit(*args, **kw):
        raise AssertionError("a supervised baseline ran the per-scene fits")

    monkeypatch.setattr(loop, "ensure_fits", no_fit)
    for method in method_names(supervised=True):
        assert main(["train", "--method", method, "--scenes", str(scenes), "--out", str(tmp_path / method),
                     "--fit-cache", str(tmp_path / "fits"), "--steps", "2", *TINY]) == 0
    assert not (tmp_path / "fits").exists()


def test_resume_refuses_another_method(runs, scenes, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs["d3net"], run)
    capsys.readouterr()
    assert main(["train", "--method", "mddnet", "--scenes", str(scenes), "--out", str(run), "--resume",
                 "--steps", "31", *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "d3net" in err


def test_shipped_yaml_configs_parse():
    for method in METHODS:
        path = REPO / "configs" / f"{method}_nyu.yaml"
        cfg = load_yaml_defaults(path, None)
        assert cfg.method == method, path
        assert cfg.scenes  # same data as the gs-siamese config
        assert (cfg.fit_cache is not None) == (method == "dered"), path


def test_help_documents_the_methods(capsys):
    for command, needles in ((["train"], ("gs-siamese", "dered", "d3net", "mddnet", "--d3net-widths", "--dropout")),
                             (["predict"], ("--mc-samples", "uncertainty"))):
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        text = capsys.readouterr().out
        for needle in needles:
            assert needle in text, (command, needle)
