"""tools/benchmark.py without training anything: the table, the run-reuse decision, the data checks."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import pytest

from gs_dfd.errors import GsDfdError
from gs_dfd.models.registry import get_method, method_names

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("benchmark_tool", REPO / "tools" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["benchmark_tool"] = module
    spec.loader.exec_module(module)
    return module


def test_fmt_seconds(bench):
    assert bench.fmt_seconds(None) == "—"
    assert bench.fmt_seconds(0.0042) == "4.2 ms"
    assert bench.fmt_seconds(0.139) == "139 ms"
    assert bench.fmt_seconds(4.44) == "4.4 s"
    assert bench.fmt_seconds(600) == "10 min"
    assert bench.fmt_seconds(3 * 3600) == "3.0 h"


def test_table_rows_and_header(bench):
    rows = [
        {"method": "gs-siamese", "input": "1 frame (1 m)", "data_set_label": "synthetic nyu stacks", "abs_rel": 0.12345,
         "rmse": 0.3, "delta1": 0.95, "seconds_per_image": 0.05, "training_seconds": 5400.0, "scenes": 26},
        {"method": "dff", "input": "—", "data_set_label": "real d3net f/2.8", "na": "n/a: one focus distance",
         "training_seconds": None, "scenes": 0},
    ]
    lines = bench.table_rows(rows)
    assert lines[0] == ("| gs-siamese | 1 frame (1 m) | synthetic nyu stacks | 0.123 | 0.300 | 0.950 | 50 ms | "
                        "90 min | 26 |")
    assert lines[1].startswith("| dff | — | real d3net f/2.8 | n/a: one focus distance |")
    assert all(line.count("|") == bench.TABLE_HEAD.splitlines()[0].count("|") for line in lines)
    hw = {"cpu": "Some CPU", "cores": 2, "threads": 1, "env": {"OMP_NUM_THREADS": "1"}, "torch": "2.x", "cuda": None,
          "load_average_1min_at_start": 0.5, "date": "2025-01-02T03:04:05+00:00"}
    head = bench.header_line(hw, "small")
    assert "Some CPU, 2 cores, 1 torch thread (OMP_NUM_THREADS=1)" in head and "2025-01-02" in head


def _fake_run(run_dir: Path, config: dict, finished: bool, checkpoint: bool = False, age_s: float = 3600) -> Path:
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(config))
    if checkpoint:
        (run_dir / "checkpoint.pt").write_bytes(b"x")
    if finished:
        (run_dir / "model.pt").write_bytes(b"x")
        (run_dir / "summary.json").write_text(json.dumps({"steps": config["steps"], "train_seconds": 10.0,
                                                          "fit_cache_seconds": 2.0}))
    old = time.time() - age_s
    for p in run_dir.iterdir():
        os.utime(p, (old, old))
    return run_dir


EXPECTED = {"command": "train", "method": "gs-siamese", "scenes": ["data_local/train_set"], "steps": 2000,
            "fit_iterations": 80, "lr": 0.001, "out": "runs/x", "progress": True, "d3net": {"dropout": 0.2}}


def test_decide_run(bench, tmp_path):
    assert bench.decide_run(tmp_path / "none", EXPECTED).action == "train"
    same = _fake_run(tmp_path / "same", {**EXPECTED, "out": "elsewhere", "progress": False,
                                         "scenes": ["data_local/train_set/"]}, finished=True)
    assert bench.decide_run(same, EXPECTED).action == "reuse"
    assert bench.decide_run(same, EXPECTED, retrain=True).action == "replace"
    other = _fake_run(tmp_path / "other", {**EXPECTED, "steps": 3000}, finished=True)
    d = bench.decide_run(other, EXPECTED)
    assert d.action == "replace" and "steps: run 3000, benchmark 2000" in d.reason
    partial = _fake_run(tmp_path / "partial", EXPECTED, finished=False, checkpoint=True)
    assert bench.decide_run(partial, EXPECTED).action == "resume"
    busy = _fake_run(tmp_path / "busy", EXPECTED, finished=False, checkpoint=True, age_s=5)
    with pytest.raises(GsDfdError, match="in progress"):
        bench.decide_run(busy, EXPECTED, busy_seconds=600)
    assert bench.decide_run(busy, EXPECTED, busy_seconds=0).action == "resume"
    # A d3net run does not depend on sections it never reads.
    d3 = {**EXPECTED, "method": "d3net"}
    d3_run = _fake_run(tmp_path / "d3", {**d3, "fit_iterations": 40}, finished=True)
    assert bench.decide_run(d3_run, d3).action == "reuse"
    # config.json rewritten after model.pt (a restart): not a finished run.
    (same / "config.json").write_text(json.dumps(EXPECTED))
    assert not bench.run_finished(same)


def test_expected_config_of_the_committed_configs(bench, tmp_path):
    cfg = bench.BenchmarkConfig(runs_dir=tmp_path / "runs", configs_dir=REPO / "configs")
    for method in bench.TRAIN_RUNS:
        pre = None
        if method in bench.PRETRAIN_RUNS:
            pre = bench.plan_run(cfg, bench.SETTINGS["small"], method, tmp_path / "train_set",
                                 bench.PRETRAIN_RUNS[method])
        plan = bench.plan_run(cfg, bench.SETTINGS["small"], method, tmp_path / "train_set", init_from=pre)
        assert plan.decision.action == "train"
        assert plan.run_dir.parent == tmp_path / "runs" / "bench_small"
        assert plan.expected["steps"] == 150 and plan.expected["scenes"] == [str(tmp_path / "train_set")]
        if get_method(method).supervised:
            assert plan.expected["supervised"] is True and "--fit-cache" not in plan.flags
        else:  # never the full runs' fit cache
            assert plan.expected["fit_cache"] == str(tmp_path / "runs" / "bench_small" / "fits")


def test_benchmark_trains_every_registered_method(bench):
    """Its networks are the registry's methods, each with a committed config of that method."""
    assert set(bench.TRAIN_RUNS) == set(method_names())
    assert {m.train_method for m in bench.METHODS.values() if m.kind == "net"} == set(method_names())
    for method, (config, _) in {**bench.TRAIN_RUNS, **bench.PRETRAIN_RUNS}.items():
        assert (REPO / "configs" / config).is_file(), config


def test_fine_tuned_run_follows_its_first_stage(bench, tmp_path):
    cfg = bench.BenchmarkConfig(runs_dir=tmp_path / "runs", configs_dir=REPO / "configs")
    small, train_set = bench.SETTINGS["small"], tmp_path / "train_set"
    stage1 = bench.PRETRAIN_RUNS["gs-siamese"]
    with pytest.raises(GsDfdError, match="fine-tunes"):  # never the YAML's full-run weights by accident
        bench.plan_run(cfg, small, "gs-siamese", train_set)
    pre = bench.plan_run(cfg, small, "gs-siamese", train_set, stage1)
    ft = bench.plan_run(cfg, small, "gs-siamese", train_set, init_from=pre)
    assert pre.run_dir != ft.run_dir and pre.run_dir.parent == ft.run_dir.parent == tmp_path / "runs" / "bench_small"
    assert ft.expected["init_weights"] == str(pre.run_dir / "checkpoint.pt")
    assert ft.flags[ft.flags.index("--init-weights") + 1] == str(pre.run_dir / "checkpoint.pt")
    _fake_run(ft.run_dir, ft.expected, finished=True)
    again = bench.plan_run(cfg, small, "gs-siamese", train_set, init_from=pre)
    assert again.decision.action == "replace"  # stage 1 is trained anew, so stage 2 must be too
    _fake_run(pre.run_dir, pre.expected, finished=True)
    pre = bench.plan_run(cfg, small, "gs-siamese", train_set, stage1)
    assert pre.decision.action == "reuse"
    assert bench.plan_run(cfg, small, "gs-siamese", train_set, init_from=pre).decision.action == "reuse"
    # Its training time counts both stages and each shared scene's fit once.
    s1 = {"training_seconds": 130.0, "train_seconds": 100.0, "fit_seconds_by_scene": {"a": 10.0, "b": 20.0}}
    s2 = {"training_seconds": 90.0, "train_seconds": 50.0, "fit_seconds_by_scene": {"a": 10.0, "b": 20.0, "c": 10.0}}
    assert bench.runs_seconds(s1, s2) == 100.0 + 50.0 + 40.0
    assert bench.runs_seconds(s1, {**s2, "fit_seconds_by_scene": None}) == 220.0
    # Two caches of the same scene names (other focus distances) are two sets of fits.
    other = {**s2, "fit_cache": "f17"}
    assert bench.runs_seconds(s1, other) == 100.0 + 50.0 + 30.0 + 40.0
    # Every committed config's fine-tuning set is built with every non-held-out d3net id (v1's too).
    argv = bench.data_argv(cfg, bench.SETTINGS["full"], "train", Path("data_local/train_set_all"), owned=False)
    assert "--all-d3net-ids" in argv


def test_spread_and_expected_scenes(bench):
    names = [f"s{i}" for i in range(6)]
    assert bench.spread(names, 3) == ["s0", "s2", "s5"]
    assert bench.spread(names, None) == names and bench.spread(names, 0) == []
    full = bench.SETTINGS["full"]
    assert len(bench.expected_scenes(full, "synthetic")) == 26 and len(bench.expected_scenes(full, "real")) == 21
    assert all(i % 4 == 0 for i in full.real_ids) and not any(i % 4 == 0 for i in full.train_d3net_ids)
    small = bench.SETTINGS["small"]
    assert len(bench.expected_scenes(small, "train")) == 6
    assert len(bench.expected_scenes(small, "synthetic")) == 6 and len(bench.expected_scenes(small, "real")) == 6


def test_missing_shared_data_is_one_line_error(bench, tmp_path):
    cfg = bench.BenchmarkConfig(src=tmp_path / "no_such_data", out=tmp_path / "out")
    with pytest.raises(GsDfdError, match="no_such_data: shared data folder not found"):
        bench.build_data_set(bench.Recorder(), cfg, bench.SETTINGS["smoke"], "real", tmp_path / "real")
    assert not (tmp_path / "real").exists()


def test_describe_input(bench, tiny_scene):
    assert bench.describe_input(tiny_scene, [0]) == "1 frame (1 m)"
    assert bench.describe_input(tiny_scene, [0, 1, 2]) == "3 frames (1, 1.5, 2 m)"


def test_fit_cache_busy_only_while_a_fit_is_written(bench, tmp_path):
    entry = tmp_path / "fits" / "scene_a"
    entry.mkdir(parents=True)
    (entry / "config.json").write_text("{}")
    with pytest.raises(GsDfdError, match="in progress"):  # started, not finished
        bench.check_fit_cache_not_busy(tmp_path / "fits", 600)
    time.sleep(0.01)
    (entry / "metrics.json").write_text("{}")  # finished a moment ago: not busy
    bench.check_fit_cache_not_busy(tmp_path / "fits", 600)


def test_training_set_focus_distances(bench, tmp_path):
    """make_training_set's --focus-distances-m sets every stack's frames (procedural only: no shared data needed)."""
    tool = bench._load_tool("make_training_set")
    out = tmp_path / "train"
    cfg = tool.TrainingSetConfig(src=tmp_path / "absent", out=out, d3net_ids=(), procedural_kinds=("planes",),
                                 procedural_per_kind=1, focus_distances_m=(1.0, 1.7))
    assert tool.main(cfg) == 0
    frames = json.loads((out / "proc_planes_100" / "scene.json").read_text())["frames"]
    assert [f["focus_distance_m"] for f in frames] == [1.0, 1.7]


def test_gs_siamese_chain_is_the_shipped_recipe(bench, tmp_path):
    """The shipped weights' recipe (README, "The shipped checkpoint"): both stages' configs exist, stage 2
    fine-tunes stage 1, both read re-blur ratios and global context on whole frames, and the full setting builds
    the six-focus training sets as the configs' comments say (the fine-tuning set with every non-held-out id)."""
    cfg = bench.BenchmarkConfig(runs_dir=tmp_path / "runs", configs_dir=REPO / "configs")
    small, train_set = bench.SETTINGS["small"], tmp_path / "train_set"
    first, second = bench.PRETRAIN_RUNS["gs-siamese"], bench.TRAIN_RUNS["gs-siamese"]
    pre = bench.plan_run(cfg, small, "gs-siamese", train_set, first)
    ft = bench.plan_run(cfg, small, "gs-siamese", train_set, init_from=pre)
    assert ft.expected["init_weights"] == str(pre.run_dir / "checkpoint.pt")
    for plan in (pre, ft):
        net = plan.expected["defocus_net"]
        assert net["reblur_features"] and net["defocus_global_context"]
        assert plan.expected["crop_hw"] == [240, 320]  # the nyu camera's whole frame
    full = bench.SETTINGS["full"]
    for run in (first, second):
        plan = bench.plan_run(bench.BenchmarkConfig(runs_dir=tmp_path / "full", configs_dir=REPO / "configs"), full,
                              "gs-siamese", None, run, init_from=pre if run is second else None)
        folder = Path(plan.scenes[0])
        argv = bench.data_argv(cfg, full, "train", folder, owned=False)
        assert argv[argv.index("--focus-distances-m") + 1:][:6] == ["1", "1.5", "1.7", "2.5", "4", "6"], argv
        assert ("--all-d3net-ids" in argv) == (run is second), argv
