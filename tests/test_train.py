"""gs-dfd train / predict on a tiny set: learning, self-supervision, exact resume, DDP, configs, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import strip_ground_truth
from gs_dfd.cli import main
from gs_dfd.data.scene import load_scene
from gs_dfd.eval.metrics import depth_metrics
from gs_dfd.models.checkpoint_io import model_from_checkpoint
from gs_dfd.train.config import TrainConfig
from gs_dfd.train.data import find_scenes, load_train_scene, sample_batch
from gs_dfd.train.loop import compute_losses
from gs_dfd.utils.outputs import partial_dir
from gs_dfd.utils.tb_events import read_scalars

TINY = ["--steps", "4", "--batch-size", "2", "--crop-hw", "48", "64", "--fit-iterations", "20", "--no-progress",
        "--log-every", "2", "--checkpoint-every", "2"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train") / "scenes"
    for kind, seed in (("planes", 3), ("mixed", 5)):
        assert main(["synth", "procedural", "--kind", kind, "--seed", str(seed), "--width", "96", "--height", "72",
                     "--focus-distances", "1", "2", "4", "--out", str(root / f"{kind}_{seed}"), "--no-progress"]) == 0
    return root


@pytest.fixture(scope="module")
def fit_cache(scenes, tmp_path_factory) -> Path:
    """One shared fit cache: the first run fills it, the others reuse it."""
    cache = tmp_path_factory.mktemp("fits")
    run = tmp_path_factory.mktemp("warm") / "run"
    assert main(["train", "--scenes", str(scenes), "--out", str(run), "--fit-cache", str(cache), *TINY,
                 "--steps", "1"]) == 0
    return cache


def _train(scenes: Path, cache: Path, out: Path, *extra: str) -> int:
    return main(["train", "--scenes", str(scenes), "--out", str(out), "--fit-cache", str(cache), *TINY, *extra])


def _eval_state(run: Path, scenes: Path, cache: Path) -> tuple[float, float]:
    """Self-supervised loss on fixed batches, and single-frame depth AbsRel against depth_gt (evaluation only)."""
    model, _ = model_from_checkpoint(run / "checkpoint.pt")
    dirs = find_scenes([scenes])
    train_scenes = [load_train_scene(d, cache / d.name) for d in dirs]
    cfg = TrainConfig(out=run)
    with torch.no_grad():
        losses = [float(compute_losses(model, sample_batch(train_scenes, np.random.default_rng(100 + k), 4, (48, 64)),
                                       train_scenes, cfg)["total"]) for k in range(3)]
        errors = []
        for d, ts in zip(dirs, train_scenes):
            gt = load_scene(d).load_depth_gt()
            out = model(ts.frames.permute(0, 3, 1, 2), ts.lenses)  # every frame of the stack, one at a time
            errors += [depth_metrics(depth[0].numpy(), gt, 0.5, 4.0)["abs_rel"] for depth in out["depth"]]
    return float(np.mean(losses)), float(np.mean(errors))


def test_training_lowers_the_self_supervised_loss_and_the_depth_error(scenes, fit_cache, tmp_path):
    before_run, after_run = tmp_path / "before", tmp_path / "after"
    assert _train(scenes, fit_cache, before_run, "--steps", "1", "--lr", "1e-9") == 0  # the initial weights
    assert _train(scenes, fit_cache, after_run, "--steps", "100", "--lr", "5e-3", "--checkpoint-every", "100") == 0
    loss0, err0 = _eval_state(before_run, scenes, fit_cache)
    loss1, err1 = _eval_state(after_run, scenes, fit_cache)
    assert loss1 < 0.7 * loss0, (loss0, loss1)
    assert err1 < 0.6 * err0, (err0, err1)


def test_self_supervised_training_never_reads_depth_gt_or_all_in_focus(scenes, fit_cache, tmp_path, monkeypatch):
    stripped = strip_ground_truth(scenes, tmp_path / "scenes", monkeypatch)  # GT gone, its readers raise
    cache = tmp_path / "fits"
    assert _train(stripped, cache, tmp_path / "run", "--fit-iterations", "5") == 0  # fits its cache too
    assert (cache / "planes_3" / "gaussians.ply").is_file()
    # The supervised comparison switch does read depth_gt: here that is a missing file, a clean error.
    monkeypatch.undo()
    assert _train(stripped, cache, tmp_path / "sup", "--supervised", "--fit-iterations", "5") == 2


def test_ctrl_c_leaves_a_checkpoint_that_resumes_exactly(scenes, fit_cache, tmp_path, monkeypatch, capsys):
    assert _train(scenes, fit_cache, tmp_path / "full") == 0
    import gs_dfd.train.loop as loop

    real, calls = loop.sample_batch, []

    def interrupt_at_third_step(*args, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(loop, "sample_batch", interrupt_at_third_step)
    assert _train(scenes, fit_cache, tmp_path / "half", "--checkpoint-every", "100") == 130
    assert "--resume" in capsys.readouterr().err
    assert not (tmp_path / "half").exists()  # results appear whole or not at all; the partial run waits beside
    assert torch.load(partial_dir(tmp_path / "half") / "checkpoint.pt", weights_only=True)["step"] == 2
    monkeypatch.undo()
    assert _train(scenes, fit_cache, tmp_path / "half", "--resume") == 0
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "half" / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 4
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_logs_are_tensorboard_events_and_jsonl(scenes, fit_cache, tmp_path):
    assert _train(scenes, fit_cache, tmp_path / "run") == 0
    events = list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1
    scalars = read_scalars(events[0])
    assert {(s, t) for s, t, _ in scalars} >= {(2, "loss/total"), (4, "loss/total"), (4, "loss/render")}
    lines = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 4]
    logged = {s: v for s, t, v in scalars if t == "loss/total"}
    assert abs(logged[4] - lines[-1]["total"]) < 1e-5


def test_existing_run_needs_resume_or_overwrite(scenes, fit_cache, tmp_path, capsys):
    assert _train(scenes, fit_cache, tmp_path / "run") == 0
    capsys.readouterr()
    assert _train(scenes, fit_cache, tmp_path / "run") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--resume" in err
    assert _train(scenes, fit_cache, tmp_path / "run", "--overwrite", "--steps", "2") == 0  # a new run, new logs
    assert [json.loads(x)["step"] for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()] == [2]
    assert len(list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))) == 1


def test_init_weights_starts_from_another_runs_weights(scenes, fit_cache, tmp_path, capsys):
    """Fine-tuning: --init-weights loads the weights; a run without it starts from the seed's weights."""
    assert _train(scenes, fit_cache, tmp_path / "a", "--steps", "3", "--lr", "5e-3") == 0
    source = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["model"]
    assert _train(scenes, fit_cache, tmp_path / "b", "--steps", "1", "--lr", "1e-9",
                  "--init-weights", str(tmp_path / "a" / "checkpoint.pt")) == 0
    assert _train(scenes, fit_cache, tmp_path / "c", "--steps", "1", "--lr", "1e-9") == 0
    tuned = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["model"]
    fresh = torch.load(tmp_path / "c" / "checkpoint.pt", weights_only=True)["model"]
    gap_tuned = max(float((tuned[k] - source[k]).abs().max()) for k in source if source[k].is_floating_point())
    gap_fresh = max(float((fresh[k] - source[k]).abs().max()) for k in source if source[k].is_floating_point())
    assert gap_tuned < 1e-6 < 1e-4 < gap_fresh, (gap_tuned, gap_fresh)
    # A checkpoint written before a network setting existed holds that setting's default: still the same network.
    old = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    del old["model_config"]["depth_net"]["max_log_correction"]
    torch.save(old, tmp_path / "old.pt")
    assert _train(scenes, fit_cache, tmp_path / "e", "--steps", "1", "--init-weights", str(tmp_path / "old.pt")) == 0
    capsys.readouterr()
    assert _train(scenes, fit_cache, tmp_path / "d", "--defocus-widths", "4", "8", "8",
                  "--init-weights", str(tmp_path / "a" / "checkpoint.pt")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--init-weights" in err and "network settings" in err


def test_fit_cache_entries_are_keyed_by_propagation_and_blur_model(scenes, fit_cache, tmp_path):
    """An entry is reused only with the --propagate and --sigma-per-coc it was fitted with; one from before those
    options existed counts as fitted without propagation (off) and with sigma 0.25 c."""
    import shutil

    from gs_dfd.train.fit_cache import is_cached

    scene = find_scenes([scenes])[0]
    assert is_cached(scene, fit_cache, 20, "auto", 0.275) and not is_cached(scene, fit_cache, 20, "off", 0.275)
    assert not is_cached(scene, fit_cache, 20, "auto", 0.25)
    old = tmp_path / "old"
    shutil.copytree(fit_cache / scene.name, old / scene.name)
    cfg = json.loads((old / scene.name / "config.json").read_text())
    del cfg["propagate"], cfg["sigma_per_coc"]
    (old / scene.name / "config.json").write_text(json.dumps(cfg))
    assert is_cached(scene, old, 20, "off", 0.25) and not is_cached(scene, old, 20, "auto", 0.25)
    assert not is_cached(scene, old, 20, "off", 0.275)


def test_fit_cache_entry_is_refitted_when_the_stack_changes(scenes, fit_cache, tmp_path):
    """A scene rebuilt under the same name with another focal stack must not be served the old stack's fit."""
    import shutil

    from gs_dfd.train.fit_cache import STACK_FILE, is_cached

    scene = find_scenes([scenes])[0]
    assert is_cached(scene, fit_cache, 20, "auto", 0.275)
    changed = tmp_path / "scenes" / scene.name
    shutil.copytree(scene, changed)
    spec = json.loads((changed / "scene.json").read_text())
    spec["frames"][-1]["focus_distance_m"] += 0.5
    (changed / "scene.json").write_text(json.dumps(spec))
    assert not is_cached(changed, fit_cache, 20, "auto", 0.275)
    shutil.copytree(scene, changed, dirs_exist_ok=True)     # same settings, one frame's pixels changed
    frame = changed / spec["frames"][0]["image"]
    frame.write_bytes(frame.read_bytes() + b"\0")
    assert not is_cached(changed, fit_cache, 20, "auto", 0.275)
    no_key = tmp_path / "no_key"
    shutil.copytree(fit_cache / scene.name, no_key / scene.name)
    (no_key / scene.name / STACK_FILE).unlink()
    assert not is_cached(scene, no_key, 20, "auto", 0.275)
    frame.unlink()  # a broken scene is "not cached" (its fit then says what is wrong), not a traceback here
    assert not is_cached(changed, fit_cache, 20, "auto", 0.275)


def test_yaml_config_sets_defaults_and_flags_win(scenes, fit_cache, tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(f"scenes: [{scenes}]\nfit_cache: {fit_cache}\nsteps: 3\nbatch_size: 2\ncrop_hw: [48, 64]\n"
                   "fit_iterations: 20\nprogress: false\nweights:\n  smooth: 0.5\ndefocus_net:\n  defocus_widths: [4, 8, 8]\n")
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--steps", "2"]) == 0
    resolved = json.loads((out / "config.json").read_text())
    assert resolved["steps"] == 2  # the flag wins
    assert resolved["weights"]["smooth"] == 0.5 and resolved["defocus_net"]["defocus_widths"] == [4, 8, 8]
    model, _ = model_from_checkpoint(out / "model.pt")
    assert model.defocus.cfg.defocus_widths == (4, 8, 8)


def test_yaml_bare_off_means_off(tmp_path):
    """YAML 1.1 reads a bare ``off`` as false; for an on/off choice it means "off"."""
    from gs_dfd.train.config import load_yaml_defaults

    (tmp_path / "c.yaml").write_text("fit_propagate: off\n")
    assert load_yaml_defaults(tmp_path / "c.yaml", tmp_path / "run").fit_propagate == "off"


def test_bad_yaml_config_is_one_line_error(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("steps: 3\nweigths:\n  smooth: 1\n")
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.yaml" in err and "weigths" in err
    assert not (tmp_path / "run").exists()


def test_bad_reblur_sigmas_are_one_line_error(tmp_path, capsys):
    """A re-blur of sigma 0 has no ratio to take: refused before any fitting or training."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("scenes: [nowhere]\ndefocus_net:\n  reblur_features: true\n  reblur_sigmas_px: [1, 0]\n")
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "reblur-sigmas-px" in err and "c.yaml" in err, err
    assert not (tmp_path / "run").exists()


def test_ddp_two_cpu_processes(scenes, fit_cache, tmp_path):
    """torchrun with 2 gloo processes: each draws its own crops, gradients are averaged, rank 0 writes."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GS_DFD_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "gs_dfd.cli",
           "train", "--scenes", str(scenes), "--out", str(out), "--fit-cache", str(fit_cache), *TINY]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["world_size"] == 2 and ck["step"] == 4
    single = tmp_path / "single"
    assert _train(scenes, fit_cache, single) == 0
    one = torch.load(single / "checkpoint.pt", weights_only=True)
    # Two processes see twice the crops: the result differs from one process (and is finite).
    key = next(iter(ck["model"]))
    assert torch.isfinite(ck["model"][key]).all() and not torch.equal(ck["model"][key], one["model"][key])
