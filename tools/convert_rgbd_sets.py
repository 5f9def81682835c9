#!/usr/bin/env python
"""Synthesise focal stacks from the real RGB-D pairs in ../shared/data.

- ``nyuv2_sample``: NYU Depth v2 (Silberman et al., ECCV 2012) RGB + Kinect
  depth (uint16, metres = value / 10000);
- ``middlebury_2001_2003``: cones, teddy, venus, tsukuba RGB + ground-truth
  disparity (Scharstein & Szeliski 2002/2003). Disparity has no metric
  calibration: valid disparities are mapped affinely in inverse depth onto
  ``--middlebury-depth-range-m``.
- ``d3net_indoor_train`` (``--d3net-ids``): the f/8 DSLR image (close to
  all-in-focus) and its registered Xtion depth in millimetres (Carvalho et
  al., ECCV-W 2018), centre-cropped from 3:2 to 4:3. These are the many
  indoor RGB-D scenes the networks of ``gs-dfd train`` learn from.

Defocus comes from the layered disk-PSF model of ``gs-dfd synth`` with the
chosen camera preset (default nyu, 320 px wide, 5 focus distances).

    python tools/convert_rgbd_sets.py --src ../shared/data --out data_local/rgbd_stacks
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal


from gs_dfd.cli import run_tool
from gs_dfd.console import console
from gs_dfd.data.images import crop_border, read_image, resize_image, resize_nearest, to_channels
from gs_dfd.errors import GsDfdError
from gs_dfd.optics.presets import get_preset
from gs_dfd.synth.stack import StackSpec, read_depth_input, synthesize_scene
from gs_dfd.utils.outputs import atomic_output_dir

# name -> (rgb, depth-or-disparity file, kind, units scale, crop left top right bottom)
SOURCES = {
    # NYU frames carry a white border from undistortion; 8 6 8 6 removes it and keeps 4:3.
    "nyuv2_0045": ("nyuv2_sample/rgb_0045.png", "nyuv2_sample/depth_0045.png", "depth", 1e-4, (8, 6, 8, 6)),
    "middlebury_cones": ("middlebury_2001_2003/cones/im2.png", "middlebury_2001_2003/cones/disp2.png", "disparity", 0.25, None),
    "middlebury_teddy": ("middlebury_2001_2003/teddy/im2.png", "middlebury_2001_2003/teddy/disp2.png", "disparity", 0.25, None),
    "middlebury_venus": ("middlebury_2001_2003/venus/im2.png", "middlebury_2001_2003/venus/disp2.pgm", "disparity", 0.125, None),
    "middlebury_tsukuba": ("middlebury_2001_2003/tsukuba/im3.png", "middlebury_2001_2003/tsukuba/disp3.pgm", "disparity",
                           1 / 16, None),
}
# 645x432 -> the central 576x432 (4:3), like NYU's aspect ratio.
D3NET_CROP = (34, 0, 35, 0)


def d3net_source(scene_id: int) -> tuple[str, str, str, float, tuple[int, int, int, int]]:
    return (f"d3net_indoor_train/rgb_f8/{scene_id:03d}.jpg", f"d3net_indoor_train/depth_mm/{scene_id:03d}.png", "depth",
            1e-3, D3NET_CROP)


@dataclass
class ConvertRgbdConfig:
    """Make synthetic focal stacks (gs_dfd scenes) from the real RGB-D pairs of ../shared/data."""

    src: Path = Path("../shared/data")
    """The shared data folder (holds nyuv2_sample/ and middlebury_2001_2003/)."""
    out: Path = Path("data_local/rgbd_stacks")
    """Output folder: one scene per source, written atomically as a whole."""
    camera: Literal["nyu", "defocusnet", "d3net"] = "nyu"
    """Camera preset for the synthetic stacks."""
    width: int = 320
    """Output width in pixels (height keeps the aspect ratio)."""
    middlebury_depth_range_m: tuple[float, float] = (1.0, 4.0)
    """Depth range (near far, metres) that Middlebury's disparities are mapped onto."""
    noise_std: float = 0.0
    """Sensor noise of the synthetic frames (0 = none)."""
    focus_distances_m: tuple[float, ...] = ()
    """Focus distances of the frames, metres (default: the camera preset's)."""
    only: tuple[str, ...] = tuple(SOURCES)
    """Which of the named sources to convert (pass none with ``--only`` and no value)."""
    d3net_ids: tuple[int, ...] = ()
    """Also convert these scenes of d3net_indoor_train (f/8 image + depth), named ``d3net_rgbd_NNN``."""
    overwrite: bool = False
    """Replace the output folder if it exists."""


def convert_one(src: Path, name: str, out: Path, cfg: ConvertRgbdConfig) -> None:
    if name.startswith("d3net_rgbd_"):
        rgb_rel, depth_rel, kind, scale, crop = d3net_source(int(name.rsplit("_", 1)[1]))
    else:
        rgb_rel, depth_rel, kind, scale, crop = SOURCES[name]
    aif = read_image(src / rgb_rel, field="rgb")
    depth = read_depth_input(src / depth_rel, scale, kind,
                             cfg.middlebury_depth_range_m if kind == "disparity" else None)
    if crop is not None:
        aif, depth = crop_border(aif, crop), crop_border(depth, crop)
    height = round(aif.shape[0] * cfg.width / aif.shape[1])
    aif = to_channels(resize_image(aif, cfg.width, height), aif.shape[2])
    depth = resize_nearest(depth, cfg.width, height)
    spec = StackSpec.from_preset(get_preset(cfg.camera), cfg.focus_distances_m or None, noise_std=cfg.noise_std)
    out.mkdir(parents=True)
    synthesize_scene(out, aif, depth, spec)


def main(cfg: ConvertRgbdConfig) -> int:
    unknown = sorted(set(cfg.only) - set(SOURCES))
    if unknown:
        raise GsDfdError(f"--only: unknown source(s) {', '.join(unknown)}; choose from {', '.join(SOURCES)}")
    names = list(cfg.only) + [f"d3net_rgbd_{i:03d}" for i in cfg.d3net_ids]
    if not names:
        raise GsDfdError("nothing to convert: give --only and/or --d3net-ids")
    with atomic_output_dir(cfg.out, cfg.overwrite, [("--src", cfg.src)], Path(__file__).stem) as tmp:
        for name in console.progress(names, "rgbd stacks"):
            convert_one(cfg.src, name, tmp / name, cfg)
    console.print(f"wrote {len(names)} scenes to {cfg.out}")
    return 0


if __name__ == "__main__":
    run_tool(main, ConvertRgbdConfig)
