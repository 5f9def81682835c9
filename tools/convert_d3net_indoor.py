#!/usr/bin/env python
"""Convert the real D3Net indoor DSLR set into gs_dfd scenes (aperture pairs).

Each id becomes a scene with two real frames of one view: f/2.8 (defocused)
and f/8 (nearly all in focus), both focused at the nominal 1.7 m (the camera
was in continuous autofocus, so the true focus distance varies), plus the
registered Xtion depth (uint16 millimetres) as ``depth_gt``. Data: Carvalho
et al., "Deep Depth from Defocus", ECCV-W 2018; cite them when reporting.

    python tools/convert_d3net_indoor.py --src ../shared/data/d3net_indoor_train --out data_local/d3net_indoor
"""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


from gs_dfd.cli import run_tool
from gs_dfd.console import console
from gs_dfd.data.images import image_size
from gs_dfd.data.scene import Camera, Frame, Scene, load_scene
from gs_dfd.errors import InputError
from gs_dfd.optics.presets import get_preset
from gs_dfd.utils.atomic import write_json_atomic
from gs_dfd.utils.outputs import atomic_output_dir


@dataclass
class ConvertD3NetConfig:
    """Turn ../shared/data/d3net_indoor_train into one gs_dfd scene per id (f/2.8 + f/8 frames, Xtion depth)."""

    src: Path = Path("../shared/data/d3net_indoor_train")
    """The data set folder (rgb_f2.8/, rgb_f8/, depth_mm/, index.csv)."""
    out: Path = Path("data_local/d3net_indoor")
    """Output folder; one scene per id (NNN/), written atomically as a whole."""
    ids: Optional[tuple[str, ...]] = None
    """Only these ids (e.g. 000 001); default: all in index.csv."""
    focus_distance_m: float = 1.7
    """Focus distance written for both frames (the authors' nominal value)."""
    overwrite: bool = False
    """Replace the output folder if it exists."""


def convert_one(src: Path, scene_id: str, out: Path, focus_distance_m: float) -> Scene:
    preset = get_preset("d3net")
    files = {
        "f2.8": src / "rgb_f2.8" / f"{scene_id}.jpg",
        "f8": src / "rgb_f8" / f"{scene_id}.jpg",
        "depth": src / "depth_mm" / f"{scene_id}.png",
    }
    for key, path in files.items():
        if not path.is_file():
            raise InputError(path, "file not found", key)
    width, height = image_size(files["f2.8"], field="rgb_f2.8")
    camera = Camera(width=width, height=height, **preset.intrinsics(width, height),
                    focal_length_m=preset.focal_length_m, f_number=2.8, pixel_pitch_m=preset.pixel_pitch_at(width))
    (out / "frames").mkdir(parents=True)
    shutil.copyfile(files["f2.8"], out / "frames/000_f2.8.jpg")
    shutil.copyfile(files["f8"], out / "frames/001_f8.jpg")
    shutil.copyfile(files["depth"], out / "depth_mm.png")
    frames = [Frame("frames/000_f2.8.jpg", focus_distance_m), Frame("frames/001_f8.jpg", focus_distance_m, f_number=8.0)]
    scene = Scene(root=out, camera=camera, frames=frames, depth_gt="depth_mm.png", depth_gt_scale=1e-3)
    write_json_atomic(out / "scene.json", scene.to_json())
    return load_scene(out)  # validates sizes and depth


def read_ids(src: Path) -> list[str]:
    index = src / "index.csv"
    if not index.is_file():
        raise InputError(index, "index.csv not found (is --src the d3net_indoor_train folder?)")
    with open(index, newline="") as fh:
        return [row["id"] for row in csv.DictReader(fh)]


def main(cfg: ConvertD3NetConfig) -> int:
    ids = list(cfg.ids) if cfg.ids else read_ids(cfg.src)
    with atomic_output_dir(cfg.out, cfg.overwrite, [("--src", cfg.src)], Path(__file__).stem) as tmp:
        for scene_id in console.progress(ids, "d3net scenes"):
            convert_one(cfg.src, scene_id, tmp / scene_id, cfg.focus_distance_m)
    console.print(f"wrote {len(ids)} scenes to {cfg.out}")
    return 0


if __name__ == "__main__":
    run_tool(main, ConvertD3NetConfig)
