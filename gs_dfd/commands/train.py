"""``gs-dfd train``: self-supervised DefocusNet + DepthNet, its dered ablation, and the supervised baselines
d3net and mddnet (``--method``; see :mod:`gs_dfd.train`)."""

from __future__ import annotations

from pathlib import Path

from gs_dfd.console import console
from gs_dfd.train.config import TrainConfig, load_yaml_defaults  # noqa: F401 (TrainConfig: the cli's union)


def defaults_from_argv(argv: list[str]) -> TrainConfig | None:
    """``--config FILE`` (or ``--config=FILE``) among the train flags: its values become tyro's defaults."""
    path = out = None
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
        elif a.startswith("--config="):
            path = a.split("=", 1)[1]
        elif a == "--out" and i + 1 < len(argv):
            out = argv[i + 1]
        elif a.startswith("--out="):
            out = a.split("=", 1)[1]
    if path is None:
        return None
    return load_yaml_defaults(Path(path), Path(out) if out else None)


def run(cfg: TrainConfig) -> int:
    from gs_dfd.train.loop import train

    summary = train(cfg)
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        console.print(f"trained {summary['steps']} steps in {summary['train_seconds']:.0f} s "
                      f"(+{summary['fit_cache_seconds']:.0f} s fit cache) on {len(summary['scenes'])} scenes, "
                      f"{summary['world_size']} process(es) -> {cfg.out}")
        console.print(f"  weights for predict: {cfg.out / 'model.pt'}; logs: {cfg.out / 'log.jsonl'}, "
                      f"tensorboard --logdir {cfg.out / 'tb'}")
    return 0
