"""The methods ``gs-dfd train`` trains and ``predict`` runs, registered by name: one :class:`MethodSpec` each.

Everything that depends on the method is looked up here, so train, predict, resume checks and the benchmark
ask one place instead of each keeping its own list of names: the config sections that build its network (from
a TrainConfig or from a checkpoint's ``model_config``), whether it learns from the per-scene Gaussian fit or
from depth_gt, its loss, and what ``predict`` does with its output (its head).

Losses live in :mod:`gs_dfd.train` and are named here as ``"module:function"``, imported on first use:
models/ and infer/ never import train/ (predict needs no training code).
"""

from __future__ import annotations

import dataclasses
import importlib
import typing
from dataclasses import dataclass
from typing import Any, Callable, Literal

from torch import Tensor, nn

from gs_dfd.models.d3net import D3Net, D3NetConfig
from gs_dfd.models.defocus_net import DefocusNetConfig
from gs_dfd.models.depth_net import DepthNetConfig
from gs_dfd.models.lens_code import coc_px_from_depth
from gs_dfd.models.mddnet import MDDNet, MDDNetConfig
from gs_dfd.models.siamese import SiameseDepthModel

DEFAULT_METHOD = "gs-siamese"
"""``gs-dfd train`` without --method, and the method of files that record none (the first checkpoints)."""

NETWORK_SECTIONS: dict[str, type] = {"defocus_net": DefocusNetConfig, "depth_net": DepthNetConfig,
                                     "d3net": D3NetConfig, "mddnet": MDDNetConfig}
"""Network config sections: each is a TrainConfig field and a key of a checkpoint's ``model_config``."""


@dataclass
class HeadOutput:
    """What predict takes from one image, tensors ``[1, 1, H, W]``."""

    depth: Tensor
    coc: Tensor
    gate: Tensor | None = None
    """+1 far, -1 near, from the network; None: predict takes the side of the focus plane the depth is on."""
    uncertainty: Tensor | None = None
    coc_source: str = "network"
    mc_samples: int = 1


Head = Callable[[nn.Module, Tensor, Tensor, int], HeadOutput]
"""(model, images ``[1, 3, H, W]``, lenses ``[1, 4]``, passes) -> :class:`HeadOutput`."""


def forward_head(model: nn.Module, images: Tensor, lenses: Tensor, passes: int) -> HeadOutput:
    """One pass; the network predicts depth and CoC itself (siamese: DefocusNet's CoC -> DepthNet's depth and
    gate; mddnet: its two decoders)."""
    out = model(images, lenses)
    return HeadOutput(out["depth"], out["coc"], out.get("gate"))


def mc_dropout_head(model: nn.Module, images: Tensor, lenses: Tensor, passes: int) -> HeadOutput:
    """Monte-Carlo dropout: the mean depth of ``passes`` passes and their std as the uncertainty. The network
    predicts no CoC, so the CoC is the thin lens's for that depth, and ``coc_source`` says so."""
    depth, std = model.mc_predict(images, passes)
    return HeadOutput(depth, coc_px_from_depth(depth, lenses), uncertainty=std,
                      coc_source="thin lens of the predicted depth")


@dataclass(frozen=True)
class MethodSpec:
    """One method: how to build, train and run its network."""

    name: str
    network: Callable[..., nn.Module]
    """Builds the network from one config per entry of ``sections``, in that order."""
    sections: tuple[str, ...]
    """Its network's config sections (keys of :data:`NETWORK_SECTIONS`); it never reads the others."""
    supervision: Literal["fit", "depth_gt"]
    """fit: self-supervised through each scene's cached Gaussian fit, no ground truth read; depth_gt: learns
    from depth_gt and fits nothing."""
    loss: str
    """``"module:function"`` of its loss, ``(model, batch, scenes, cfg) -> {term: tensor, "total": ...}``."""
    head: Head
    """What predict does with the network (:func:`forward_head`, :func:`mc_dropout_head`)."""
    loss_weights: bool = True
    """Its loss reads TrainConfig's ``weights`` section."""
    fit_aif: bool = False
    """Its loss reads the fit's all-in-focus estimate as well (dered re-blurs it in image space)."""
    mc_samples: int = 0
    """Default Monte-Carlo dropout passes in predict (0: the network runs once)."""

    @property
    def needs_fit(self) -> bool:
        return self.supervision == "fit"

    @property
    def supervised(self) -> bool:
        return self.supervision == "depth_gt"

    def new_model(self, cfg: Any) -> nn.Module:
        """A freshly initialised network from ``cfg``'s sections (a TrainConfig, or anything with those
        attributes); seed torch first for reproducible weights."""
        return self.network(*(getattr(cfg, name) for name in self.sections))

    def build_model(self, model_config: dict) -> nn.Module:
        """The network a checkpoint's ``model_config`` describes; a setting it lacks (older than the setting)
        takes its default."""
        return self.network(*(_section_config(model_config, name) for name in self.sections))

    def loss_fn(self) -> Callable[..., dict[str, Tensor]]:
        """The loss function, imported now (models/ must not import train/ when it is loaded)."""
        module, _, name = self.loss.partition(":")
        return getattr(importlib.import_module(module), name)

    def uses_mc_dropout(self, model: nn.Module) -> bool:
        """Whether predict's ``mc_samples`` means anything for ``model`` (MC dropout, dropout > 0)."""
        return self.mc_samples > 0 and getattr(getattr(model, "cfg", None), "dropout", 0.0) > 0

    def predict(self, model: nn.Module, images: Tensor, lenses: Tensor, mc_samples: int | None = None) -> HeadOutput:
        """One image through the head; ``mc_samples`` (None: the method's default) only where MC dropout
        applies, else one pass."""
        passes = (mc_samples or self.mc_samples) if self.uses_mc_dropout(model) else 1
        return dataclasses.replace(self.head(model, images, lenses, passes), mc_samples=passes)


def _section_config(model_config: dict, name: str) -> Any:
    """One section of ``model_config`` as its config class; the lists a saved file holds become the tuples the
    class declares."""
    cls = NETWORK_SECTIONS[name]
    section = dict(model_config.get(name, {}))
    hints = typing.get_type_hints(cls)
    for key, value in section.items():
        if typing.get_origin(hints.get(key)) is tuple:
            section[key] = tuple(value)
    return cls(**section)


_METHODS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    """Add a method (a name taken twice, or an unknown section, is a bug here)."""
    if spec.name in _METHODS:
        raise ValueError(f"method {spec.name!r} is registered already")
    unknown = set(spec.sections) - set(NETWORK_SECTIONS)
    if unknown:
        raise ValueError(f"method {spec.name!r}: unknown config section(s) {sorted(unknown)}")
    _METHODS[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r} (this gs_dfd knows {', '.join(_METHODS)})") from None


def method_names(*, supervised: bool | None = None) -> tuple[str, ...]:
    """The registered names, in registration order; ``supervised``: only those that are (or are not)."""
    return tuple(name for name, spec in _METHODS.items() if supervised is None or spec.supervised == supervised)


def method_of(ck: dict) -> str:
    """The method a checkpoint or weights file records (files without one are gs-siamese's)."""
    return ck.get("method") or DEFAULT_METHOD


def build_model(model_config: dict, method: str = DEFAULT_METHOD) -> nn.Module:
    """The network of ``method`` from a checkpoint's ``model_config``."""
    return get_method(method).build_model(model_config)


def new_model(cfg: Any) -> nn.Module:
    """A freshly initialised network for ``cfg.method`` (seed torch first for reproducible weights)."""
    return get_method(cfg.method).new_model(cfg)


register(MethodSpec(
    "gs-siamese", SiameseDepthModel, ("defocus_net", "depth_net"), supervision="fit",
    loss="gs_dfd.train.loop:gs_siamese_losses", head=forward_head))
register(MethodSpec(
    "dered", SiameseDepthModel, ("defocus_net", "depth_net"), supervision="fit",
    loss="gs_dfd.train.loop:dered_losses", head=forward_head, fit_aif=True))
register(MethodSpec(
    "d3net", D3Net, ("d3net",), supervision="depth_gt",
    loss="gs_dfd.train.loop:d3net_losses", head=mc_dropout_head, loss_weights=False, mc_samples=8))
register(MethodSpec(
    "mddnet", MDDNet, ("mddnet",), supervision="depth_gt",
    loss="gs_dfd.train.loop:mddnet_losses", head=forward_head))
