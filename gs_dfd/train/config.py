"""``gs-dfd train``'s configuration: a tyro dataclass, optionally seeded from a YAML file.

Precedence: defaults < ``--config FILE.yaml`` < flags on the command line.
The YAML mirrors the dataclass (nested sections for ``weights``,
``defocus_net``, ``depth_net``, ``d3net``, ``mddnet``, ``augment``); an unknown key is an error naming the file
and key, so a typo never silently trains the wrong thing. The committed configs (configs/*.yaml) list only
what differs from these defaults, so each one reads as its recipe.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from gs_dfd.errors import InputError
from gs_dfd.models.d3net import D3NetConfig
from gs_dfd.models.defocus_net import DefocusNetConfig
from gs_dfd.models.depth_net import DepthNetConfig
from gs_dfd.models.mddnet import MDDNetConfig
from gs_dfd.models.registry import DEFAULT_METHOD, NETWORK_SECTIONS, get_method, method_names
from gs_dfd.optics.thin_lens import LSQ_DISK_SIGMA_PER_COC
from gs_dfd.train.augment import CameraAugmentConfig
from gs_dfd.train.losses import LossWeights

MethodName = Literal[method_names()]  # type: ignore[valid-type]
"""--method's choices: the registered methods (:mod:`gs_dfd.models.registry`)."""
FIT_SETTINGS = frozenset({"fit_iterations", "fit_propagate", "fit_sigma_per_coc"})
"""The one-off per-scene Gaussian fit's settings: read only by the methods that learn from the fit."""


@dataclass
class TrainConfig:
    """Train a depth-from-defocus network. --method gs-siamese (default): DefocusNet + DepthNet, self-supervised
    by the scenes' Gaussian fits (no ground-truth depth, no all-in-focus image); dered: the same with the fit's
    AIF re-blurred in image space instead of the Gaussians re-rendered (ablation); d3net, mddnet: supervised
    baselines trained on depth_gt (no fits). Run under ``torchrun --nproc_per_node N`` for data-parallel
    training on CPU processes (gloo): every process fits its share of the uncached scenes, then trains."""

    out: Path
    """Run folder: checkpoint.pt, model.pt (weights for predict), config.json, log.jsonl, TensorBoard events."""
    config: Optional[Path] = None
    """YAML file with any of these fields (nested sections for weights/defocus_net/depth_net/d3net/mddnet/augment);
    flags win."""
    scenes: tuple[Path, ...] = ()
    """Training scene folders, or folders of scene folders."""
    method: MethodName = DEFAULT_METHOD
    """Training method. gs-siamese: siamese DefocusNet + DepthNet, self-supervised by re-rendering the fitted 3D
    Gaussians with the predicted CoC. dered: ablation (DEReD-style, Si et al. CVPR 2023): the same, but the fit's
    all-in-focus image is re-blurred in image space instead. d3net: supervised single-image depth with
    Monte-Carlo dropout (Carvalho et al. 2018). mddnet: supervised one-encoder/two-decoder depth + defocus map
    (He et al. 2022). d3net and mddnet read depth_gt and need no Gaussian fits; each pair's two frames are two
    training images for them."""
    fit_cache: Optional[Path] = None
    """Where the per-scene Gaussian fits are cached (default: OUT/fits); reused across runs (gs-siamese, dered).
    Under torchrun each process fits its share of the uncached scenes into it."""
    fit_iterations: int = 80
    """Optimisation steps of each scene's one-off Gaussian fit."""
    fit_propagate: Literal["auto", "on", "off"] = "auto"
    """The one-off fits' --propagate (gs-dfd fit). The shipped checkpoint's fits were made before propagation
    existed, so its configs say off; a cache entry is reused only with the same setting."""
    fit_sigma_per_coc: float = LSQ_DISK_SIGMA_PER_COC
    """The blur model the one-off fits and loss (a)'s re-render share: Gaussian sigma per CoC diameter (gs-dfd fit
    --sigma-per-coc). The shipped checkpoint was trained with 0.25 (its configs say so); a cache entry is reused
    only with the same value."""
    steps: int = 2000
    """Optimiser steps."""
    batch_size: int = 4
    """Frame pairs per step per process."""
    crop_hw: tuple[int, int] = (128, 160)
    """Training crop (height width) in pixels."""
    flips: bool = True
    """Random horizontal flips."""
    lr: float = 1e-3
    """Adam learning rate (cosine decay to lr_final_ratio x lr)."""
    lr_final_ratio: float = 0.1
    """Final learning rate as a fraction of lr."""
    weights: LossWeights = field(default_factory=LossWeights)
    """Loss weights."""
    defocus_net: DefocusNetConfig = field(default_factory=DefocusNetConfig)
    """DefocusNet architecture."""
    depth_net: DepthNetConfig = field(default_factory=DepthNetConfig)
    """DepthNet architecture."""
    d3net: D3NetConfig = field(default_factory=D3NetConfig)
    """D3Net architecture (method d3net)."""
    mddnet: MDDNetConfig = field(default_factory=MDDNetConfig)
    """MDDNet architecture (method mddnet)."""
    augment: CameraAugmentConfig = field(default_factory=CameraAugmentConfig)
    """Random camera effects (white balance, exposure, vignetting, sensor noise, tone, JPEG) on the frames the
    network reads, never on the loss targets (--augment.enabled; off by default)."""
    supervised: bool = False
    """Comparison only: anchor to depth_gt instead of the fit (reads ground truth; not self-supervised).
    Always on for d3net and mddnet."""
    init_weights: Optional[Path] = None
    """Start from these weights (a run's model.pt or checkpoint.pt) to fine-tune, e.g. on more scenes: the
    optimiser, step count and learning-rate schedule start afresh. Method and network settings must match."""
    seed: int = 0
    """Seed of the initial weights and of the crop sampler (same seed, same run on CPU)."""
    backend: Literal["auto", "cpu", "torch", "gsplat"] = "auto"
    """Gaussian renderer for loss (a) and for the fit cache."""
    checkpoint_every: int = 200
    """Save checkpoint.pt every this many steps (and on Ctrl-C)."""
    log_every: int = 10
    """Write losses to log.jsonl and TensorBoard every this many steps."""
    resume: bool = False
    """Continue from OUT/checkpoint.pt (exactly where it stopped)."""
    overwrite: bool = False
    """Start afresh in a run folder that already holds a checkpoint (its logs are replaced)."""
    progress: bool = True
    """Show a progress bar."""
    debug: bool = False
    """Show tracebacks instead of one-line errors."""


def _coerce(tp: typing.Any, value: typing.Any, where: str, path: Path) -> typing.Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise InputError(path, f"must be a mapping (got {type(value).__name__})", where)
        return _build(tp, value, path, where + ".")
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        return _coerce([a for a in args if a is not type(None)][0], value, where, path)
    if origin is Literal:
        if isinstance(value, bool) and {"on", "off"} <= set(args):  # YAML 1.1 reads a bare on/off as a bool
            value = "on" if value else "off"
        if value not in args:
            raise InputError(path, f"must be one of {', '.join(map(str, args))} (got {value!r})", where)
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]
        inner = args[0] if len(args) == 2 and args[1] is Ellipsis else None
        if inner is None and len(args) != len(value):
            raise InputError(path, f"needs {len(args)} values (got {len(value)})", where)
        return tuple(_coerce(inner or a, v, where, path) for a, v in zip(args if inner is None else [inner] * len(value), value))
    if tp is Path:
        return Path(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise InputError(path, f"must be true or false (got {value!r})", where)
        return value
    if tp in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (tp is int and float(value) != int(value)):
            raise InputError(path, f"must be a number (got {value!r})", where)
        return tp(value)
    return value


def _build(cls: type, raw: dict, path: Path, prefix: str = "") -> typing.Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise InputError(path, f"unknown key(s) {', '.join(prefix + u for u in unknown)}", prefix + unknown[0])
    kwargs = {k: _coerce(hints[k], v, prefix + k, path) for k, v in raw.items()}
    return cls(**kwargs) if prefix else kwargs


def load_yaml_defaults(path: Path, out: Path | None) -> TrainConfig:
    """A TrainConfig whose fields come from ``path`` (``out`` fills the required field if the YAML lacks it)."""
    import yaml

    if not path.is_file():
        raise InputError(path, "config file not found", "--config")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError(path, f"not valid YAML{where}", "--config") from None
    if not isinstance(raw, dict):
        raise InputError(path, "must be a mapping of config fields", "--config")
    kwargs = _build(TrainConfig, raw, path)
    kwargs.setdefault("out", out or Path("runs/unnamed"))
    # Relative paths in a config file are relative to the working directory, like flags.
    return TrainConfig(**{**kwargs, "config": path})


def unused_settings(method: str) -> frozenset[str]:
    """The TrainConfig fields and sections ``method`` never reads: other methods' networks, the fit's settings
    (methods supervised by depth_gt fit nothing), ``weights`` (a loss without weights). A change to them changes
    nothing in its run; an unknown method: none."""
    if method not in method_names():
        return frozenset()
    spec = get_method(method)
    unused = set(NETWORK_SECTIONS) - set(spec.sections)
    if not spec.needs_fit:
        unused |= FIT_SETTINGS
    if not spec.loss_weights:
        unused.add("weights")
    return frozenset(unused)
