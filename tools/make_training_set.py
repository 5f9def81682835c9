#!/usr/bin/env python
"""Build the training scenes of the shipped gs-siamese checkpoint (see configs/gs_siamese_nyu*.yaml).

- ``d3net_rgbd_NNN``: synthetic nyu-camera focal stacks (320x240, focus 1, 1.5,
  2.5, 4, 6 m) rendered from the f/8 image and depth of d3net_indoor_train
  scene NNN (Carvalho et al., ECCV-W 2018). Scenes with id % 4 == 0 are held
  out for evaluation and refused here.
- ``proc_<kind>_<seed>``: procedural scenes of ``gs-dfd synth procedural``
  with a little sensor noise.

Deterministic: the same arguments give bit-identical scenes.

    python tools/make_training_set.py --src ../shared/data --out data_local/train_set
    python tools/make_training_set.py --src ../shared/data --out data_local/train_set_all --all-d3net-ids
    python tools/make_training_set.py --src ../shared/data --out data_local/train_set_f17 \
        --focus-distances-m 1 1.5 1.7 2.5 4 6     # (and --all-d3net-ids): the DefocusNet chain's six-frame stacks
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gs_dfd.cli import run_tool
from gs_dfd.console import console
from gs_dfd.errors import InputError
from gs_dfd.optics.presets import get_preset
from gs_dfd.synth.procedural import PROCEDURAL_KINDS, make_procedural_scene
from gs_dfd.synth.stack import StackSpec, synthesize_scene
from gs_dfd.utils.outputs import atomic_output_dir

import importlib.util
import sys

_spec = importlib.util.spec_from_file_location("convert_rgbd_sets", Path(__file__).with_name("convert_rgbd_sets.py"))
convert_rgbd_sets = importlib.util.module_from_spec(_spec)
sys.modules["convert_rgbd_sets"] = convert_rgbd_sets
_spec.loader.exec_module(convert_rgbd_sets)

DEFAULT_D3NET_IDS = (1, 2, 3, 5, 6, 7, 9, 10, 11, 13, 14, 15, 17, 18, 19, 21, 22, 23, 25, 26, 27, 29, 30, 31)


@dataclass
class TrainingSetConfig:
    """Write the training scenes (d3net RGB-D stacks and procedural scenes) into one folder."""

    src: Path = Path("../shared/data")
    """The shared data folder (holds d3net_indoor_train/)."""
    out: Path = Path("data_local/train_set")
    """Output folder, one scene per sub-folder, written atomically as a whole."""
    d3net_ids: tuple[int, ...] = DEFAULT_D3NET_IDS
    """d3net_indoor_train scene ids (ids divisible by 4 are the held-out evaluation scenes)."""
    all_d3net_ids: bool = False
    """Use every id that is not held out (the 60 of 0-80 with id % 4 != 0) instead of --d3net-ids: the training
    set of the fine-tuning stage (configs/gs_siamese_nyu_reblur_finetune.yaml)."""
    procedural_kinds: tuple[str, ...] = ("mixed", "planes", "occlusion")
    """Procedural scene kinds."""
    procedural_per_kind: int = 3
    """Procedural scenes per kind (seeds 100, 101, ...)."""
    noise_std: float = 0.005
    """Sensor noise of the procedural frames."""
    focus_distances_m: tuple[float, ...] = ()
    """Focus distances of every stack, metres (default: the nyu preset's 1, 1.5, 2.5, 4, 6)."""
    overwrite: bool = False
    """Replace the output folder if it exists."""


D3NET_SCENE_COUNT = 81  # d3net_indoor_train holds ids 0-80


def main(cfg: TrainingSetConfig) -> int:
    if cfg.all_d3net_ids:
        cfg.d3net_ids = tuple(i for i in range(D3NET_SCENE_COUNT) if i % 4)
    held_out = [i for i in cfg.d3net_ids if i % 4 == 0]
    if held_out:
        raise InputError(None, f"ids {held_out} are held out for evaluation (id % 4 == 0)", "--d3net-ids")
    unknown = sorted(set(cfg.procedural_kinds) - set(PROCEDURAL_KINDS))
    if unknown:
        raise InputError(None, f"unknown kind(s) {', '.join(unknown)}", "--procedural-kinds")
    convert_cfg = convert_rgbd_sets.ConvertRgbdConfig(src=cfg.src, only=(), focus_distances_m=cfg.focus_distances_m)
    spec = StackSpec.from_preset(get_preset("nyu"), cfg.focus_distances_m or None, noise_std=cfg.noise_std)
    jobs = [("d3net", i) for i in cfg.d3net_ids] + [(k, 100 + j) for k in cfg.procedural_kinds
                                                     for j in range(cfg.procedural_per_kind)]
    with atomic_output_dir(cfg.out, cfg.overwrite, [("--src", cfg.src)], Path(__file__).stem) as tmp:
        for kind, n in console.progress(jobs, "training scenes"):
            if kind == "d3net":
                convert_rgbd_sets.convert_one(cfg.src, f"d3net_rgbd_{n:03d}", tmp / f"d3net_rgbd_{n:03d}", convert_cfg)
            else:
                aif, depth = make_procedural_scene(kind, 320, 240, n)
                out = tmp / f"proc_{kind}_{n}"
                out.mkdir()
                synthesize_scene(out, aif, depth, StackSpec(**{**spec.__dict__, "seed": n}))
    console.print(f"wrote {len(jobs)} training scenes to {cfg.out}")
    return 0


if __name__ == "__main__":
    run_tool(main, TrainingSetConfig)
