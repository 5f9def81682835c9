"""Training checkpoints, resume checks, and the weights-only files a run exports for ``predict``.

A checkpoint holds the networks, the optimiser, the step, the method (it decides which network
:func:`gs_dfd.models.registry.build_model` makes) and the resolved config: resuming from it continues exactly
(the data sampler is a pure function of (seed, rank, step)). :func:`export_weights` keeps only what inference
needs, in float16 (half the file, predictions change by a rounding error). Reading either file, without
running code, is :mod:`gs_dfd.models.checkpoint_io`'s: predict loads models without the training code.
"""

from __future__ import annotations

import dataclasses
import io
import typing
from pathlib import Path
from typing import Any

import torch

from gs_dfd.models.checkpoint_io import FORMAT, WEIGHTS_FORMAT, to_plain
from gs_dfd.models.registry import DEFAULT_METHOD
from gs_dfd.train.config import TrainConfig, unused_settings
from gs_dfd.utils.atomic import write_bytes_atomic
from gs_dfd.utils.flags import flag_name


def _save(path: Path, obj: dict) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes_atomic(path, buf.getvalue())


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, config: dict,
                    extra: dict[str, Any]) -> None:
    """``config`` and ``extra`` go through :func:`to_plain`, so the file loads with ``weights_only=True``."""
    config = to_plain(config, "config")
    _save(path, {"format": FORMAT, "method": config.get("method"), "step": int(step), "model": model.state_dict(),
                 "optimizer": optimizer.state_dict(), "model_config": to_plain(model.model_config(), "model_config"),
                 "config": config, **to_plain(extra, "extra")})


# Training settings that leave the result unchanged: they may differ on --resume (steps may be raised).
RESUME_FREE = frozenset({"steps", "out", "resume", "overwrite", "progress", "debug", "checkpoint_every", "log_every",
                         "backend", "fit_cache", "config"})


def _json_like(value: Any) -> Any:
    """As config.json stores it, so a saved config and a fresh one compare equal (tuples are lists)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: _json_like(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_like(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _resume_differences(saved_config: dict, config: dict) -> list[tuple[str, Any, Any]]:
    """(flag, saved value, new value) of every setting that differs and changes the result."""
    defaults = _json_like(TrainConfig(out=Path(".")))
    method = config.get("method", defaults.get("method"))
    changed: list[tuple[str, Any, Any]] = []

    def compare(saved: dict, new: dict, default: dict, owner: type | None) -> None:
        """``owner``: the config class these keys are fields of (None: not a dataclass), which spells the flags."""
        hints = typing.get_type_hints(owner) if owner is not None else {}
        for key, value in new.items():
            if owner is TrainConfig and key in RESUME_FREE:
                continue
            old = saved.get(key, default.get(key))
            if isinstance(value, dict) and isinstance(old, dict):
                sub, section = default.get(key), hints.get(key)
                compare(old, value, sub if isinstance(sub, dict) else {},
                        section if dataclasses.is_dataclass(section) else None)
            elif _json_like(old) != _json_like(value):
                changed.append((flag_name(owner, key) if key in hints else "--" + key.replace("_", "-"), old, value))

    relevant = {k: v for k, v in _json_like(config).items() if k not in unused_settings(method)}
    compare(saved_config if isinstance(saved_config, dict) else {}, relevant, defaults, TrainConfig)
    return changed


def resume_mismatches(saved_config: dict, config: dict) -> list[str]:
    """The settings (as flags: ``--lr``, ``--crop-hw``, ``--reblur-sigmas-px``) in which ``config``, the resolved
    config of a run about to resume, differs from ``saved_config``, the one its checkpoint or config.json holds,
    where the difference changes the result. Ignored: :data:`RESUME_FREE`, the settings the method never reads
    (:func:`gs_dfd.train.config.unused_settings`), and keys only the saved config has (``command``, ``world_size``). A
    setting the saved config lacks (older than it) counts as its default, as loading such a checkpoint does."""
    names: list[str] = []
    for flag, _, _ in _resume_differences(saved_config, config):
        if flag not in names:
            names.append(flag)
    return names


def resume_changes(saved_config: dict, config: dict) -> list[str]:
    """:func:`resume_mismatches` with both values, for the message: ``--method 'd3net' -> 'mddnet'``."""
    def shown(value: Any) -> str:
        return repr(value) if isinstance(value, str) else str(value)

    return [f"{flag} {shown(old)} -> {shown(new)}" for flag, old, new in _resume_differences(saved_config, config)]


def export_weights(path: Path, model: torch.nn.Module, meta: dict) -> None:
    """The weights ``predict`` loads: float16, with the network's settings and ``meta`` (method, steps, ...)."""
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    _save(path, {"format": WEIGHTS_FORMAT, "method": meta.get("method", DEFAULT_METHOD), "model": state,
                 "model_config": to_plain(model.model_config(), "model_config"), "meta": to_plain(meta, "meta")})
