"""Training checkpoints and the weights-only model files ``predict`` loads.

A checkpoint holds the networks, the optimiser, the step and the resolved
config: resuming from it continues exactly (the data sampler is a pure
function of (seed, rank, step)). :func:`export_weights` keeps only what
inference needs, in float16 (halves the file; predictions change by < 1e-3).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from gs_dfd.errors import InputError
from gs_dfd.models.defocus_net import DefocusNet, DefocusNetConfig
from gs_dfd.models.depth_net import DepthNet, DepthNetConfig
from gs_dfd.utils.atomic import write_bytes_atomic

FORMAT = "gs_dfd.train/1"
WEIGHTS_FORMAT = "gs_dfd.weights/1"


class SiameseDepthModel(torch.nn.Module):
    """DefocusNet and DepthNet as one module (one DDP wrapper, one state dict)."""

    def __init__(self, defocus_cfg: DefocusNetConfig | None = None, depth_cfg: DepthNetConfig | None = None) -> None:
        super().__init__()
        self.defocus = DefocusNet(defocus_cfg)
        self.depth = DepthNet(depth_cfg)

    def forward(self, images: torch.Tensor, lenses: torch.Tensor) -> dict[str, torch.Tensor]:
        """images ``[M, 3, h, w]``, lenses ``[M, 4]`` -> ``coc`` (px), ``depth`` (m), ``gate`` ``[M, 1, h, w]``."""
        coc = self.defocus(images)
        out = self.depth(images, coc, lenses)
        return {"coc": coc, **out}

    def model_config(self) -> dict:
        return {"defocus_net": self.defocus.config_dict(), "depth_net": self.depth.config_dict()}


def build_model(model_config: dict) -> SiameseDepthModel:
    d = dict(model_config.get("defocus_net", {}))
    z = dict(model_config.get("depth_net", {}))
    for cfg, key in ((d, "defocus_widths"), (z, "depth_widths")):
        if key in cfg:
            cfg[key] = tuple(cfg[key])
    return SiameseDepthModel(DefocusNetConfig(**d), DepthNetConfig(**z))


def _save(path: Path, obj: dict) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes_atomic(path, buf.getvalue())


def save_checkpoint(path: Path, model: SiameseDepthModel, optimizer: torch.optim.Optimizer, step: int, config: dict,
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


def export_weights(path: Path, model: SiameseDepthModel, meta: dict) -> None:
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    _save(path, {"format": WEIGHTS_FORMAT, "method": meta.get("method", "gs-siamese"), "model": state,
                 "model_config": model.model_config(), "meta": meta})


def model_from_checkpoint(path: Path) -> tuple[SiameseDepthModel, dict]:
    ck = load_checkpoint(path)
    model = build_model(ck["model_config"])
    state = {k: v.float() if v.is_floating_point() else v for k, v in ck["model"].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(path, f"weights do not match the model ({str(exc).splitlines()[0][:120]})", "model") from None
    model.eval()
    return model, ck
