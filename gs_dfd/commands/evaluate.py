"""``gs-dfd eval``: score predicted depth (and an all-in-focus image) against a scene's ground truth.

Two forms, exactly one per call:

- one scene: ``--scene DIR --depth PRED.npy [--aif PRED_AIF.png]`` writes ``OUT/metrics.json``,
  ``OUT/panel.png`` and ``OUT/config.json``;
- a folder of scenes: ``--scenes SCENES_DIR --predictions PRED_DIR`` finds each scene's prediction at
  ``PRED_DIR/<scene>/depth.npy`` (what ``gs-dfd fit --out PRED_DIR/<scene>`` writes) or ``PRED_DIR/<scene>.npy``
  and writes ``OUT/per_scene.csv``, ``OUT/metrics.json``, ``OUT/report.md``, ``OUT/panels/<scene>.png`` and
  ``OUT/config.json``.

The metric conventions live in :mod:`gs_dfd.eval.metrics`. ``OUT`` is built in a hidden sibling and moved
into place when complete, so bad input (found early or late) leaves nothing behind.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from gs_dfd.console import console
from gs_dfd.data.images import read_image, to_channels
from gs_dfd.data.scene import SCENE_FILE, Camera, Scene, load_scene
from gs_dfd.data.maps import load_map_npy
from gs_dfd.errors import InputError
from gs_dfd.eval.metrics import (
    DEPTH_METRIC_KEYS, abs_rel_map, depth_metrics, evaluation_mask, image_metrics, lpips_status, mean_depth_metrics,
)
from gs_dfd.utils.atomic import write_file_atomic, write_json_atomic
from gs_dfd.utils.outputs import atomic_output_dir, check_output
from gs_dfd.viz.colormap import colorize, depth_to_rgb
from gs_dfd.viz.panels import save_panel

METRIC_TITLES = {"abs_rel": "AbsRel", "sq_rel": "SqRel", "rmse": "RMSE (m)", "rmse_log": "RMSE-log", "log10": "log10",
                 "delta1": "δ<1.25", "delta2": "δ<1.25²", "delta3": "δ<1.25³"}
CONSOLE_TITLES = {"abs_rel": "AbsRel", "sq_rel": "SqRel", "rmse": "RMSE", "rmse_log": "RMSE-log", "log10": "log10",
                  "delta1": "delta1", "delta2": "delta2", "delta3": "delta3"}  # ASCII for any terminal
ERROR_CMAP = "viridis"  # its zero is purple, so black stays free for "not evaluated"


@dataclass(kw_only=True)
class EvalConfig:
    """Score predicted depth against the depth_gt of gs_dfd.scene/1 scenes. One scene: --scene DIR --depth
    PRED.npy; a folder of scenes: --scenes DIR --predictions DIR, where a scene's prediction is
    PRED_DIR/<scene>/depth.npy (the layout of `gs-dfd fit --out PRED_DIR/<scene>`) or PRED_DIR/<scene>.npy.
    Conventions: a pixel counts when its ground truth is finite, > 0 and inside [--min-depth, --max-depth];
    RMSE-log uses the natural log (DEReD's code uses log10); metrics are computed per image (scene), then
    averaged over images. OUT appears complete or not at all."""

    out: Path
    """Output folder (built in a hidden sibling, moved into place when complete)."""
    scene: Optional[Path] = None
    """One-scene form: the scene folder (holds scene.json and its depth_gt)."""
    depth: Optional[Path] = None
    """One-scene form: the predicted depth, a .npy of float metres, H x W of the scene's camera."""
    aif: Optional[Path] = None
    """One-scene form, optional: a predicted all-in-focus image (PNG/JPEG) scored with PSNR, SSIM and LPIPS
    (when its weights are available offline) against the scene's all_in_focus."""
    scenes: Optional[Path] = None
    """Folder form: a folder whose sub-folders with a scene.json are the scenes."""
    predictions: Optional[Path] = None
    """Folder form: holds <scene>/depth.npy or <scene>.npy for each scene."""
    allow_missing: bool = False
    """Folder form: evaluate the scenes that have a prediction and list the others as missing, instead of
    refusing."""
    min_depth: float = 0.5
    """Near end of the evaluation range, metres: ground truth below it does not count."""
    max_depth: float = 4.0
    """Far end of the evaluation range, metres: ground truth beyond it does not count."""
    clamp_prediction: bool = True
    """Clamp predictions to [--min-depth, --max-depth] before the metrics, non-finite ones counting as
    --max-depth (monodepth2's practice: a method cannot skip pixels by leaving holes). Off: predictions are
    used as given, and a non-finite or <= 0 value on an evaluated pixel is an error."""
    frame: int = 0
    """Index of the scene frame shown as the input in the panels."""
    error_max: Optional[float] = None
    """Top of the abs-rel error colour scale in the panels; default: each panel's 98th percentile (the range is
    printed in the panel title)."""
    overwrite: bool = False
    """Replace the output folder if it exists."""
    progress: bool = True
    """Show a progress bar (folder form)."""
    debug: bool = False
    """Show full tracebacks instead of one-line errors."""


@dataclass
class _Result:
    """One evaluated scene."""

    name: str
    scene: Scene
    prediction: Path
    pred: np.ndarray  # [H, W] metres, as loaded
    gt: np.ndarray  # [H, W] metres, 0 = invalid
    metrics: dict[str, float]  # DEPTH_METRIC_KEYS + valid_px + out_of_range_px


# --------------------------------------------------------------------------- validation


def _validate(cfg: EvalConfig) -> str:
    """Check the flags; returns the form, 'single' or 'folder'."""
    single = {"--scene": cfg.scene, "--depth": cfg.depth}
    folder = {"--scenes": cfg.scenes, "--predictions": cfg.predictions}
    given_single = [k for k, v in single.items() if v is not None]
    given_folder = [k for k, v in folder.items() if v is not None]
    if given_single and given_folder:
        raise InputError(None, f"{' '.join(given_single)} (one scene) and {' '.join(given_folder)} (a folder of "
                         "scenes) are two forms; give exactly one", "--scene/--scenes")
    if not given_single and not given_folder:
        raise InputError(None, "give either --scene DIR --depth PRED.npy (one scene) or --scenes DIR --predictions "
                         "DIR (a folder of scenes)", "--scene/--scenes")
    form = "single" if given_single else "folder"
    pair = single if form == "single" else folder
    missing = [k for k, v in pair.items() if v is None]
    if missing:
        have = [k for k in pair if k not in missing]
        raise InputError(None, f"{have[0]} needs {missing[0]}", missing[0])
    if form == "folder" and cfg.aif is not None:
        raise InputError(None, "belongs to the one-scene form (--scene --depth)", "--aif")
    if form == "single" and cfg.allow_missing:
        raise InputError(None, "belongs to the folder form (--scenes --predictions)", "--allow-missing")
    if not 0 < cfg.min_depth < cfg.max_depth or not math.isfinite(cfg.max_depth):
        raise InputError(None, f"need 0 < --min-depth < --max-depth (got {cfg.min_depth}, {cfg.max_depth})",
                         "--min-depth/--max-depth")
    if cfg.frame < 0:
        raise InputError(None, f"must be >= 0 (got {cfg.frame})", "--frame")
    if cfg.error_max is not None and not cfg.error_max > 0:
        raise InputError(None, f"must be > 0 (got {cfg.error_max})", "--error-max")
    check_output(cfg.out, kind="dir", inputs=_inputs(cfg), overwrite=cfg.overwrite)
    return form


def _inputs(cfg: EvalConfig) -> list[tuple[str, Path | None]]:
    return [("--scene", cfg.scene), ("--depth", cfg.depth), ("--aif", cfg.aif), ("--scenes", cfg.scenes),
            ("--predictions", cfg.predictions)]


def load_prediction(path: Path, camera: Camera, scene_json: Path, field: str | None = None) -> np.ndarray:
    """A predicted depth map: ``.npy``, float, ``[H, W]`` of the camera (values are checked by the metrics)."""
    if not path.is_file():
        raise InputError(path, "prediction file not found", field)
    if path.suffix.lower() != ".npy":
        raise InputError(path, f"prediction must be a .npy file of float metres (got '{path.suffix}')", field)
    return load_map_npy(path, camera, field, scene_json, what="prediction", float_only=True)


def _load(scene_dir: Path, prediction: Path, cfg: EvalConfig, field: str | None,
          warn: bool = True) -> tuple[Scene, np.ndarray, np.ndarray]:
    """The scene, its ground truth ``[H, W]`` and the prediction ``[H, W]``, all checked."""
    scene = load_scene(scene_dir, check_files=False)
    for w in scene.warnings if warn else []:
        console.warn(w)
    if scene.depth_gt is None:
        raise InputError(scene.json_path, "no ground-truth depth to evaluate against", "depth_gt")
    if cfg.frame >= len(scene.frames):
        raise InputError(scene.json_path, f"--frame {cfg.frame} but the scene has {len(scene.frames)} frames", "frames")
    gt = scene.load_depth_gt()
    return scene, gt, load_prediction(prediction, scene.camera, scene.json_path, field)


def _evaluate(name: str, scene_dir: Path, prediction: Path, cfg: EvalConfig, field: str | None) -> _Result:
    scene, gt, pred = _load(scene_dir, prediction, cfg, field)
    lo, hi = cfg.min_depth, cfg.max_depth
    valid = evaluation_mask(gt, lo, hi)
    finite = np.isfinite(pred)
    unusable = valid & ~(finite & (pred > 0))
    if not cfg.clamp_prediction and unusable.any():
        raise InputError(prediction, f"{int(unusable.sum())} evaluated pixels have a non-finite or <= 0 prediction "
                         "(drop --no-clamp-prediction to clamp them to the range)", field)
    out_of_range = valid & ~(finite & (pred >= lo) & (pred <= hi))
    metrics = depth_metrics(pred, gt, lo, hi, clamp=cfg.clamp_prediction)
    metrics["out_of_range_px"] = int(out_of_range.sum())
    if metrics["valid_px"] == 0:
        console.warn(f"{scene.root / scene.depth_gt}: no ground-truth pixel inside {lo:g}-{hi:g} m; "
                     f"{name} does not count in the mean")
    return _Result(name, scene, prediction, pred, gt, metrics)


# --------------------------------------------------------------------------- outputs


def conventions(cfg: EvalConfig) -> dict[str, str]:
    lo, hi = cfg.min_depth, cfg.max_depth
    return {
        "valid_pixels": f"ground truth finite, > 0 and inside [{lo:g}, {hi:g}] m",
        "prediction": (f"clamped to [{lo:g}, {hi:g}] m before the metrics; non-finite values count as {hi:g} m"
                       if cfg.clamp_prediction else "used as given (--no-clamp-prediction); must be finite and > 0"),
        "rmse_log": "sqrt(mean((ln pred - ln gt)^2)), natural log (DEReD's code uses log10: its RMSE-log numbers "
                    "are ln(10) = 2.303 times smaller)",
        "log10": "mean(|log10 pred - log10 gt|)",
        "delta": "fraction of pixels with max(pred/gt, gt/pred) < 1.25, 1.25^2, 1.25^3",
        "averaging": "metrics per image (scene), then the unweighted mean over images",
    }


def command_line(cfg: EvalConfig) -> str:
    """The flags of this run as a ``gs-dfd eval`` command (defaults left out, the range always in, --out last)."""
    parts = ["gs-dfd", "eval"]
    defaults = EvalConfig(out=cfg.out)
    for f in dataclasses.fields(cfg):
        if f.name in ("out", "progress", "debug", "overwrite"):
            continue
        value, flag = getattr(cfg, f.name), "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            if value != getattr(defaults, f.name):
                parts.append(flag if value else "--no-" + f.name.replace("_", "-"))
        elif value is not None and (f.name in ("min_depth", "max_depth") or value != getattr(defaults, f.name)):
            parts += [flag, shlex.quote(str(value))]
    return " ".join(parts + ["--out", shlex.quote(str(cfg.out))])


def _json_safe(obj: Any) -> Any:
    """NaN / inf -> None (strict JSON), recursively."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _depth_block(m: dict[str, float]) -> dict[str, Any]:
    return {k: m[k] for k in (*DEPTH_METRIC_KEYS, "valid_px", "out_of_range_px") if k in m}


def write_panel(path: Path, r: _Result, cfg: EvalConfig) -> Path:
    """Input frame, prediction and ground truth (same inverse-depth colours), abs-rel error map."""
    lo, hi = cfg.min_depth, cfg.max_depth
    valid = evaluation_mask(r.gt, lo, hi)
    d_lo, d_hi = np.percentile(r.gt[valid], [2, 98]) if valid.any() else (lo, hi)
    if not d_hi > d_lo:
        d_lo, d_hi = d_lo * 0.95, d_hi * 1.05
    err = abs_rel_map(r.pred, r.gt, lo, hi, clamp=cfg.clamp_prediction)
    top = cfg.error_max
    if top is None:
        top = max(float(np.percentile(err[valid], 98)), 1e-3) if valid.any() else 1.0
    k = cfg.frame
    frame = r.scene.load_frames()[k]
    tiles = [frame, depth_to_rgb(r.pred, d_lo, d_hi), depth_to_rgb(r.gt, d_lo, d_hi),
             colorize(err, 0.0, top, cmap=ERROR_CMAP, invalid=~valid)]
    titles = [f"frame {k} (focus {r.scene.frames[k].focus_distance_m:g} m)",
              f"prediction {d_lo:.2f}-{d_hi:.2f} m (near = red)", "depth_gt (same colours)",
              f"abs rel error 0-{top:.3g} (black: not scored)"]
    m = r.metrics
    summary = (f"{r.name}: AbsRel {m['abs_rel']:.4f}, RMSE {m['rmse']:.4f} m, delta1 {m['delta1']:.4f} "
               f"over {m['valid_px']} px in {lo:g}-{hi:g} m")
    return save_panel(path, tiles, titles, columns=4, suptitle=summary)


def _fmt(v: float | int) -> str:
    if isinstance(v, int):
        return str(v)
    return "n/a" if not math.isfinite(v) else f"{v:.4f}"


def _csv_text(results: list[_Result]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["scene", *DEPTH_METRIC_KEYS, "valid_px", "out_of_range_px", "prediction"])
    for r in results:
        m = r.metrics
        writer.writerow([r.name, *(format(m[k], ".8g") for k in DEPTH_METRIC_KEYS), m["valid_px"],
                         m["out_of_range_px"], str(r.prediction)])
    return buf.getvalue()


def _report_md(cfg: EvalConfig, results: list[_Result], mean: dict[str, float], missing: list[str]) -> str:
    head = "| scene | valid px | " + " | ".join(METRIC_TITLES[k] for k in DEPTH_METRIC_KEYS) + " |"
    rule = "|---|" + "---:|" * (len(DEPTH_METRIC_KEYS) + 1)
    rows = [f"| {r.name} | {r.metrics['valid_px']} | " + " | ".join(_fmt(r.metrics[k]) for k in DEPTH_METRIC_KEYS)
            + " |" for r in results]
    total = sum(r.metrics["valid_px"] for r in results)
    rows.append(f"| **mean of {mean['images']} scenes** | {total} | "
                + " | ".join(f"**{_fmt(mean[k])}**" for k in DEPTH_METRIC_KEYS) + " |")
    lines = [
        "# gs-dfd eval",
        "",
        f"Predicted depth in `{cfg.predictions}` against the ground truth of the scenes in `{cfg.scenes}`, "
        f"range {cfg.min_depth:g}-{cfg.max_depth:g} m. Panels: `panels/<scene>.png`.",
        "",
        head, rule, *rows, "",
    ]
    if missing:
        lines += [f"Scenes without a prediction, not in the mean ({len(missing)}): "
                  + ", ".join(f"`{m}`" for m in missing), ""]
    lines += ["## Conventions", ""]
    lines += [f"- {k.replace('_', ' ')}: {v}" for k, v in conventions(cfg).items()]
    lines += ["", "## Command", "", "```bash", command_line(cfg), "```", ""]
    return "\n".join(lines)


def _save_config(out: Path, cfg: EvalConfig) -> None:
    fields = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()}
    write_json_atomic(out / "config.json", {"command": "eval", **fields})


# --------------------------------------------------------------------------- the two forms


def _image_block(cfg: EvalConfig, scene: Scene) -> dict[str, Any]:
    assert cfg.aif is not None
    if scene.all_in_focus is None:
        raise InputError(scene.json_path, "no all_in_focus image to score --aif against", "all_in_focus")
    target = scene.load_all_in_focus()
    pred = read_image(cfg.aif, field="--aif")
    if pred.shape[:2] != target.shape[:2]:
        raise InputError(cfg.aif, f"image is {pred.shape[1]}x{pred.shape[0]} but the scene's camera is "
                         f"{target.shape[1]}x{target.shape[0]} (see {scene.json_path})", "--aif")
    c = max(pred.shape[2], target.shape[2])
    m = image_metrics(to_channels(pred, c), to_channels(target, c))
    block: dict[str, Any] = {"prediction": str(cfg.aif), "target": str(scene.root / scene.all_in_focus),
                             "psnr": m["psnr"], "ssim": m["ssim"]}
    if m["lpips"] is None:
        block.update(lpips="unavailable", lpips_reason=lpips_status().reason)
    else:
        block["lpips"] = m["lpips"]
    return block


def _metrics_header(cfg: EvalConfig, form: str, **inputs: str) -> dict[str, Any]:
    """What both forms' metrics.json start with: the inputs, the range and the conventions used."""
    return {"command": "eval", "form": form, **inputs, "range_m": [cfg.min_depth, cfg.max_depth],
            "clamp_prediction": cfg.clamp_prediction, "conventions": conventions(cfg),
            "command_line": command_line(cfg)}


def run_single(cfg: EvalConfig) -> int:
    assert cfg.scene is not None and cfg.depth is not None
    r = _evaluate(Path(os.path.abspath(cfg.scene)).name, cfg.scene, cfg.depth, cfg, "--depth")
    image = _image_block(cfg, r.scene) if cfg.aif is not None else None
    with atomic_output_dir(cfg.out, cfg.overwrite, _inputs(cfg), "eval") as tmp:
        metrics = {
            **_metrics_header(cfg, "single", scene=str(cfg.scene), prediction=str(cfg.depth)),
            "valid_px": r.metrics["valid_px"],
            "depth": _depth_block(r.metrics),
            **({"image": image} if image is not None else {}),
        }
        write_json_atomic(tmp / "metrics.json", _json_safe(metrics))
        write_panel(tmp / "panel.png", r, cfg)
        _save_config(tmp, cfg)
    m = r.metrics
    console.print(f"eval of {cfg.depth} against {cfg.scene} ({cfg.min_depth:g}-{cfg.max_depth:g} m, "
                  f"{m['valid_px']} px): " + ", ".join(f"{CONSOLE_TITLES[k]} {_fmt(m[k])}" for k in DEPTH_METRIC_KEYS))
    if m["out_of_range_px"]:
        verb = "clamped" if cfg.clamp_prediction else "outside the range"
        console.print(f"  {m['out_of_range_px']} evaluated pixels had a prediction {verb}")
    if image is not None:
        lp = image["lpips"] if isinstance(image["lpips"], str) else f"{image['lpips']:.4f}"
        console.print(f"  all-in-focus: PSNR {image['psnr']:.2f} dB, SSIM {image['ssim']:.4f}, LPIPS {lp}")
    console.print(f"  -> {cfg.out / 'metrics.json'}, {cfg.out / 'panel.png'}")
    return 0


def find_scenes(scenes_dir: Path) -> list[Path]:
    """Sub-folders of ``scenes_dir`` that hold a scene.json, sorted by name (hidden ones skipped)."""
    if not scenes_dir.is_dir():
        raise InputError(scenes_dir, "scenes folder not found", "--scenes")
    found = sorted(p for p in scenes_dir.iterdir()
                   if p.is_dir() and not p.name.startswith(".") and (p / SCENE_FILE).is_file())
    if not found:
        is_scene = (scenes_dir / SCENE_FILE).is_file()
        hint = " (it is a scene itself: use --scene DIR --depth PRED.npy)" if is_scene else ""
        raise InputError(scenes_dir, f"no scene folders (sub-folders with {SCENE_FILE}) found{hint}", "--scenes")
    return found


def find_prediction(pred_dir: Path, name: str) -> Path | None:
    """``PRED_DIR/<name>/depth.npy`` or ``PRED_DIR/<name>.npy``; None when neither exists; both is an error."""
    nested, flat = pred_dir / name / "depth.npy", pred_dir / f"{name}.npy"
    if nested.is_file() and flat.is_file():
        raise InputError(flat, f"ambiguous prediction for scene {name}: both {nested} and {flat} exist; remove one",
                         "--predictions")
    return nested if nested.is_file() else flat if flat.is_file() else None


def run_folder(cfg: EvalConfig) -> int:
    assert cfg.scenes is not None and cfg.predictions is not None
    scene_dirs = find_scenes(cfg.scenes)
    if not cfg.predictions.is_dir():
        raise InputError(cfg.predictions, "predictions folder not found", "--predictions")
    pairs = [(d, find_prediction(cfg.predictions, d.name)) for d in scene_dirs]
    missing = [d.name for d, p in pairs if p is None]
    todo = [(d, p) for d, p in pairs if p is not None]
    if missing:
        listed = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        msg = (f"no prediction for {len(missing)} of {len(pairs)} scenes: {listed} (looked for "
               f"<scene>/depth.npy and <scene>.npy)")
        if not cfg.allow_missing or not todo:
            raise InputError(cfg.predictions, msg + ("" if todo else "; nothing to evaluate")
                             + ("; pass --allow-missing to evaluate the rest" if todo else ""), "--predictions")
        console.warn(msg)
    # Pass 1 reads and scores every scene, so bad input stops the run before anything is written;
    # pass 2 re-reads each scene for its panel (one scene's maps in memory at a time).
    results: list[_Result] = []
    for scene_dir, prediction in console.progress(todo, desc="eval", total=len(todo), enabled=cfg.progress):
        r = _evaluate(scene_dir.name, scene_dir, prediction, cfg, None)
        r.pred = r.gt = np.empty(0)
        results.append(r)
    mean = mean_depth_metrics([r.metrics for r in results])
    with atomic_output_dir(cfg.out, cfg.overwrite, _inputs(cfg), "eval") as tmp:
        for r in console.progress(results, desc="panels", total=len(results), enabled=cfg.progress):
            r.scene, r.gt, r.pred = _load(r.scene.root, r.prediction, cfg, None, warn=False)
            write_panel(tmp / "panels" / f"{r.name}.png", r, cfg)
            r.pred = r.gt = np.empty(0)
        metrics = {
            **_metrics_header(cfg, "folder", scenes_dir=str(cfg.scenes), predictions_dir=str(cfg.predictions)),
            "count": mean["images"],
            "evaluated": len(results),
            "valid_px": sum(r.metrics["valid_px"] for r in results),
            "depth": {k: mean[k] for k in DEPTH_METRIC_KEYS},
            "per_scene": [{"scene": r.name, "prediction": str(r.prediction), **_depth_block(r.metrics)}
                          for r in results],
            "missing": missing,
        }
        write_json_atomic(tmp / "metrics.json", _json_safe(metrics))
        csv_text = _csv_text(results)
        write_file_atomic(tmp / "per_scene.csv", lambda p: p.write_text(csv_text))
        report = _report_md(cfg, results, mean, missing)
        write_file_atomic(tmp / "report.md", lambda p: p.write_text(report))
        _save_config(tmp, cfg)
    console.print(f"eval of {len(results)} scenes ({cfg.min_depth:g}-{cfg.max_depth:g} m), mean over "
                  f"{mean['images']}: " + ", ".join(f"{CONSOLE_TITLES[k]} {_fmt(mean[k])}" for k in DEPTH_METRIC_KEYS))
    if missing:
        console.print(f"  {len(missing)} scene(s) without a prediction (listed in report.md)")
    console.print(f"  -> {cfg.out / 'report.md'}, per_scene.csv, metrics.json, panels/")
    return 0


def run(cfg: EvalConfig) -> int:
    form = _validate(cfg)
    return run_single(cfg) if form == "single" else run_folder(cfg)
