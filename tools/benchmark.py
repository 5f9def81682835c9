#!/usr/bin/env python
"""Rebuild the benchmark comparison table (docs/results_history.md) from nothing: data, training, predictions,
evaluation.

    OMP_NUM_THREADS=2 python tools/benchmark.py --out out/benchmark            # full: the committed configs, hours
    OMP_NUM_THREADS=2 python tools/benchmark.py --small --out out/bench_small  # a quick check, < 20 min on 2 cores

Run it from the repository root (the configs' relative paths are relative to the working directory, as for
``gs-dfd train``). Steps, each one the CLI or a converter in tools/, called in this process and recorded in
``OUT/results.json`` as the command line that reproduces it:

1. **Data** (built when missing, reused when the folder holds exactly the expected scenes), from the real data in
   ``--src`` (``../shared/data``):

   - the training scenes (``tools/make_training_set.py``: d3net_indoor_train ids with id % 4 != 0 and procedural
     scenes); the full setting uses the folders the committed configs name: ``data_local/train_set`` for dered,
     d3net and mddnet; ``data_local/train_set_f17`` and ``data_local/train_set_all_f17`` (six focus distances; the
     second with every non-held-out id) for gs-siamese's two stages;
   - *synthetic*: nyu-camera 5-frame focal stacks (320x240, f/8, focus 1, 1.5, 2.5, 4, 6 m) synthesised from the
     held-out real RGB-D (``tools/convert_rgbd_sets.py``): d3net_indoor_train ids 000, 004, ..., 080 (f/8 image +
     Xtion depth), NYUv2 0045 and the 4 Middlebury scenes;
   - *real*: the real D3Net DSLR aperture pairs of the same held-out ids (``tools/convert_d3net_indoor.py``,
     645x432, frame 0 = f/2.8, frame 1 = f/8, nominal focus 1.7 m).

2. **Training** (``gs-dfd train --config configs/<method>_nyu.yaml``) of gs-siamese, dered, d3net and mddnet into
   ``RUNS/<method>_nyu`` (``RUNS`` = ``--runs-dir``; ``--small`` uses ``RUNS/bench_small/``); gs-siamese has the
   shipped weights' two stages, ``gs_siamese_nyu_reblur.yaml`` and then ``gs_siamese_nyu_reblur_finetune.yaml``
   (``RUNS/gs_siamese_nyu_reblur_ft``, started from stage 1 by ``--init-weights``; its training time counts
   both). A run whose ``model.pt`` is finished and whose ``config.json`` matches the config this benchmark trains
   with (method, steps, scenes, fit iterations, networks, losses, ...) is reused; an unfinished one with a
   matching checkpoint is resumed; one with another config is moved aside to ``RUN.replaced-<time>`` (never
   deleted) and trained anew. A run folder written to in the last ``--busy-minutes`` without a finished model is
   taken for a training in progress and refused.

3. **Predictions and fits**: ``gs-dfd predict`` of each network on frame 0 of every scene (``gs-siamese (pair)``:
   frames 0 + 1); ``gs-dfd fit --method dff`` and ``gs-dfd fit`` (per-scene Gaussians) on each scene's whole stack.

4. **Evaluation** with ``gs-dfd eval`` (range ``--min-depth``-``--max-depth``, its conventions), then
   ``OUT/table.md`` (the markdown comparison table), ``OUT/results.json`` (every number, the hardware, the
   commands) and ``OUT/predictions/<data set>/<method>/``, ``OUT/eval/<data set>/<method>/``. ``OUT`` is built in
   a hidden sibling and appears complete or not at all; training runs and data live outside it and survive a
   failed benchmark, so a second call continues where the first stopped.

Thread count: every step runs in this process with ``GS_DFD_THREADS`` / ``OMP_NUM_THREADS`` (as all gs-dfd
commands). Times are wall-clock on whatever else the machine is doing: the load average at the start is
recorded next to the table.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.util
import json
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import numpy as np

from gs_dfd.cli import main as cli_main, run_guarded, run_tool
from gs_dfd.console import console
from gs_dfd.errors import GsDfdError, Interrupted
from gs_dfd.utils.atomic import write_file_atomic, write_json_atomic
from gs_dfd.utils.outputs import atomic_output_dir, check_output

TOOLS_DIR = Path(__file__).resolve().parent

# --------------------------------------------------------------------------- what is compared

MethodKey = Literal["gs-siamese", "gs-siamese-pair", "dered", "d3net", "mddnet", "dff", "fit"]
DataSetKey = Literal["synthetic", "real"]


@dataclass(frozen=True)
class MethodSpec:
    key: str
    """The name in --methods."""
    label: str
    """The name in the table."""
    kind: Literal["net", "dff", "fit"]
    """net: gs-dfd predict with a trained model; dff / fit: gs-dfd fit --method dff / gs on the whole stack."""
    train_method: Optional[str] = None
    """gs-dfd train --method of the model (net only)."""
    pair: bool = False
    """Predict from frames 0 + 1 (--pair-frame 1) instead of frame 0 alone."""


METHODS: dict[str, MethodSpec] = {m.key: m for m in (
    MethodSpec("gs-siamese", "gs-siamese", "net", "gs-siamese"),
    MethodSpec("gs-siamese-pair", "gs-siamese (pair)", "net", "gs-siamese", pair=True),
    MethodSpec("dered", "dered", "net", "dered"),
    MethodSpec("d3net", "d3net", "net", "d3net"),
    MethodSpec("mddnet", "mddnet", "net", "mddnet"),
    MethodSpec("dff", "dff", "dff"),
    MethodSpec("fit", "fit", "fit"),
)}

# gs-dfd train --method -> (committed config, run folder name)
TRAIN_RUNS: dict[str, tuple[str, str]] = {
    "gs-siamese": ("gs_siamese_nyu_reblur_finetune.yaml", "gs_siamese_nyu_reblur_ft"),
    "dered": ("dered_nyu.yaml", "dered_nyu"),
    "d3net": ("d3net_nyu.yaml", "d3net_nyu"),
    "mddnet": ("mddnet_nyu.yaml", "mddnet_nyu"),
}
# Runs that fine-tune another (their config's init_weights): method -> (stage-1 config, run folder name).
# The benchmark trains stage 1 first and points stage 2's --init-weights at it.
PRETRAIN_RUNS: dict[str, tuple[str, str]] = {
    "gs-siamese": ("gs_siamese_nyu_reblur.yaml", "gs_siamese_nyu_reblur"),
}
# The committed configs' training folders that are not tools/make_training_set.py's defaults: its extra flags
# (train_set_all: v1's stage 2, docs/experiments/configs/gs_siamese_nyu_finetune.yaml, outside the benchmark).
SIX_FOCUS_DISTANCES = ("--focus-distances-m", "1", "1.5", "1.7", "2.5", "4", "6")
TRAIN_SET_FLAGS: dict[str, tuple[str, ...]] = {
    "data_local/train_set_all": ("--all-d3net-ids",),
    "data_local/train_set_f17": SIX_FOCUS_DISTANCES,
    "data_local/train_set_all_f17": ("--all-d3net-ids", *SIX_FOCUS_DISTANCES),
}

DATA_SET_LABELS = {"synthetic": "synthetic nyu stacks", "real": "real d3net f/2.8"}
RGBD_SOURCES = ("nyuv2_0045", "middlebury_cones", "middlebury_teddy", "middlebury_tsukuba", "middlebury_venus")
HELD_OUT_IDS = tuple(range(0, 81, 4))  # d3net_indoor_train ids 000, 004, ..., 080: never in training
FULL_TRAIN_IDS = (1, 2, 3, 5, 6, 7, 9, 10, 11, 13, 14, 15, 17, 18, 19, 21, 22, 23, 25, 26, 27, 29, 30, 31)


@dataclass(frozen=True)
class Setting:
    """Everything that differs between the full benchmark, --small and --smoke."""

    name: str
    runs_subdir: str
    """Sub-folder of --runs-dir for the runs ('' = the runs themselves, as the configs' comments name them)."""
    train_set: bool
    """True: build a training set of its own (below) under DATA/<name>/train_set; False: the configs' scenes."""
    train_d3net_ids: tuple[int, ...] = FULL_TRAIN_IDS
    procedural_kinds: tuple[str, ...] = ("mixed", "planes", "occlusion")
    procedural_per_kind: int = 3
    steps: Optional[int] = None
    """Training steps (None: the config's)."""
    fit_cache_iterations: Optional[int] = None
    """Iterations of the training scenes' one-off Gaussian fits (None: the config's)."""
    synth_sources: tuple[str, ...] = RGBD_SOURCES
    synth_d3net_ids: tuple[int, ...] = HELD_OUT_IDS
    real_ids: tuple[int, ...] = HELD_OUT_IDS
    fit_iterations: Optional[int] = None
    """Iterations of the `fit` method (None: gs-dfd fit's default)."""
    fit_synthetic_scenes: Optional[int] = None
    """Synthetic scenes the `fit` method runs on (None: all; evenly spread over the sorted names)."""
    fit_real_scenes: Optional[int] = None
    """Real scenes the `fit` method runs on (None: all, 0: none)."""


SETTINGS = {
    "full": Setting("full", runs_subdir="", train_set=False),
    "small": Setting("small", runs_subdir="bench_small", train_set=True, train_d3net_ids=(1, 2, 3, 5),
                     procedural_kinds=("mixed", "occlusion"), procedural_per_kind=1, steps=150, fit_cache_iterations=40,
                     synth_sources=("middlebury_cones", "nyuv2_0045"), synth_d3net_ids=(0, 4, 8, 12),
                     real_ids=(0, 4, 8, 12, 16, 20), fit_iterations=60, fit_synthetic_scenes=3, fit_real_scenes=0),
    "smoke": Setting("smoke", runs_subdir="bench_smoke", train_set=True, train_d3net_ids=(1,),
                     procedural_kinds=("mixed",), procedural_per_kind=1, steps=3, fit_cache_iterations=3,
                     synth_sources=("nyuv2_0045",), synth_d3net_ids=(0,), real_ids=(0, 4), fit_iterations=3,
                     fit_synthetic_scenes=1, fit_real_scenes=1),
}


@dataclass
class BenchmarkConfig:
    """Rebuild the benchmark comparison table from nothing: build the evaluation data from ../shared/data, train
    (or reuse) gs-siamese, dered, d3net and mddnet, predict, run dff and the per-scene fit, evaluate with gs-dfd
    eval, and write OUT/table.md and OUT/results.json. Run from the repository root."""

    out: Path = Path("out/benchmark")
    """Output folder: table.md, results.json, predictions/, eval/ (built in a hidden sibling, moved into place
    when complete)."""
    small: bool = False
    """Quick check (< 20 min on 2 idle cores): 6 training scenes (4 d3net + 2 procedural), 150 steps per network,
    training fits of 40 iterations, 6 synthetic and 6 real held-out scenes, `fit` with 60 iterations on 3
    synthetic scenes and not on the real ones. Runs go to RUNS/bench_small/, data to DATA/small/."""
    smoke: bool = False
    """(advanced) Pipeline check in a few minutes: 2 training scenes, 3 steps, 1-2 scenes per data set, 3 fit
    iterations; its numbers mean nothing. Runs go to RUNS/bench_smoke/, data to DATA/smoke/."""
    src: Path = Path("../shared/data")
    """The shared real data (d3net_indoor_train/, nyuv2_sample/, middlebury_2001_2003/)."""
    runs_dir: Path = Path("runs")
    """Training runs: RUNS/<method>_nyu (full), RUNS/bench_small/<method>_nyu (--small); reused when finished with
    the same config."""
    data_dir: Path = Path("data_local/bench")
    """Where the benchmark's scenes are built: DATA/<setting>/{synthetic,real,train_set}."""
    configs_dir: Path = Path("configs")
    """The committed training configs (<method>_nyu.yaml)."""
    methods: tuple[MethodKey, ...] = tuple(METHODS)  # type: ignore[assignment]
    """Methods to compare (gs-siamese-pair is gs-siamese's model given frames 0 + 1)."""
    data_sets: tuple[DataSetKey, ...] = ("synthetic", "real")
    """synthetic: nyu-camera focal stacks from held-out real RGB-D; real: the D3Net f/2.8 photographs."""
    fit_init: Literal["run", "auto", "constant"] = "run"
    """How `fit` starts on stacks with one focus distance (the real aperture pairs: depth from focus has no peak
    there). run: from this benchmark's gs-siamese model (gs-dfd fit --init network --init-checkpoint
    RUN/model.pt); auto: gs-dfd fit's default (the weights shipped in the package when present, else a constant
    depth); constant: a constant depth (a purely per-scene fit). Stacks with several focus distances start from
    depth from focus."""
    min_depth: float = 0.5
    """Near end of the evaluation range, metres (gs-dfd eval --min-depth)."""
    max_depth: float = 4.0
    """Far end of the evaluation range, metres (gs-dfd eval --max-depth)."""
    retrain: bool = False
    """Train every network anew even when a finished run with the same config exists (the old one is moved
    aside, not deleted)."""
    busy_minutes: float = 10.0
    """A run folder or fit cache written to within this many minutes, without a finished model, is taken for a
    training in progress and refused (0: never)."""
    dry_run: bool = False
    """Print the plan (data to build, runs to reuse, resume or train) and stop."""
    overwrite: bool = False
    """Replace OUT if it exists."""


# --------------------------------------------------------------------------- steps: CLI and tools in-process


class Recorder:
    """Runs gs-dfd commands and tools in this process; keeps the command lines (with OUT's final path)."""

    def __init__(self) -> None:
        self.commands: list[dict[str, Any]] = []
        self.tmp: Optional[Path] = None
        self.out: Optional[Path] = None

    def shown(self, text: str) -> str:
        return text.replace(str(self.tmp), str(self.out)) if self.tmp is not None else text

    def _run(self, line: str, what: str, call: Callable[[], int]) -> float:
        line = self.shown(line)
        console.print(f"$ {line}")
        t0 = time.perf_counter()
        try:
            code = call()
        except SystemExit as exc:  # tyro's parse errors
            code = exc.code if isinstance(exc.code, int) else 2
        seconds = time.perf_counter() - t0
        self.commands.append({"step": what, "command": line, "seconds": round(seconds, 3), "exit": code})
        if code == 130:
            raise Interrupted(f"interrupted during {what}; run the benchmark again to continue (finished runs, "
                              f"checkpoints and data are kept)")
        if code != 0:
            raise GsDfdError(f"{what} failed (exit {code}): {line}")
        return seconds

    def cli(self, argv: list[str], what: str) -> float:
        return self._run("gs-dfd " + shlex.join(argv), what, lambda: cli_main(argv))

    def tool(self, script: str, config_class: str, argv: list[str], what: str) -> float:
        import tyro

        module = _load_tool(script)
        return self._run(f"python tools/{script}.py " + shlex.join(argv), what,
                         lambda: run_guarded(module.main, tyro.cli(getattr(module, config_class), args=argv)))


def _load_tool(name: str):
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(TOOLS_DIR / f"{name}.py"):
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, TOOLS_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- data


def scene_names(folder: Path) -> list[str]:
    """Sorted names of the sub-folders of ``folder`` that hold a scene.json ([] when it does not exist)."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".") and (p / "scene.json").is_file())


def expected_scenes(setting: Setting, data_set: str) -> list[str]:
    if data_set == "synthetic":
        return sorted([*setting.synth_sources, *(f"d3net_rgbd_{i:03d}" for i in setting.synth_d3net_ids)])
    if data_set == "real":
        return sorted(f"{i:03d}" for i in setting.real_ids)
    if data_set == "train":
        return sorted([*(f"d3net_rgbd_{i:03d}" for i in setting.train_d3net_ids),
                       *(f"proc_{k}_{100 + j}" for k in setting.procedural_kinds
                         for j in range(setting.procedural_per_kind))])
    raise ValueError(data_set)


def _check_src(src: Path, sub: str, purpose: str) -> None:
    if not src.is_dir():
        raise GsDfdError(f"{src}: shared data folder not found (needed to build {purpose}); pass --src DIR")
    if not (src / sub).is_dir():
        raise GsDfdError(f"{src / sub}: not found in the shared data (needed to build {purpose}); pass --src DIR")


DATA_TOOLS = {  # data set -> (script in tools/, its config class)
    "synthetic": ("convert_rgbd_sets", "ConvertRgbdConfig"),
    "real": ("convert_d3net_indoor", "ConvertD3NetConfig"),
    "train": ("make_training_set", "TrainingSetConfig"),
}


def data_argv(cfg: BenchmarkConfig, setting: Setting, data_set: str, folder: Path, owned: bool = True) -> list[str]:
    """The converter's flags that build ``data_set`` into ``folder``."""
    if data_set == "synthetic":
        return ["--src", str(cfg.src), "--out", str(folder), "--only", *setting.synth_sources,
                "--d3net-ids", *map(str, setting.synth_d3net_ids)]
    if data_set == "real":
        return ["--src", str(cfg.src / "d3net_indoor_train"), "--out", str(folder),
                "--ids", *(f"{i:03d}" for i in setting.real_ids)]
    argv = ["--src", str(cfg.src), "--out", str(folder)]
    if not owned:  # the full setting's training sets: as the configs' comments build them
        argv += list(TRAIN_SET_FLAGS.get(folder.as_posix(), ()))
    else:
        argv += ["--d3net-ids", *map(str, setting.train_d3net_ids), "--procedural-kinds", *setting.procedural_kinds,
                 "--procedural-per-kind", str(setting.procedural_per_kind)]
    return argv


def build_data_set(rec: Recorder, cfg: BenchmarkConfig, setting: Setting, data_set: str, folder: Path,
                   owned: bool = True) -> str:
    """Make ``folder`` hold exactly the expected scenes of ``data_set`` (reuse it when it already does; a folder
    the benchmark does not own, the configs' training set, is used as it is). Returns the command that builds it."""
    script, config_class = DATA_TOOLS[data_set]
    argv = data_argv(cfg, setting, data_set, folder, owned)
    line = f"python tools/{script}.py " + shlex.join(argv)
    want = expected_scenes(setting, data_set)
    have = scene_names(folder)
    if have == want or (not owned and have):
        if have != want:
            console.warn(f"{folder}: holds {len(have)} scenes, not the {len(want)} of tools/make_training_set.py's "
                         f"defaults; using it as it is (it is what the configs train on)")
        console.print(f"data: reuse {folder} ({len(have)} scenes)")
        return line
    if have:
        console.print(f"data: {folder} holds other scenes ({len(have)}, want {len(want)}): rebuilding it")
    purpose = {"synthetic": "the synthetic held-out stacks", "real": "the real held-out scenes",
               "train": "the training scenes"}[data_set]
    _check_src(cfg.src, "d3net_indoor_train", purpose)
    if data_set == "synthetic" and "nyuv2_0045" in setting.synth_sources:
        _check_src(cfg.src, "nyuv2_sample", purpose)
    if data_set == "synthetic" and any(s.startswith("middlebury") for s in setting.synth_sources):
        _check_src(cfg.src, "middlebury_2001_2003", purpose)
    rec.tool(script, config_class, argv + (["--overwrite"] if folder.exists() else []), f"build {purpose}")
    got = scene_names(folder)
    if owned and got != want:
        raise GsDfdError(f"{folder}: built {len(got)} scenes but expected {len(want)} "
                         f"({', '.join(sorted(set(want) - set(got))[:4])} missing)")
    return line


# --------------------------------------------------------------------------- training runs: reuse or train

IGNORED_KEYS = {"command", "out", "config", "resume", "overwrite", "progress", "debug", "checkpoint_every",
                "log_every", "world_size", "backend", "fit_cache"}
"""config.json keys that do not change the trained model (fit_cache: where the fits live, not what they are)."""


def _norm(key: str, value: Any) -> Any:
    if key == "scenes" and isinstance(value, (list, tuple)):
        return [os.path.normpath(str(v)) for v in value]
    return value


def config_differences(run_config: dict, expected: dict) -> list[str]:
    """Keys (that matter for ``expected['method']``) whose values differ: ``'steps: run 3000, benchmark 2000'``.
    Keys an older run's config.json lacks are not compared, nor settings the method never reads (a d3net run
    does not depend on DefocusNet's widths)."""
    from gs_dfd.train.config import unused_settings

    ignored = IGNORED_KEYS | unused_settings(str(expected.get("method")))
    diffs = []
    for key, want in expected.items():
        if key in ignored or key not in run_config:
            continue
        have = run_config[key]
        if _norm(key, have) != _norm(key, want):
            diffs.append(f"{key}: run {json.dumps(have)}, benchmark {json.dumps(want)}")
    return diffs


@dataclass
class RunDecision:
    action: Literal["reuse", "resume", "train", "replace"]
    """reuse: use RUN/model.pt; resume: gs-dfd train --resume; train: a new run (over an unfinished folder with
    no checkpoint); replace: move RUN aside to RUN.replaced-<time>, then train."""
    reason: str


def _newest_file(folder: Path) -> tuple[float, Optional[Path]]:
    newest, path = 0.0, None
    for root, _dirs, files in os.walk(folder):
        for name in files:
            p = Path(root) / name
            try:
                t = p.stat().st_mtime
            except OSError:
                continue
            if t > newest:
                newest, path = t, p
    return newest, path


def run_finished(run_dir: Path) -> bool:
    """model.pt and summary.json exist and were written after config.json (which a (re)start rewrites)."""
    files = [run_dir / n for n in ("model.pt", "summary.json", "config.json")]
    if not all(f.is_file() for f in files):
        return False
    return min(files[0].stat().st_mtime, files[1].stat().st_mtime) >= files[2].stat().st_mtime


def check_not_busy(folder: Path, busy_seconds: float, what: str, now: Optional[float] = None) -> None:
    if busy_seconds <= 0 or not folder.exists():
        return
    newest, path = _newest_file(folder)
    age = (now if now is not None else time.time()) - newest
    if path is not None and age < busy_seconds:
        raise GsDfdError(f"{folder}: {what} looks in progress ({path} written {age:.0f} s ago); wait for it to "
                         f"finish, use another --runs-dir, or pass --busy-minutes 0 if nothing else is running")


def check_fit_cache_not_busy(cache: Path, busy_seconds: float, now: Optional[float] = None) -> None:
    """Refuse a fit cache in which a fit is being written: an entry changed recently whose metrics.json (written
    at the end of a fit) is missing or older than its config.json (written at the start)."""
    if busy_seconds <= 0 or not cache.is_dir():
        return
    now = now if now is not None else time.time()
    for entry in cache.iterdir():
        if not entry.is_dir():
            continue
        newest, path = _newest_file(entry)
        if path is None or now - newest >= busy_seconds:
            continue
        metrics, config = entry / "metrics.json", entry / "config.json"
        if not metrics.is_file() or (config.is_file() and config.stat().st_mtime > metrics.stat().st_mtime):
            raise GsDfdError(f"{cache}: a fit of training scenes looks in progress ({path} written "
                             f"{now - newest:.0f} s ago); wait for it to finish, use another --runs-dir, or pass "
                             f"--busy-minutes 0 if nothing else is running")


def decide_run(run_dir: Path, expected: dict, retrain: bool = False, busy_seconds: float = 600.0,
               now: Optional[float] = None) -> RunDecision:
    """Reuse, resume or train ``run_dir`` for the training config ``expected`` (config.json's layout)."""
    if not run_dir.exists():
        return RunDecision("train", "no run folder yet")
    finished = run_finished(run_dir)
    if not finished:
        check_not_busy(run_dir, busy_seconds, "a training", now)
    try:
        have = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        have = None
    if not isinstance(have, dict):
        return RunDecision("replace", "no readable config.json")
    diffs = config_differences(have, expected)
    if diffs:
        return RunDecision("replace", "its config differs: " + "; ".join(diffs))
    if retrain:
        return RunDecision("replace", "--retrain")
    if finished:
        return RunDecision("reuse", "finished, same config")
    if (run_dir / "checkpoint.pt").is_file():
        return RunDecision("resume", "unfinished, same config: resuming from its checkpoint")
    return RunDecision("train", "unfinished without a checkpoint: starting again")


@dataclass
class RunPlan:
    method: str
    config_path: Path
    run_dir: Path
    flags: list[str]
    """Flags after --config/--out (the setting's overrides)."""
    expected: dict
    decision: RunDecision
    fit_cache: Optional[Path] = None
    scenes: list[str] = field(default_factory=list)

    @property
    def argv(self) -> list[str]:
        """gs-dfd train's arguments that make this run from nothing."""
        return ["train", "--config", str(self.config_path), "--out", str(self.run_dir), *self.flags]


def plan_run(cfg: BenchmarkConfig, setting: Setting, method: str, train_set: Optional[Path],
             stage: Optional[tuple[str, str]] = None, init_from: Optional["RunPlan"] = None) -> RunPlan:
    """The run of ``method`` (or of ``stage``, a (config, run name) pair); ``init_from``: the run it fine-tunes."""
    from gs_dfd.models.registry import get_method
    from gs_dfd.train.config import load_yaml_defaults

    config_name, run_name = stage or TRAIN_RUNS[method]
    config_path = cfg.configs_dir / config_name
    runs_root = cfg.runs_dir / setting.runs_subdir if setting.runs_subdir else cfg.runs_dir
    run_dir = runs_root / run_name
    train_cfg = load_yaml_defaults(config_path, run_dir)  # a one-line error naming the file when it is bad
    if train_cfg.method != method:
        raise GsDfdError(f"{config_path}: trains --method {train_cfg.method}, the benchmark expects {method}")
    if train_cfg.init_weights is not None and init_from is None:
        raise GsDfdError(f"{config_path}: fine-tunes {train_cfg.init_weights}; give its first stage (PRETRAIN_RUNS)")
    flags: list[str] = []
    over: dict[str, Any] = {"out": run_dir}
    if setting.steps is not None:
        flags += ["--steps", str(setting.steps)]
        over["steps"] = setting.steps
    if init_from is not None:
        over["init_weights"] = init_from.run_dir / "checkpoint.pt"
        flags += ["--init-weights", str(over["init_weights"])]
    if train_set is not None:
        flags += ["--scenes", str(train_set)]
        over["scenes"] = (train_set,)
    spec = get_method(method)
    if spec.needs_fit:  # the supervised baselines fit nothing
        if setting.runs_subdir:  # the setting's own fit cache: never the full runs' (other iterations, same names)
            over["fit_cache"] = runs_root / "fits"
            flags += ["--fit-cache", str(over["fit_cache"])]
        if setting.fit_cache_iterations is not None:
            over["fit_iterations"] = setting.fit_cache_iterations
            flags += ["--fit-iterations", str(setting.fit_cache_iterations)]
    train_cfg = dataclasses.replace(train_cfg, **over)
    if spec.supervised:
        train_cfg = dataclasses.replace(train_cfg, supervised=True)  # as gs-dfd train records it
    # As gs-dfd train writes it into config.json: the resolved config, paths as strings, tuples as lists.
    expected = {"command": "train", **_jsonable(dataclasses.asdict(train_cfg))}
    decision = decide_run(run_dir, expected, cfg.retrain, cfg.busy_minutes * 60)
    if init_from is not None and init_from.decision.action != "reuse" and decision.action in ("reuse", "resume"):
        decision = RunDecision("replace" if run_dir.exists() else "train", "the run it fine-tunes is trained anew")
    fit_cache = (train_cfg.fit_cache or run_dir / "fits") if spec.needs_fit else None
    if decision.action != "reuse" and fit_cache is not None:
        check_fit_cache_not_busy(fit_cache, cfg.busy_minutes * 60)
    return RunPlan(method, config_path, run_dir, flags, expected, decision, fit_cache,
                   [str(s) for s in train_cfg.scenes])


def execute_run(rec: Recorder, plan: RunPlan) -> None:
    action = plan.decision.action
    if action == "reuse":
        return
    argv = list(plan.argv)
    if action == "replace":
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        aside = plan.run_dir.with_name(f"{plan.run_dir.name}.replaced-{stamp}")
        console.print(f"train {plan.method}: moving {plan.run_dir} aside to {aside} ({plan.decision.reason})")
        os.replace(plan.run_dir, aside)
    elif action == "resume":
        argv.append("--resume")
    elif plan.run_dir.exists():
        argv.append("--overwrite")
    console.print(f"train {plan.method}: {'resuming' if action == 'resume' else 'training'} {plan.run_dir} "
                  f"({plan.decision.reason})")
    rec.cli(argv, f"train {plan.method}")
    if not run_finished(plan.run_dir):
        raise GsDfdError(f"{plan.run_dir}: training ended without model.pt and summary.json")


def runs_seconds(stage1: dict[str, Any], stage2: dict[str, Any]) -> float:
    """A fine-tuned model's training time: both runs' training plus each one-off fit once (runs that share a fit
    cache share its fits)."""
    stages = (stage1, stage2)
    if any(r.get("fit_seconds_by_scene") is None for r in stages):  # fit times unknown: count every run in full
        return sum(float(r["training_seconds"]) for r in stages)
    fits = {(r.get("fit_cache"), name): t for r in stages for name, t in r["fit_seconds_by_scene"].items()}
    return sum(float(r.get("train_seconds") or 0.0) for r in stages) + sum(fits.values())


def training_record(plan: RunPlan) -> dict[str, Any]:
    """Numbers of a finished run: summary.json plus the cost of the one-off fits of its training scenes."""
    summary = json.loads((plan.run_dir / "summary.json").read_text())
    record: dict[str, Any] = {
        "run_dir": str(plan.run_dir), "config": str(plan.config_path), "action": plan.decision.action,
        "reason": plan.decision.reason, "command": "gs-dfd " + shlex.join(plan.argv), "steps": summary.get("steps"),
        "train_seconds": summary.get("train_seconds"), "fit_cache_seconds": summary.get("fit_cache_seconds"),
        "threads_per_process": summary.get("threads_per_process"),
        "world_size": summary.get("world_size"), "train_scenes": summary.get("scenes"),
    }
    fits, by_scene = None, None
    if plan.fit_cache is not None and summary.get("scenes"):
        by_scene = {}
        for name in summary["scenes"]:
            try:
                by_scene[name] = float(json.loads((plan.fit_cache / name / "metrics.json").read_text())["seconds"])
            except (OSError, ValueError, KeyError, TypeError):
                by_scene = None
                break
        fits = sum(by_scene.values()) if by_scene is not None else None
    record["fit_seconds_by_scene"] = by_scene
    record["fit_cache"] = None if plan.fit_cache is None else str(plan.fit_cache)
    # gs-siamese and dered share one fit cache: the run that came second paid nothing for it, but needs it.
    record["fit_cache_fits_seconds"] = fits
    fit_cost = max(float(summary.get("fit_cache_seconds") or 0.0), fits or 0.0)
    record["training_seconds"] = float(summary.get("train_seconds") or 0.0) + fit_cost
    return record


# --------------------------------------------------------------------------- predictions, fits, eval


def describe_input(scene_dir: Path, frames: list[int]) -> str:
    """'1 frame (1 m)', '2 frames (1, 1.5 m)', '2 frames (f/2.8 + f/8)' from a scene's scene.json."""
    data = json.loads((scene_dir / "scene.json").read_text())
    all_frames = data["frames"]
    f_default = data["camera"]["f_number"]
    n = len(frames)
    head = f"{n} frame{'s' if n > 1 else ''}"
    if len({f["focus_distance_m"] for f in all_frames}) > 1:
        focus = ", ".join(format(all_frames[i]["focus_distance_m"], "g") for i in frames)
        return f"{head} ({focus} m)"
    apertures = " + ".join("f/" + format(all_frames[i].get("f_number", f_default), "g") for i in frames)
    return f"{head} ({apertures})"


def spread(names: list[str], k: Optional[int]) -> list[str]:
    """``k`` names evenly spread over ``names`` (all when k is None or >= len)."""
    if k is None or k >= len(names):
        return list(names)
    if k <= 0:
        return []
    return [names[i] for i in sorted({int(round(x)) for x in np.linspace(0, len(names) - 1, k)})]


def _median_json(paths: list[Path], key: str) -> Optional[float]:
    values = [float(v) for p in paths if p.is_file() for v in [json.loads(p.read_text()).get(key)] if v is not None]
    return float(np.median(values)) if values else None


def evaluate(rec: Recorder, cfg: BenchmarkConfig, scenes_dir: Path, pred_dir: Path, eval_dir: Path, partial: bool,
             what: str) -> dict:
    argv = ["eval", "--scenes", str(scenes_dir), "--predictions", str(pred_dir), "--out", str(eval_dir),
            "--min-depth", f"{cfg.min_depth:g}", "--max-depth", f"{cfg.max_depth:g}", "--no-progress"]
    rec.cli(argv + (["--allow-missing"] if partial else []), what)
    return json.loads((eval_dir / "metrics.json").read_text())


def run_method(rec: Recorder, cfg: BenchmarkConfig, setting: Setting, method: MethodSpec, data_set: str,
               scenes_dir: Path, tmp: Path, runs: dict[str, dict[str, Any]], models: dict[str, Path]) -> dict[str, Any]:
    """Predict (or fit) and evaluate one method on one data set with ``models`` (train method -> the weights
    predict uses); returns its row."""
    names = scene_names(scenes_dir)
    n_frames = len(json.loads((scenes_dir / names[0] / "scene.json").read_text())["frames"])
    slug = method.key.replace("-", "_")
    pred_dir = tmp / "predictions" / data_set / slug
    eval_dir = tmp / "eval" / data_set / slug
    row: dict[str, Any] = {"method": method.label, "key": method.key, "data_set": data_set,
                           "data_set_label": DATA_SET_LABELS[data_set], "training_seconds": None}
    if method.kind == "net":
        frames = [0, 1] if method.pair else [0]
        model = models[method.train_method]
        argv = ["predict", "--no-progress", "--checkpoint", str(model), "--scene", str(scenes_dir),
                "--frame", "0",
                *(["--pair-frame", "1"] if method.pair else []), "--out", str(pred_dir)]
        rec.cli(argv, f"predict {method.key} on {data_set}")
        row["seconds_per_image"] = _median_json([pred_dir / n / "prediction.json" for n in names], "model_seconds")
        row["time_source"] = "median model_seconds of prediction.json"
        row["checkpoint"] = str(model)
        mc = _median_json([pred_dir / n / "prediction.json" for n in names], "mc_samples")
        if mc is not None and mc > 1:
            row["mc_samples"] = int(mc)
        row["training_seconds"] = runs[method.train_method]["training_seconds"]
        todo = names
    else:
        frames = list(range(n_frames))
        distinct_focus = len({f["focus_distance_m"] for f in
                              json.loads((scenes_dir / names[0] / "scene.json").read_text())["frames"]})
        if method.kind == "dff" and distinct_focus < 2:
            row.update(input="—", na="n/a: one focus distance (no focus peak to find)", scenes=0)
            return row
        k = setting.fit_synthetic_scenes if data_set == "synthetic" else setting.fit_real_scenes
        todo = names if method.kind == "dff" else spread(names, k)
        init: list[str] = []
        if method.kind == "fit" and distinct_focus < 2:
            row["init"] = cfg.fit_init if cfg.fit_init != "run" else "gs-siamese"
            init = {"run": ["--init", "network", "--init-checkpoint", str(models["gs-siamese"])]
                    if "gs-siamese" in models else [], "auto": [], "constant": ["--init", "constant"]}[cfg.fit_init]
        if not todo:
            row.update(input=describe_input(scenes_dir / names[0], frames), na=f"not run in --{setting.name}", scenes=0)
            return row
        for name in todo:
            argv = ["fit", "--scene", str(scenes_dir / name), "--out", str(pred_dir / name), "--no-progress",
                    "--eval-depth-range-m", f"{cfg.min_depth:g}", f"{cfg.max_depth:g}", *init]
            if method.kind == "dff":
                argv += ["--method", "dff"]
            elif setting.fit_iterations is not None:
                argv += ["--iterations", str(setting.fit_iterations)]
            rec.cli(argv, f"{method.key} of {data_set}/{name}")
        row["seconds_per_image"] = _median_json([pred_dir / n / "metrics.json" for n in todo], "seconds")
        row["time_source"] = "median seconds of the fit's metrics.json"
    row["input"] = describe_input(scenes_dir / names[0], frames) + (f", start: {row['init']}" if "init" in row else "")
    metrics = evaluate(rec, cfg, scenes_dir, pred_dir, eval_dir, len(todo) < len(names),
                       f"eval {method.key} on {data_set}")
    row.update(metrics["depth"])
    row["scenes"] = metrics["count"]
    row["scene_names"] = [s["scene"] for s in metrics["per_scene"]]
    row["predictions_dir"] = str(pred_dir)
    row["eval_dir"] = str(eval_dir)
    return row


# --------------------------------------------------------------------------- hardware and the table


def hardware() -> dict[str, Any]:
    import torch

    cpu = None
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {
        "cpu": cpu or platform.processor() or platform.machine(),
        "cores": cores,
        "threads": torch.get_num_threads(),
        "env": {k: os.environ[k] for k in ("GS_DFD_THREADS", "OMP_NUM_THREADS") if k in os.environ},
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "load_average_1min_at_start": load,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def fmt_seconds(s: Optional[float]) -> str:
    if s is None or not math.isfinite(s):
        return "—"
    if s < 0.01:
        return f"{s * 1000:.1f} ms"
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def _fmt_metric(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) and math.isfinite(v) else "—"


def header_line(hw: dict[str, Any], setting: str) -> str:
    threads = f"{hw['threads']} torch thread{'s' if hw['threads'] != 1 else ''}"
    env = ", ".join(f"{k}={v}" for k, v in hw.get("env", {}).items())
    load = hw.get("load_average_1min_at_start")
    parts = [f"{hw['cpu']}, {hw['cores']} cores, {threads}" + (f" ({env})" if env else ""), f"torch {hw['torch']}"]
    if hw.get("cuda"):
        parts.append(f"GPU {hw['cuda']}")
    if load is not None:
        parts.append(f"load average {load:.1f} at the start")
    return f"**Hardware**: {'; '.join(parts)}. **Date**: {hw['date'][:10]}. **Setting**: {setting}."


TABLE_HEAD = ("| method | input | data set | AbsRel | RMSE (m) | δ<1.25 | time / image | training time | scenes |\n"
              "|---|---|---|---|---|---|---|---|---|")


def table_rows(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in rows:
        train = fmt_seconds(r.get("training_seconds"))
        if "na" in r:
            lines.append(f"| {r['method']} | {r.get('input', '—')} | {r['data_set_label']} | {r['na']} | | | — | "
                         f"{train} | — |")
            continue
        lines.append(f"| {r['method']} | {r['input']} | {r['data_set_label']} | {_fmt_metric(r.get('abs_rel'))} | "
                     f"{_fmt_metric(r.get('rmse'))} | {_fmt_metric(r.get('delta1'))} | "
                     f"{fmt_seconds(r.get('seconds_per_image'))} | {train} | {r.get('scenes', '—')} |")
    return lines


def table_markdown(rows: list[dict[str, Any]], hw: dict[str, Any], setting: Setting, cfg: BenchmarkConfig,
                   runs: dict[str, dict[str, Any]]) -> str:
    lines = [header_line(hw, setting.name if setting.name != "full" else "full (committed configs)"), "",
             TABLE_HEAD, *table_rows(rows), ""]
    notes = [
        f"Depth metrics by `gs-dfd eval`: valid ground truth inside {cfg.min_depth:g}–{cfg.max_depth:g} m, "
        "predictions clamped to that range, per scene then averaged over scenes; RMSE in metres. "
        "No held-out scene (d3net ids divisible by 4, NYUv2, Middlebury) is in any training set.",
        "*synthetic nyu stacks*: 320x240 focal stacks of the nyu camera (f = 50 mm, f/8, focus 1, 1.5, 2.5, 4, "
        "6 m) synthesised with the layered disk-PSF model from held-out real RGB-D (d3net_indoor_train f/8 image + "
        "Xtion depth, NYUv2, Middlebury disparity mapped to 1–4 m); networks see frame 0 (focus 1 m).",
        "*real d3net f/2.8*: the real D3Net indoor DSLR photographs (Carvalho et al. 2018) at 645x432 with their "
        "Xtion depth; networks trained on the nyu camera get the d3net lens from scene.json (f = 35 mm, f/2.8, "
        "nominal focus 1.7 m); the pair adds the f/8 shot; dff needs two focus distances.",
        "*time / image*: networks: median model time of `gs-dfd predict` (forward passes only, no file I/O"
        + "".join(sorted({f"; {r['method']}: {r['mc_samples']} Monte-Carlo dropout passes" for r in rows
                          if r.get("mc_samples")}))
        + "; pair: both branches); dff and fit: the whole per-scene fit.",
        "*training time*: `train_seconds` of the run's summary.json plus its training scenes' one-off Gaussian "
        "fits (gs-siamese and dered share them; each row counts them in full).",
    ]
    starts = {r["init"] for r in rows if r.get("init") and "na" not in r}
    if starts:
        notes.append("*fit* on the single-focus real pairs has no depth-from-focus start: it starts from "
                     + {"gs-siamese": "this benchmark's gs-siamese model (`--init network --init-checkpoint`)",
                        "auto": "gs-dfd fit's default (the shipped weights when present)",
                        "constant": "a constant depth"}[sorted(starts)[0]]
                     + "; on the focal stacks it starts from depth from focus.")
    threads = {p["threads_per_process"] for p in runs.values() if p.get("threads_per_process") is not None}
    if threads and threads != {hw["threads"]}:
        notes.append(f"Training runs used {', '.join(map(str, sorted(threads)))} thread(s) per process.")
    reused = [f"`{p['run_dir']}`" for p in runs.values() if p["action"] == "reuse"]
    if reused:
        notes.append("Reused finished runs: " + ", ".join(reused) + ".")
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _relocate(tmp: Path, out: Path) -> None:
    """Text outputs of the steps name the hidden build folder; make them name OUT."""
    for p in tmp.rglob("*"):
        if p.suffix in (".json", ".md", ".csv") and p.is_file():
            text = p.read_text()
            if str(tmp) in text:
                new = text.replace(str(tmp), str(out))
                write_file_atomic(p, lambda q, new=new: q.write_text(new))


# --------------------------------------------------------------------------- main


def main(cfg: BenchmarkConfig) -> int:
    if cfg.small and cfg.smoke:
        raise GsDfdError("give at most one of --small and --smoke")
    unknown = set(cfg.methods) - set(METHODS)
    if unknown or not cfg.methods or not cfg.data_sets:
        raise GsDfdError("--methods and --data-sets need at least one known value")
    if not 0 < cfg.min_depth < cfg.max_depth:
        raise GsDfdError(f"--min-depth/--max-depth: need 0 < near < far (got {cfg.min_depth}, {cfg.max_depth})")
    if not cfg.dry_run:
        check_output(cfg.out, kind="dir", overwrite=cfg.overwrite)
    setting = SETTINGS["smoke" if cfg.smoke else "small" if cfg.small else "full"]
    methods = [METHODS[k] for k in METHODS if k in cfg.methods]
    data_sets = [d for d in ("synthetic", "real") if d in cfg.data_sets]
    data_root = cfg.data_dir / setting.name
    hw = hardware()
    console.print(f"benchmark ({setting.name}): {hw['cpu']}, {hw['cores']} cores, {hw['threads']} thread(s), "
                  f"torch {hw['torch']}")

    # Plan: the data and the runs (reuse / resume / train), before anything is written.
    data_dirs = {d: data_root / d for d in data_sets}
    for d, folder in data_dirs.items():
        if scene_names(folder) != expected_scenes(setting, d):
            _check_src(cfg.src, "d3net_indoor_train", f"the {d} scenes in {folder}")
    train_set = data_root / "train_set" if setting.train_set else None
    need_runs = {m.train_method for m in methods if m.kind == "net"}
    if (cfg.fit_init == "run" and "real" in data_sets and setting.fit_real_scenes != 0
            and any(m.kind == "fit" for m in methods)):
        need_runs.add("gs-siamese")  # the start of `fit` on the single-focus real pairs
    need_runs = sorted(need_runs, key=list(TRAIN_RUNS).index)
    plans: dict[str, RunPlan] = {}
    for m in need_runs:
        pre = None
        if m in PRETRAIN_RUNS:  # stage 1 first (dicts keep order: it is also trained first)
            pre = plans[f"{m} (stage 1)"] = plan_run(cfg, setting, m, train_set, PRETRAIN_RUNS[m])
        plans[m] = plan_run(cfg, setting, m, train_set, init_from=pre)
    for key, p in plans.items():
        console.print(f"plan: {key:<10} {p.decision.action:<7} {p.run_dir} ({p.decision.reason})")
    for folder in sorted({s for p in plans.values() if p.decision.action != "reuse" for s in p.scenes}):
        n = len(scene_names(Path(folder)))
        console.print(f"plan: data train     {'reuse' if n else 'build'} {folder} ({n or 'no'} scenes there)")
    for d, folder in data_dirs.items():
        ok = scene_names(folder) == expected_scenes(setting, d)
        n = len(expected_scenes(setting, d))
        console.print(f"plan: data {d:<9} {'reuse' if ok else 'build'} {folder} ({n} scenes)")
    if cfg.dry_run:
        return 0

    rec = Recorder()
    t_start = time.perf_counter()
    # Training data: built only when some run is trained; its command is recorded in any case.
    to_train = [p for p in plans.values() if p.decision.action != "reuse"]
    data_commands: dict[str, str] = {}
    for folder in sorted({Path(s) for p in plans.values() for s in p.scenes}):
        if any(str(folder) in p.scenes for p in to_train):
            data_commands[str(folder)] = build_data_set(rec, cfg, setting, "train", folder, owned=setting.train_set)
        else:
            script = DATA_TOOLS["train"][0]
            data_commands[str(folder)] = f"python tools/{script}.py " + shlex.join(
                data_argv(cfg, setting, "train", folder, setting.train_set))
    for d, folder in data_dirs.items():
        data_commands[d] = build_data_set(rec, cfg, setting, d, folder)
    for p in to_train:
        execute_run(rec, p)
    runs = {m: training_record(p) for m, p in plans.items()}
    models = {m: plans[m].run_dir / "model.pt" for m in need_runs}
    for m in PRETRAIN_RUNS:
        if m in runs and f"{m} (stage 1)" in runs:
            runs[m]["training_seconds"] = runs_seconds(runs[f"{m} (stage 1)"], runs[m])
            runs[m]["includes_stage_1"] = plans[f"{m} (stage 1)"].run_dir.as_posix()

    with atomic_output_dir(cfg.out, cfg.overwrite, [("--src", cfg.src)], "benchmark") as tmp:
        rec.tmp, rec.out = tmp, cfg.out
        rows = []
        for d in data_sets:
            for m in methods:
                rows.append(run_method(rec, cfg, setting, m, d, data_dirs[d], tmp, runs, models))
        for r in rows:
            for k in ("predictions_dir", "eval_dir"):
                if k in r:
                    r[k] = rec.shown(r[k])
        table = table_markdown(rows, hw, setting, cfg, runs)
        results = {
            "format": "gs_dfd.benchmark/1",
            "setting": setting.name,
            "settings": _jsonable(dataclasses.asdict(setting)),
            "hardware": hw,
            "eval_range_m": [cfg.min_depth, cfg.max_depth],
            "data_sets": {d: {"label": DATA_SET_LABELS[d], "scenes_dir": str(f), "scenes": scene_names(f),
                              "command": data_commands[d]} for d, f in data_dirs.items()},
            "training_sets": {k: v for k, v in data_commands.items() if k not in data_dirs},
            "runs": runs,
            "rows": rows,
            "commands": rec.commands,
            "seconds": time.perf_counter() - t_start,
            "benchmark_config": _jsonable(dataclasses.asdict(cfg)),
            "table_md": table,
        }
        _relocate(tmp, cfg.out)
        write_json_atomic(tmp / "results.json", _jsonable(results))
        write_file_atomic(tmp / "table.md", lambda p: p.write_text(table))
    console.print("")
    console.print(table)
    console.print(f"-> {cfg.out / 'table.md'}, {cfg.out / 'results.json'}, {cfg.out / 'eval'}/ "
                  f"({fmt_seconds(time.perf_counter() - t_start)} in all)")
    return 0


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


if __name__ == "__main__":
    run_tool(main, BenchmarkConfig)
