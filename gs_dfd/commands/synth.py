"""``gs-dfd synth``: write focal-stack scenes with a layered disk-PSF defocus model.

The defocus model (``gs_dfd.synth.layered``) is independent of the project's
Gaussian renderer on purpose: a fitter tested on data made by its own forward
model proves nothing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Optional, Union

import numpy as np
import tyro

from gs_dfd.console import console
from gs_dfd.data.images import crop_border, read_image, resize_image, resize_nearest, to_channels
from gs_dfd.errors import InputError
from gs_dfd.optics.presets import get_preset
from gs_dfd.synth.procedural import PROCEDURAL_KINDS, make_procedural_scene
from gs_dfd.synth.stack import StackSpec, read_depth_input, synthesize_scene
from gs_dfd.utils.atomic import write_json_atomic
from gs_dfd.utils.outputs import atomic_output_dir, check_output

CameraName = Literal["nyu", "defocusnet", "d3net"]


@dataclass(kw_only=True)
class _StackOptions:
    """Options shared by every synth kind."""

    out: Path
    """Output scene folder (written atomically: it appears complete or not at all)."""
    camera: CameraName = "nyu"
    """Camera preset: nyu (f 50 mm, N 8, 12 um pixels at 640 px, focus 1/1.5/2.5/4/6 m), defocusnet
    (f 2.9 mm, N 1, 256 px, focus 0.1/0.15/0.3/0.7/1.5 m) or d3net (f 35 mm, N 2.8, 36 um, focus 1.7 m).
    The pixel pitch scales with the output width (same sensor)."""
    focus_distances: Optional[tuple[float, ...]] = None
    """Focus distances in metres (default: the preset's list)."""
    f_numbers: Optional[tuple[float, ...]] = None
    """F-numbers; every focus distance is shot at each (an aperture stack, e.g. 2.8 8). Default: the preset's."""
    noise_std: float = 0.0
    """Sensor noise (standard deviation at mid-grey, signal-dependent plus read noise); 0 = none."""
    seed: int = 0
    """Random seed (scene content for procedural scenes, and the noise)."""
    bit_depth: Literal[8, 16] = 8
    """Bit depth of the written PNG frames."""
    depth_format: Literal["npy", "png16"] = "npy"
    """How depth_gt is stored: float32 .npy metres, or a 16-bit PNG with depth_gt_scale (smaller)."""
    max_layer_step_px: float = 0.25
    """Depth layering of the defocus model: most CoC difference (px) between neighbouring layers."""
    overwrite: bool = False
    """Replace the output folder if it exists."""
    progress: bool = True
    """Show a progress bar."""
    debug: bool = False
    """Show full tracebacks instead of one-line errors."""

    def spec(self) -> StackSpec:
        if not self.noise_std >= 0:
            raise InputError(None, f"must be >= 0 (got {self.noise_std})", "--noise-std")
        if not self.max_layer_step_px > 0:
            raise InputError(None, f"must be > 0 (got {self.max_layer_step_px})", "--max-layer-step-px")
        return StackSpec.from_preset(
            get_preset(self.camera), self.focus_distances, self.f_numbers, noise_std=self.noise_std,
            seed=self.seed, bit_depth=self.bit_depth, depth_format=self.depth_format,
            max_layer_step_px=self.max_layer_step_px,
        )


@dataclass(kw_only=True)
class SynthRgbdConfig(_StackOptions):
    """Turn an all-in-focus image plus its depth (or disparity) map into a focal stack."""

    rgb: Path
    """All-in-focus image (8- or 16-bit PNG or JPEG, gray or RGB)."""
    depth: Path
    """Depth map: PNG/PGM (integer units) or .npy; depth = value x --depth-scale metres (0 = unknown)."""
    depth_scale: float = 1.0
    """Metres per depth unit (NYU toolbox PNG: 1e-4, millimetre PNG: 1e-3). For --depth-kind disparity:
    disparity pixels per unit (Middlebury disp2.png: 0.25, .pgm: 0.125 or 0.0625)."""
    depth_kind: Literal["depth", "disparity"] = "depth"
    """Whether --depth holds depth or stereo disparity (inverse depth)."""
    disparity_depth_range_m: Optional[tuple[float, float]] = None
    """For disparity: map the valid disparities affinely in inverse depth onto this depth range (near far)."""
    baseline_focal_m_px: Optional[float] = None
    """For disparity: depth = baseline x focal / disparity (metres x pixels), instead of a range."""
    crop_px: Optional[tuple[int, int, int, int]] = None
    """Crop before resizing: left top right bottom, in input pixels (e.g. NYU's white border: 8 6 8 6)."""
    width: Optional[int] = None
    """Resize to this width (height follows the aspect ratio unless --height is given)."""
    height: Optional[int] = None
    """Resize to this height (width follows the aspect ratio unless --width is given)."""


@dataclass(kw_only=True)
class SynthProceduralConfig(_StackOptions):
    """Make scenes of our own: textured slanted planes, occluders in front of backgrounds, textureless patches."""

    kind: Literal["planes", "occlusion", "textureless", "mixed"] = "mixed"
    """Scene content."""
    width: int = 320
    """Image width in pixels."""
    height: int = 240
    """Image height in pixels."""
    min_depth_m: float = 0.6
    """Nearest depth in the scene (metres)."""
    max_depth_m: float = 4.0
    """Farthest depth in the scene (metres)."""
    count: int = 1
    """Number of scenes; with more than one, OUT holds scene_000, scene_001, ... with seeds seed, seed+1, ..."""


SynthConfig = Union[
    Annotated[SynthRgbdConfig, tyro.conf.subcommand("rgbd", prefix_name=False)],
    Annotated[SynthProceduralConfig, tyro.conf.subcommand("procedural", prefix_name=False)],
]


def _save_config(folder: Path, cfg: _StackOptions, **extra) -> None:
    """The resolved command next to the outputs, so a scene says how it was made."""
    import gs_dfd

    fields = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()}
    write_json_atomic(folder / "synth_config.json",
                      {"command": f"synth {'rgbd' if isinstance(cfg, SynthRgbdConfig) else 'procedural'}",
                       "gs_dfd_version": gs_dfd.__version__, **fields, **extra})


def _target_size(w0: int, h0: int, width: int | None, height: int | None) -> tuple[int, int]:
    for name, v in (("--width", width), ("--height", height)):
        if v is not None and v <= 0:
            raise InputError(None, f"must be > 0 (got {v})", name)
    if width is None and height is None:
        return w0, h0
    if width is None:
        return max(1, round(w0 * height / h0)), height
    if height is None:
        return width, max(1, round(h0 * width / w0))
    return width, height


def run_rgbd(cfg: SynthRgbdConfig) -> int:
    spec = cfg.spec()
    inputs = [("--rgb", cfg.rgb), ("--depth", cfg.depth)]
    check_output(cfg.out, kind="dir", inputs=inputs, overwrite=cfg.overwrite)
    aif = read_image(cfg.rgb, field="--rgb")
    depth = read_depth_input(cfg.depth, cfg.depth_scale, cfg.depth_kind, cfg.disparity_depth_range_m,
                             cfg.baseline_focal_m_px)
    if depth.shape != aif.shape[:2]:
        raise InputError(cfg.depth, f"depth is {depth.shape[1]}x{depth.shape[0]} but --rgb is "
                                    f"{aif.shape[1]}x{aif.shape[0]}", "--depth")
    if cfg.crop_px is not None:
        aif, depth = crop_border(aif, cfg.crop_px), crop_border(depth, cfg.crop_px)
    width, height = _target_size(aif.shape[1], aif.shape[0], cfg.width, cfg.height)
    aif = to_channels(resize_image(aif, width, height), aif.shape[2])
    depth = resize_nearest(depth, width, height)
    with atomic_output_dir(cfg.out, cfg.overwrite, inputs, "synth rgbd") as tmp:
        scene = synthesize_scene(tmp, aif, depth, spec, progress=cfg.progress)
        _save_config(tmp, cfg)
    _report(cfg.out, scene, depth)
    return 0


def run_procedural(cfg: SynthProceduralConfig) -> int:
    spec = cfg.spec()
    if cfg.count < 1:
        raise InputError(None, f"must be >= 1 (got {cfg.count})", "--count")
    if cfg.kind not in PROCEDURAL_KINDS:
        raise InputError(None, f"unknown kind {cfg.kind!r}; choose one of {', '.join(PROCEDURAL_KINDS)}", "--kind")
    if not 0 < cfg.min_depth_m < cfg.max_depth_m:
        raise InputError(None, f"need 0 < min < max (got {cfg.min_depth_m}, {cfg.max_depth_m})", "--min-depth-m")
    with atomic_output_dir(cfg.out, cfg.overwrite, command="synth procedural") as tmp:
        for k in console.progress(range(cfg.count), "scenes", enabled=cfg.progress and cfg.count > 1):
            seed = cfg.seed + k
            aif, depth = make_procedural_scene(cfg.kind, cfg.width, cfg.height, seed, cfg.min_depth_m, cfg.max_depth_m)
            folder = tmp if cfg.count == 1 else tmp / f"scene_{k:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            scene = synthesize_scene(folder, aif, depth, dataclasses.replace(spec, seed=seed),
                                     progress=cfg.progress and cfg.count == 1)
            _save_config(folder, cfg, seed_used=seed)
    _report(cfg.out, scene, depth, cfg.count)
    return 0


def _report(out: Path, scene, depth: np.ndarray, count: int = 1) -> None:
    valid = depth[depth > 0]
    what = f"{count} scenes" if count > 1 else "scene"
    console.print(f"wrote {what} to {out}: {scene.camera.width}x{scene.camera.height}, {len(scene.frames)} frames, "
                  f"depth {valid.min():.2f}-{valid.max():.2f} m")
    console.print(f"next: gs-dfd check --scene {out if count == 1 else out / 'scene_000'} --preview stack.png")


def run(cfg: SynthRgbdConfig | SynthProceduralConfig) -> int:
    return run_rgbd(cfg) if isinstance(cfg, SynthRgbdConfig) else run_procedural(cfg)


@dataclass
class SynthCommand:
    """Write synthetic focal-stack scenes (gs_dfd.scene/1) with a layered disk-PSF defocus model."""

    kind: tyro.conf.OmitSubcommandPrefixes[SynthConfig]
