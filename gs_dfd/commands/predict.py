"""``gs-dfd predict``: depth and CoC from ONE defocused image.

Forms: a frame of a scene (camera and focus from scene.json; a folder of
scenes gives one prediction per scene, the layout ``gs-dfd eval --predictions``
reads), an image with a camera preset and focus distance, or a folder of such
images. ``--pair-frame`` adds a second frame of the scene as the siamese pair. Each
input gets ``depth.npy`` (float32 metres, the image's size), ``coc.npy``
(float32 pixels), PNGs, ``image.png`` and ``camera.json`` (so ``gs-dfd
export --predict`` can back-project it), and ``prediction.json``; a d3net
model adds ``uncertainty.npy`` (float32 metres: the per-pixel std of depth
over ``--mc-samples`` Monte-Carlo dropout passes) and ``uncertainty.png``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np

from gs_dfd.console import console
from gs_dfd.data.images import image_megapixels, read_image, write_png
from gs_dfd.data.scene import Camera, load_scene
from gs_dfd.errors import InputError
from gs_dfd.export.camera_json import write_camera_json
from gs_dfd.optics.presets import PRESETS, get_preset
from gs_dfd.optics.thin_lens import LensError, ThinLens
from gs_dfd.utils.atomic import save_npy_atomic, write_json_atomic
from gs_dfd.utils.outputs import OutputDir
from gs_dfd.viz.colormap import coc_to_rgb, colorize, depth_to_rgb
from gs_dfd.viz.panels import save_panel

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class PredictConfig:
    """Predict depth from one defocused image with a trained model; the checkpoint's method decides the network:
    gs-siamese/dered: DefocusNet -> CoC map -> DepthNet (with the lens) -> depth; d3net: depth with Monte-Carlo
    dropout uncertainty (also writes uncertainty.npy/png); mddnet: depth and CoC decoders."""

    out: Path
    """Output folder (one sub-folder per image when --image is a folder)."""
    scene: Optional[Path] = None
    """Scene folder: predict frame --frame with the scene's camera and that frame's focus distance. A folder of
    scene folders predicts every scene into OUT/<scene name>/."""
    frame: int = 0
    """Frame index within --scene."""
    pair_frame: Optional[int] = None
    """Also read this frame of --scene (the siamese pair; two focus distances or apertures): where the two CoC
    maps agree on one thin-lens depth that depth, else the geometric mean of both branches; each frame weighs
    by the precision of its CoC, so of an f/2.8 + f/8 pair the f/2.8 frame counts about 8x."""
    image: Optional[Path] = None
    """An image file, or a folder of .png/.jpg images (needs --camera and --focus-distance-m)."""
    camera: Optional[Literal[tuple(PRESETS)]] = None  # type: ignore[valid-type]
    """Camera preset of --image (nyu, defocusnet, d3net); intrinsics and pixel pitch scale with the width."""
    focus_distance_m: Optional[float] = None
    """Focus distance of --image, metres."""
    f_number: Optional[float] = None
    """Override the preset's f-number for --image (e.g. 2.8 for the d3net f/2.8 photographs)."""
    checkpoint: Optional[Path] = None
    """Model weights (RUN/model.pt or RUN/checkpoint.pt); default: the pretrained weights shipped in the package."""
    mc_samples: Optional[int] = None
    """Monte-Carlo dropout passes per image for models trained with dropout (d3net; default 8): depth is their
    mean, uncertainty.npy their per-pixel std (metres); 1 = dropout off (std 0). Ignored, with a note, by
    methods without dropout."""
    max_megapixels: float = 8.0
    """Refuse --image photos larger than this (the networks take about half a GB of memory per megapixel);
    downsize the photo first (the lens scale follows the width), or raise the limit."""
    overwrite: bool = False
    """Replace OUT if it is an earlier gs-dfd output (never anything else)."""
    progress: bool = True
    """Show a progress bar over the images of a folder."""
    debug: bool = False
    """Show tracebacks instead of one-line errors."""


@dataclass
class _Input:
    name: str
    image: np.ndarray
    camera: Camera
    lens: ThinLens
    world_to_cam: np.ndarray
    source: str
    pair: tuple[np.ndarray, ThinLens] | None = None


def _scene_input(folder: Path, name: str, cfg: PredictConfig) -> _Input:
    scene = load_scene(folder, check_files=False)  # prediction reads the frames it needs, never depth_gt
    for k, flag in ((cfg.frame, "--frame"), (cfg.pair_frame, "--pair-frame")):
        if k is not None and not 0 <= k < len(scene.frames):
            raise InputError(scene.json_path, f"has {len(scene.frames)} frames; {flag} {k} is out of range", flag)
    if cfg.pair_frame == cfg.frame:
        raise InputError(None, "--pair-frame must differ from --frame", "--pair-frame")
    img = scene.load_frame(cfg.frame)
    pair = None
    if cfg.pair_frame is not None:
        k = cfg.pair_frame
        pair = (scene.load_frame(k), scene.lens(k))
        if scene.world_to_cam(k).tolist() != scene.world_to_cam(cfg.frame).tolist():
            raise InputError(scene.json_path, "--pair-frame must share --frame's world_to_cam (one view)", "--pair-frame")
    source = f"{folder} frame {cfg.frame}" + (f" + frame {cfg.pair_frame}" if pair else "")
    return _Input(name=name, image=img, camera=scene.camera, lens=scene.lens(cfg.frame),
                  world_to_cam=scene.world_to_cam(cfg.frame), source=source, pair=pair)


def _inputs(cfg: PredictConfig) -> list[_Input]:
    if (cfg.scene is None) == (cfg.image is None):
        raise InputError(None, "give exactly one of --scene DIR or --image IMG|DIR", "--scene/--image")
    if cfg.scene is not None:
        if cfg.camera or cfg.focus_distance_m or cfg.f_number:
            raise InputError(None, "--camera/--focus-distance-m/--f-number are for --image; a scene has its own",
                             "--camera")
        if cfg.scene.is_dir() and not (cfg.scene / "scene.json").exists():
            subs = sorted(p for p in cfg.scene.iterdir() if (p / "scene.json").is_file())
            if not subs:
                raise InputError(cfg.scene, "neither a scene (no scene.json) nor a folder of scenes", "--scene")
            return [_scene_input(p, p.name, cfg) for p in subs]
        return [_scene_input(cfg.scene, "", cfg)]
    if cfg.pair_frame is not None:
        raise InputError(None, "--pair-frame needs --scene (the pair's lenses come from scene.json)", "--pair-frame")
    if cfg.camera is None or cfg.focus_distance_m is None:
        raise InputError(cfg.image, "--image needs --camera PRESET and --focus-distance-m D", "--camera")
    preset = get_preset(cfg.camera)
    f_number = preset.f_number if cfg.f_number is None else cfg.f_number
    try:  # the thin lens's own rules, checked once before any image is read, reported against the flags
        preset.lens(cfg.focus_distance_m, f_number)
    except LensError as exc:
        raise InputError(None, f"{exc} (--camera {cfg.camera})", "--focus-distance-m/--f-number") from None
    if cfg.image.is_dir():
        files = sorted(p for p in cfg.image.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise InputError(cfg.image, "folder holds no .png/.jpg image", "--image")
        stems: dict[str, Path] = {}
        for f in files:  # each image writes OUT/<stem>/
            if f.stem in stems:
                raise InputError(f, f"has the same name as {stems[f.stem].name}: both would write "
                                    f"{cfg.out / f.stem}; rename one", "--image")
            stems[f.stem] = f
    elif cfg.image.is_file():
        files = [cfg.image]
    else:
        raise InputError(cfg.image, "image not found", "--image")
    for f in files:  # every image's size, from its header, before any is decoded
        mp = image_megapixels(f, field="--image")
        if mp > cfg.max_megapixels:
            raise InputError(f, f"is {mp:.1f} megapixels, over --max-megapixels {cfg.max_megapixels:g}: downsize it "
                                f"or raise the limit", "--image")
    inputs = []
    for f in files:
        img = read_image(f, field="--image")
        h, w = img.shape[:2]
        camera = Camera(width=w, height=h, **preset.intrinsics(w, h), focal_length_m=preset.focal_length_m,
                        f_number=f_number, pixel_pitch_m=preset.pixel_pitch_at(w))
        lens = camera.lens(cfg.focus_distance_m)
        inputs.append(_Input(name=f.stem if len(files) > 1 or cfg.image.is_dir() else "", image=img, camera=camera,
                             lens=lens, world_to_cam=np.eye(4), source=str(f)))
    return inputs


def _write(out: Path, item: _Input, pred, predictor, checkpoint_label: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_npy_atomic(out / "depth.npy", pred.depth_m)
    save_npy_atomic(out / "coc.npy", pred.coc_px)
    lo, hi = np.percentile(pred.depth_m, [2, 98])
    depth_rgb = depth_to_rgb(pred.depth_m, float(lo), float(hi))
    coc_rgb = coc_to_rgb(pred.coc_px)
    write_png(out / "depth.png", depth_rgb)
    write_png(out / "coc.png", coc_rgb)
    write_png(out / "image.png", item.image)
    write_camera_json(out / "camera.json", item.camera, item.world_to_cam)
    write_json_atomic(out / "prediction.json", {
        "source": item.source, "checkpoint": checkpoint_label, "method": predictor.method,
        "lens": {"focal_length_m": item.lens.focal_length_m, "f_number": item.lens.f_number,
                 "focus_distance_m": item.lens.focus_distance_m, "pixel_pitch_m": item.lens.pixel_pitch_m},
        "model_seconds": pred.model_seconds, "depth_range_m": [float(pred.depth_m.min()), float(pred.depth_m.max())],
        "coc_source": pred.coc_source, "mc_samples": pred.mc_samples,
        **({"uncertainty_median_m": float(np.median(pred.uncertainty_m))} if pred.uncertainty_m is not None else {}),
    })
    tiles, titles = [item.image, coc_rgb, depth_rgb], ["input", f"CoC (px, max {pred.coc_px.max():.1f})",
                                                       f"depth {lo:.2f}-{hi:.2f} m"]
    if pred.uncertainty_m is not None:
        save_npy_atomic(out / "uncertainty.npy", pred.uncertainty_m)
        u_hi = max(float(np.percentile(pred.uncertainty_m, 98)), 1e-6)
        unc_rgb = colorize(pred.uncertainty_m, 0.0, u_hi, cmap="viridis")
        write_png(out / "uncertainty.png", unc_rgb)
        tiles.append(unc_rgb)
        titles.append(f"std of depth (m, {pred.mc_samples} MC passes; max {pred.uncertainty_m.max():.2f})")
    save_panel(out / "panel.png", tiles, titles, columns=len(tiles),
               suptitle=f"gs-dfd predict ({predictor.method}): focus {item.lens.focus_distance_m:g} m, "
                        f"f/{item.lens.f_number:g}")


def _output(cfg: PredictConfig) -> OutputDir:
    return OutputDir(cfg.out, command="predict", overwrite=cfg.overwrite,
                     inputs=[("--scene", cfg.scene), ("--image", cfg.image), ("--checkpoint", cfg.checkpoint)])


def run(cfg: PredictConfig) -> int:
    from gs_dfd.infer.predictor import Predictor

    if cfg.mc_samples is not None and cfg.mc_samples < 1:
        raise InputError(None, f"must be >= 1 (got {cfg.mc_samples})", "--mc-samples")
    if not (cfg.max_megapixels > 0 and np.isfinite(cfg.max_megapixels)):
        raise InputError(None, f"must be a finite number > 0 (got {cfg.max_megapixels})", "--max-megapixels")
    output = _output(cfg)
    output.check()  # before any image is read or the model loaded
    inputs = _inputs(cfg)
    predictor = Predictor(cfg.checkpoint)
    label = str(cfg.checkpoint) if cfg.checkpoint else f"shipped:{predictor.path.name}"
    console.print(f"loaded {label} ({predictor.method}) in {predictor.load_seconds * 1000:.0f} ms")
    if cfg.mc_samples is not None and not predictor.uses_dropout:
        console.print(f"note: --mc-samples ignored: a {predictor.method} model has no dropout (one pass per image)")
    times = []
    t0 = time.perf_counter()
    with output as work:
        tmp = work.path
        for item in console.progress(inputs, "predict", enabled=cfg.progress and len(inputs) > 1):
            pred = (predictor.predict_pair((item.image, item.pair[0]), (item.lens, item.pair[1]), cfg.mc_samples)
                    if item.pair else predictor.predict(item.image, item.lens, cfg.mc_samples))
            times.append(pred.model_seconds)
            _write(tmp / item.name if item.name else tmp, item, pred, predictor, label)
    console.print(f"predicted {len(inputs)} image(s) in {time.perf_counter() - t0:.1f} s "
                  f"(model {np.median(times) * 1000:.0f} ms median per image) -> {cfg.out}")
    return 0
