"""The committed training configs: each says only what differs from gs-dfd train's defaults, and the shipped
recipe (configs/gs_siamese_nyu_reblur.yaml, then configs/gs_siamese_nyu_reblur_finetune.yaml) still resolves to
the config the shipped weights record."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import torch
import yaml

from gs_dfd.infer.predictor import SHIPPED_WEIGHTS
from gs_dfd.models.registry import DEFAULT_METHOD, NETWORK_SECTIONS, method_names
from gs_dfd.train.config import TrainConfig, load_yaml_defaults
from gs_dfd.train.loop import _to_jsonable

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
EXPERIMENTS = sorted((REPO / "docs" / "experiments" / "configs").glob("*.yaml"))
STAGE_1 = REPO / "configs" / "gs_siamese_nyu_reblur.yaml"  # the shipped weights, stage 1
STAGE_2 = REPO / "configs" / "gs_siamese_nyu_reblur_finetune.yaml"


def _defaults() -> dict:
    return _to_jsonable(TrainConfig(out=Path("x")))


def _restated(raw: dict, defaults: dict, prefix: str = "") -> list[str]:
    """The keys of ``raw`` whose value is the default (nested sections key by key)."""
    found = []
    for key, value in raw.items():
        default = defaults.get(key)
        if isinstance(value, dict) and isinstance(default, dict):
            found += _restated(value, default, f"{prefix}{key}.")
        elif _to_jsonable(value) == default:
            found.append(prefix + key)
    return found


def _resolved(path: Path) -> dict:
    cfg = _to_jsonable(load_yaml_defaults(path, Path("runs/x")))
    cfg.pop("config")
    return cfg


def test_the_configs_are_there():
    assert {p.name for p in CONFIGS} >= {STAGE_1.name, STAGE_2.name, "dered_nyu.yaml", "d3net_nyu.yaml",
                                         "mddnet_nyu.yaml"}
    assert EXPERIMENTS, "v1's configs (docs/experiments/configs/) are gone"


@pytest.mark.parametrize("path", CONFIGS + EXPERIMENTS, ids=lambda p: p.name)
def test_every_config_loads_and_states_only_what_differs_from_the_defaults(path):
    """A key that restates a default hides which settings make the recipe and goes stale when the default moves;
    the comments on top say what the recipe is."""
    text = path.read_text()
    assert text.startswith("#"), f"{path.name}: no comment saying what the recipe is"
    raw = yaml.safe_load(text)
    assert _restated(raw, _defaults()) == [], path.name
    cfg = load_yaml_defaults(path, None)
    assert cfg.method in method_names() and cfg.scenes


def test_shipped_recipe_resolves_to_the_config_the_shipped_weights_record():
    """Stage 2 is the shipped file's own recorded config, except where it was run from (out, init_weights of a
    run folder named otherwise, no progress bar); a setting newer than the file counts as its default."""
    meta = torch.load(SHIPPED_WEIGHTS, map_location="cpu", weights_only=True)["meta"]["config"]
    defaults = _defaults()
    recorded = {k: ({**defaults[k], **v} if isinstance(v, dict) else v) for k, v in meta.items()}
    recorded = {**defaults, **recorded}
    resolved = _resolved(STAGE_2)
    where = {"out", "config", "init_weights", "progress"}
    assert {k: v for k, v in resolved.items() if k not in where} == {k: v for k, v in recorded.items()
                                                                      if k not in where}
    assert resolved["init_weights"] == "runs/gs_siamese_nyu_reblur/checkpoint.pt"  # stage 1's run folder


def test_shipped_recipe_stage_1_differs_from_stage_2_only_in_data_schedule_and_start():
    one, two = _resolved(STAGE_1), _resolved(STAGE_2)
    assert {k for k in one if one[k] != two[k]} == {"scenes", "init_weights", "steps", "lr", "seed"}
    assert (one["scenes"], one["init_weights"], one["steps"], one["lr"], one["seed"]) == (
        ["data_local/train_set_f17"], None, 1500, 1e-3, 0)
    assert two["scenes"] == ["data_local/train_set_all_f17"] and two["fit_cache"] == one["fit_cache"]


def test_network_sections_are_train_config_fields():
    """Each registered network section is a TrainConfig field of its config class (the YAML section, the
    --flags and the checkpoint's model_config share the name); --method offers exactly the registered methods."""
    hints = typing.get_type_hints(TrainConfig)
    for name, cls in NETWORK_SECTIONS.items():
        assert hints[name] is cls, name
    assert typing.get_args(hints["method"]) == method_names()
    assert TrainConfig(out=Path("x")).method == DEFAULT_METHOD
    assert {f.name for f in dataclasses.fields(TrainConfig)} >= set(NETWORK_SECTIONS)
