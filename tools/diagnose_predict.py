#!/usr/bin/env python
"""Where does a single-image prediction's depth error come from? CoC reading vs near/far vs DepthNet.

For each scene of a ``gs-dfd predict`` folder (``PRED/<scene>/coc.npy``, ``depth.npy``, ``prediction.json``)
or of a folder of ``gs-dfd fit`` outputs (``coc/000.npy``: frame 0), against the scene's ``depth_gt`` (an
evaluation tool: it reads ground truth, training never does):

- ``coc_err_px``: median |predicted CoC - thin-lens CoC of the true depth| (pixels), and its signed median
  (``coc_bias_px``; < 0: the network reads less blur than there is); ``coc_err_debiased_px``: the same error once
  the scene's median offset is removed (what a per-image calibration of the blur reading could reach);
- ``abs_rel``: the network's depth (as ``gs-dfd eval`` scores it);
- ``abs_rel_far``: the thin-lens solution behind the focus plane of the predicted CoC, no DepthNet;
- ``abs_rel_true_side``: the thin-lens solution of the predicted CoC on the true side of the focus plane
  (an oracle gate: what a perfect near/far choice would give with this CoC);
- ``near_fraction``: the share of valid pixels in front of the focus plane; ``near_right`` / ``far_right``: the
  share of those in front / behind that the predicted depth puts on the same side (nan without any; the mean
  skips nan).

    python tools/diagnose_predict.py --predictions out/benchmark/predictions/synthetic/gs_siamese \\
        --scenes data_local/bench/full/synthetic
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gs_dfd.cli import run_tool
from gs_dfd.console import console
from gs_dfd.data.scene import load_scene
from gs_dfd.errors import InputError
from gs_dfd.eval.metrics import depth_metrics
from gs_dfd.optics.thin_lens import ThinLens


@dataclass
class DiagnoseConfig:
    predictions: Path
    """A gs-dfd predict folder of scenes (PRED/<scene>/coc.npy, depth.npy, prediction.json), or of gs-dfd fit
    outputs (PRED/<scene>/coc/000.npy, depth.npy), e.g. the training fit cache."""
    scenes: Path
    """The folder of the scenes predicted (each with depth_gt)."""
    min_depth: float = 0.5
    """Near end of the evaluated depth range (m)."""
    max_depth: float = 4.0
    """Far end of the evaluated depth range (m)."""
    json: Path | None = None
    """Also write the per-scene rows and their mean here."""


def diagnose_scene(pred_dir: Path, scene_dir: Path, lo: float, hi: float) -> dict[str, float]:
    scene = load_scene(scene_dir)
    gt = scene.load_depth_gt()
    if gt is None:
        raise InputError(scene.json_path, "no depth_gt to diagnose against", "depth_gt")
    if (pred_dir / "prediction.json").is_file():  # gs-dfd predict
        lens = ThinLens(**json.loads((pred_dir / "prediction.json").read_text())["lens"])
        coc = np.load(pred_dir / "coc.npy").astype(np.float64)
    else:  # gs-dfd fit: the CoC map of frame 0, whose lens the scene gives
        lens = scene.lens(0)
        coc = np.load(pred_dir / "coc" / "000.npy").astype(np.float64)
    depth = np.load(pred_dir / "depth.npy")
    valid = np.isfinite(gt) & (gt > lo) & (gt < hi)
    true_coc = np.zeros_like(coc)
    true_coc[valid] = lens.coc_px(gt[valid])
    near, far = lens.depths_from_coc_px(coc)  # far: inf beyond the infinity CoC, scored as the far end as eval does
    true_side = np.where(gt < lens.focus_distance_m, near, far)

    def abs_rel(p: np.ndarray) -> float:
        return depth_metrics(p.astype(np.float32), gt, lo, hi)["abs_rel"]

    def side_right(truth: np.ndarray, predicted: np.ndarray) -> float:
        sel = valid & truth
        return float(np.mean(predicted[sel])) if sel.any() else float("nan")

    err = (coc - true_coc)[valid]
    bias = float(np.median(err))
    return {"coc_err_px": float(np.median(np.abs(err))), "coc_bias_px": bias,
            "coc_err_debiased_px": float(np.median(np.abs(err - bias))),
            "abs_rel": abs_rel(depth), "abs_rel_far": abs_rel(far), "abs_rel_true_side": abs_rel(true_side),
            "near_fraction": float(np.mean(gt[valid] < lens.focus_distance_m)),
            "near_right": side_right(gt < lens.focus_distance_m, depth < lens.focus_distance_m),
            "far_right": side_right(gt > lens.focus_distance_m, depth > lens.focus_distance_m)}


def main(cfg: DiagnoseConfig) -> int:
    dirs = sorted(p for p in cfg.predictions.iterdir()
                  if (p / "coc.npy").is_file() or (p / "coc" / "000.npy").is_file())
    if not dirs:
        raise InputError(cfg.predictions, "no PRED/<scene>/coc.npy (predict) or coc/000.npy (fit) here",
                         "--predictions")
    rows = []
    for d in dirs:
        rows.append({"scene": d.name, **diagnose_scene(d, cfg.scenes / d.name, cfg.min_depth, cfg.max_depth)})
    keys = [k for k in rows[0] if k != "scene"]
    console.print(f"{'scene':<22} " + " ".join(f"{k:>17}" for k in keys))
    for r in rows:
        console.print(f"{r['scene']:<22} " + " ".join(f"{r[k]:17.3f}" for k in keys))
    mean = {k: float(np.nanmean([r[k] for r in rows])) for k in keys}
    console.print(f"{'mean':<22} " + " ".join(f"{mean[k]:17.3f}" for k in keys))
    if cfg.json is not None:
        cfg.json.parent.mkdir(parents=True, exist_ok=True)
        strict = lambda row: {k: None if isinstance(v, float) and np.isnan(v) else v for k, v in row.items()}  # noqa: E731
        cfg.json.write_text(json.dumps({"rows": [strict(r) for r in rows], "mean": strict(mean)}, indent=2))
    return 0


if __name__ == "__main__":
    run_tool(main, DiagnoseConfig)
