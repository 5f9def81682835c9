"""``gs-dfd check``: validate a scene and summarise its optics."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from gs_dfd.console import console
from gs_dfd.data.scene import Scene, load_scene
from gs_dfd.errors import InputError
from gs_dfd.utils.outputs import check_output, output_file
from gs_dfd.viz.colormap import coc_to_rgb, depth_to_rgb
from gs_dfd.viz.panels import save_panel

DEFAULT_DEPTH_RANGE_M = (0.5, 10.0)


@dataclass
class CheckConfig:
    """Validate a focal-stack scene (gs_dfd.scene/1) and print a summary: frames, focus distances,
    f-numbers and the CoC range in pixels over the scene's depth range. Exits non-zero with a one-line
    message naming the file and field when anything is wrong."""

    scene: Path
    """Scene folder (holds scene.json)."""
    depth_range_m: Optional[tuple[float, float]] = None
    """Depth range (near far, metres) for the CoC summary; default: the range of depth_gt, else 0.5 10."""
    preview: Optional[Path] = None
    """Also write a PNG contact sheet of the frames (plus depth and CoC maps when depth_gt exists)."""
    overwrite: bool = False
    """Replace --preview if it is an earlier gs-dfd picture (never anything else)."""
    debug: bool = False
    """Show full tracebacks instead of one-line errors."""


def _depth_range(cfg: CheckConfig, depth: np.ndarray | None) -> tuple[tuple[float, float], str]:
    if cfg.depth_range_m is not None:
        near, far = cfg.depth_range_m
        if not 0 < near <= far:
            raise InputError(None, f"need 0 < near <= far (got {near}, {far})", "--depth-range-m")
        return (near, far), "--depth-range-m"
    if depth is not None and np.any(depth > 0):
        valid = depth[depth > 0]
        return (float(valid.min()), float(valid.max())), "depth_gt"
    return DEFAULT_DEPTH_RANGE_M, "default"


def summarize(scene: Scene, cfg: CheckConfig) -> str:
    cam = scene.camera
    depth = scene.load_depth_gt()
    (near, far), range_src = _depth_range(cfg, depth)
    lines = [
        f"scene        {scene.root}  (gs_dfd.scene/1)",
        f"camera       {cam.width}x{cam.height} px, fx={cam.fx:.1f} fy={cam.fy:.1f} cx={cam.cx:.1f} cy={cam.cy:.1f}, "
        f"f={cam.focal_length_m * 1e3:.2f} mm, N={cam.f_number:g}, pixel pitch {cam.pixel_pitch_m * 1e6:.2f} um",
    ]
    if depth is not None:
        valid = depth > 0
        rng = f", {depth[valid].min():.3f}-{depth[valid].max():.3f} m" if valid.any() else ""
        lines.append(f"depth_gt     {scene.depth_gt}: {int(valid.sum())} valid px ({100 * valid.mean():.1f}%){rng}")
    else:
        lines.append("depth_gt     none")
    lines.append(f"all_in_focus {scene.all_in_focus or 'none'}" + (" (evaluation only)" if scene.all_in_focus else ""))
    lines.append(f"frames       {len(scene.frames)}; CoC diameter over {near:.3f}-{far:.3f} m ({range_src}):")
    lines.append(f"  {'#':>3}  {'image':<24} {'focus (m)':>9} {'f-number':>8} {'CoC min-max (px)':>17}  pose")
    for i, frame in enumerate(scene.frames):
        lo, hi = scene.lens(i).coc_px_range(near, far)
        pose = "identity" if frame.world_to_cam is None else "world_to_cam"
        lines.append(f"  {i:>3}  {frame.image:<24} {frame.focus_distance_m:>9.3f} {scene.f_number(i):>8g} "
                     f"{lo:>8.2f}-{hi:<8.2f}  {pose}")
    return "\n".join(lines)


def write_preview(scene: Scene, path: Path) -> Path:
    """Frames in the top row; below each, its CoC map from depth_gt; all-in-focus and depth on the left."""
    frames = scene.load_frames()
    n = len(scene.frames)
    tiles: list[np.ndarray | None] = [scene.load_all_in_focus()] + list(frames)
    titles = ["all in focus" if tiles[0] is not None else ""]
    titles += [f"#{i} focus {f.focus_distance_m:g} m, f/{scene.f_number(i):g}" for i, f in enumerate(scene.frames)]
    depth = scene.load_depth_gt()
    if depth is not None and np.any(depth > 0):
        valid = depth > 0
        filled = np.where(valid, depth, np.median(depth[valid]))
        cocs = [np.where(valid, scene.lens(i).coc_px(filled), np.nan) for i in range(n)]
        top = max(float(np.nanpercentile(c, 99)) for c in cocs)
        lo, hi = float(depth[valid].min()), float(depth[valid].max())
        tiles += [depth_to_rgb(depth)] + [coc_to_rgb(c, top) for c in cocs]
        titles += [f"depth_gt {lo:.2f}-{hi:.2f} m (near = red)"] + [f"#{i} CoC 0-{top:.1f} px" for i in range(n)]
    return save_panel(path, tiles, titles, columns=n + 1, suptitle=f"{scene.root.name}: {n} frames")


def _check_preview(cfg: CheckConfig) -> None:
    if cfg.preview is None:
        return
    if cfg.preview.suffix.lower() != ".png":
        raise InputError(cfg.preview, f"must be a .png file (got '{cfg.preview.suffix}')", "--preview")
    check_output(cfg.preview, kind="file", inputs=[("--scene", cfg.scene)], overwrite=cfg.overwrite, flag="--preview")


def run(cfg: CheckConfig) -> int:
    _check_preview(cfg)
    scene = load_scene(cfg.scene)
    for w in scene.warnings:
        console.warn(w)
    console.print(summarize(scene, cfg))
    if cfg.preview is not None:
        with output_file(cfg.preview, inputs=[("--scene", cfg.scene)], overwrite=cfg.overwrite,
                         flag="--preview") as tmp:
            write_preview(scene, tmp)
        console.print(f"preview      {cfg.preview}")
    console.print("OK: scene is valid")
    return 0
