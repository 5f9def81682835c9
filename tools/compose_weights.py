#!/usr/bin/env python
"""Compose one gs-siamese weights file from two trained models: DefocusNet from one, DepthNet from the other.

    python tools/compose_weights.py --defocus-from runs/gs_siamese_nyu_reblur_ft/model.pt \\
        --depth-from runs/gs_siamese_nyu_ft/model.pt --out runs/composed.pt

v2, the weights shipped before v3, was made this way (docs/results_history.md): DepthNet reads the CoC
map only through the lens's normalised defocus, so a DefocusNet that reads blur better can be paired with a
DepthNet whose near/far gate behaves better on other data. The result is written in float16, atomically, with
both sources in its ``meta``; its predictions are those of the two parts run one after the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gs_dfd.cli import run_tool
from gs_dfd.console import console
from gs_dfd.errors import InputError
from gs_dfd.models.checkpoint_io import model_from_checkpoint
from gs_dfd.models.siamese import SiameseDepthModel
from gs_dfd.train.checkpoint import export_weights


@dataclass
class ComposeWeightsConfig:
    """Take DefocusNet from one gs-siamese model and DepthNet from another; write one weights file."""

    defocus_from: Path
    """Model (RUN/model.pt, RUN/checkpoint.pt or a weights file) whose DefocusNet (the blur reader) is kept."""
    depth_from: Path
    """Model whose DepthNet (near/far gate and correction) is kept."""
    out: Path
    """The weights file to write (float16, as gs-dfd train's model.pt)."""
    overwrite: bool = False
    """Replace --out if it exists."""


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


def main(cfg: ComposeWeightsConfig) -> int:
    if cfg.out.exists() and not cfg.overwrite:
        raise InputError(cfg.out, "exists (pass --overwrite to replace it)", "--out")
    model, meta = compose_siamese(cfg.defocus_from, cfg.depth_from)
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    export_weights(cfg.out, model, meta)
    n = sum(p.numel() for p in model.parameters())
    console.print(f"{cfg.out}: DefocusNet of {cfg.defocus_from} + DepthNet of {cfg.depth_from} "
                  f"({n / 1e6:.2f} M parameters, {cfg.out.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    run_tool(main, ComposeWeightsConfig)
