"""Training checkpoints and the weights-only model files ``predict`` loads.

A checkpoint holds the networks, the optimiser, the step, the method (it
decides which network :func:`build_model` makes) and the resolved config:
resuming from it continues exactly (the data sampler is a pure function of
(seed, rank, step)). :func:`export_weights` keeps only what
inference needs, in float16 (halves the file; predictions change by < 1e-3).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gs_dfd.errors import InputError
from gs_dfd.models.d3net import D3Net, D3NetConfig
from gs_dfd.models.defocus_net import DefocusNet, DefocusNetConfig
from gs_dfd.models.depth_net import DepthNet, DepthNetConfig
from gs_dfd.models.mddnet import MDDNet, MDDNetConfig
from gs_dfd.utils.atomic import write_bytes_atomic

if TYPE_CHECKING:
    from gs_dfd.train.config import TrainConfig

FORMAT = "gs_dfd.train/1"
WEIGHTS_FORMAT = "gs_dfd.weights/1"
METHODS = ("gs-siamese", "dered", "d3net", "mddnet")


class SiameseDepthModel(torch.nn.Module):
    """DefocusNet and DepthNet as one module (one DDP wrapper, one state dict)."""

    def __init__(self, defocus_cfg: DefocusNetConfig | None = None, depth_cfg: DepthNetConfig | None = None) -> None:
        super().__init__()
        self.defocus = DefocusNet(defocus_cfg)
        self.depth = DepthNet(depth_cfg)

    def forward(self, images: torch.Tensor, lenses: torch.Tensor) -> dict[str, torch.Tensor]:
        """images ``[M, 3, h, w]``, lenses ``[M, 4]`` -> ``coc`` (px), ``depth`` (m), ``gate`` ``[M, 1, h, w]``."""
        coc = self.defocus(images, lenses)
        out = self.depth(images, coc, lenses)
        return {"coc": coc, **out}

    def model_config(self) -> dict:
        return {"defocus_net": self.defocus.config_dict(), "depth_net": self.depth.config_dict()}


def _section(model_config: dict, name: str, tuple_keys: tuple[str, ...]) -> dict:
    sec = dict(model_config.get(name, {}))
    for key in tuple_keys:
        if key in sec:
            sec[key] = tuple(sec[key])
    return sec


def build_model(model_config: dict, method: str = "gs-siamese") -> torch.nn.Module:
    """The network of ``method`` from a checkpoint's ``model_config`` (gs-siamese and dered share one)."""
    if method in ("gs-siamese", "dered"):
        return SiameseDepthModel(
            DefocusNetConfig(**_section(model_config, "defocus_net", ("defocus_widths", "reblur_sigmas_px"))),
            DepthNetConfig(**_section(model_config, "depth_net", ("depth_widths",))))
    if method == "d3net":
        return D3Net(D3NetConfig(**_section(model_config, "d3net", ("d3net_widths", "d3net_depth_range_m"))))
    if method == "mddnet":
        return MDDNet(MDDNetConfig(**_section(model_config, "mddnet", ("mddnet_widths", "mddnet_depth_range_m"))))
    raise ValueError(f"unknown method {method!r}")


def new_model(cfg: "TrainConfig") -> torch.nn.Module:
    """A freshly initialised network for ``cfg.method`` (seed torch first for reproducible weights)."""
    if cfg.method in ("gs-siamese", "dered"):
        return SiameseDepthModel(cfg.defocus_net, cfg.depth_net)
    if cfg.method == "d3net":
        return D3Net(cfg.d3net)
    if cfg.method == "mddnet":
        return MDDNet(cfg.mddnet)
    raise ValueError(f"unknown method {cfg.method!r}")


def _save(path: Path, obj: dict) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes_atomic(path, buf.getvalue())


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, config: dict,
                    extra: dict[str, Any]) -> None:
    _save(path, {"format": FORMAT, "method": config.get("method"), "step": step, "model": model.state_dict(),
                 "optimizer": optimizer.state_dict(), "model_config": model.model_config(), "config": config, **extra})


def load_checkpoint(path: Path, field: str = "--checkpoint") -> dict:
    if not path.is_file():
        raise InputError(path, "checkpoint not found", field)
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input error
        raise InputError(path, f"cannot read checkpoint ({type(exc).__name__})", "checkpoint") from None
    if not isinstance(ck, dict) or ck.get("format") not in (FORMAT, WEIGHTS_FORMAT):
        raise InputError(path, f"not a gs_dfd checkpoint (expected format {FORMAT} or {WEIGHTS_FORMAT})", "format")
    return ck


def export_weights(path: Path, model: torch.nn.Module, meta: dict) -> None:
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    _save(path, {"format": WEIGHTS_FORMAT, "method": meta.get("method", "gs-siamese"), "model": state,
                 "model_config": model.model_config(), "meta": meta})


def compose_siamese(defocus_from: Path, depth_from: Path) -> tuple[SiameseDepthModel, dict]:
    """One gs-siamese model from two: the DefocusNet of ``defocus_from`` and the DepthNet of ``depth_from``.

    They fit together because DepthNet never sees pixels of blur, only the CoC map divided by the lens's K (a
    normalised defocus), so a better blur reader can be paired with a DepthNet whose near/far gate was trained
    elsewhere. Returns the model and the ``meta`` of the result (both sources recorded)."""
    parts = {}
    for role, path in (("defocus_net", defocus_from), ("depth_net", depth_from)):
        model, ck = model_from_checkpoint(path)
        if not isinstance(model, SiameseDepthModel):
            raise InputError(path, f"method {ck.get('method')!r} has no DefocusNet + DepthNet to take apart", "method")
        meta = ck.get("meta") or {k: ck[k] for k in ("method", "step") if k in ck}
        parts[role] = (model, {"file": str(path), **{k: v for k, v in meta.items() if k != "scenes"}})
    defocus, depth = parts["defocus_net"][0].defocus, parts["depth_net"][0].depth
    composed = SiameseDepthModel(defocus.cfg, depth.cfg)
    composed.defocus.load_state_dict(defocus.state_dict())
    composed.depth.load_state_dict(depth.state_dict())
    composed.eval()
    src = parts["defocus_net"][1]
    meta = {"method": "gs-siamese", "steps": src.get("steps", src.get("step", 0)),
            "composed_from": {role: info for role, (_, info) in parts.items()}}
    return composed, meta


def model_from_checkpoint(path: Path) -> tuple[torch.nn.Module, dict]:
    """The network a checkpoint (or model.pt) records, by its ``method`` (files without one: gs-siamese)."""
    ck = load_checkpoint(path)
    method = ck.get("method") or "gs-siamese"
    if method not in METHODS:
        raise InputError(path, f"unknown method {method!r} (this gs_dfd knows {', '.join(METHODS)})", "method")
    try:
        model = build_model(ck["model_config"], method)
    except TypeError as exc:
        raise InputError(path, f"model settings do not fit method {method} ({exc})", "model_config") from None
    state = {k: v.float() if v.is_floating_point() else v for k, v in ck["model"].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(path, f"weights do not match the model ({str(exc).splitlines()[0][:120]})", "model") from None
    model.eval()
    return model, ck
