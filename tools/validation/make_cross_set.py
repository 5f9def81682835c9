#!/usr/bin/env python
"""Build the cross-synthesis validation set: real RGB-D, defocused by tools/validation/cross_synth.py.

VALIDATION ONLY. The frames are made by a synthesiser that shares no code with ``gs_dfd.synth`` (the one that
made every training stack), so a network's score here measures how well it transfers to a defocus model it was
not trained on (issue #28). Never train on these scenes.

Two variants of the same recipe:

* ``--variant training-ids`` (the default): the 60 d3net_indoor_train ids that the shipped weights' training
  set uses (id % 4 != 0; ``tools/make_training_set.py --all-d3net-ids``). **Select recipes on this variant.**
  The network has seen these RGB-D images, but only as stacks of our own synthesiser, so what it measures is the
  transfer across defocus models, and selecting on it leaves the held-out images untouched.
* ``--variant heldout``: the RGB-D that no training set contains, the same 26 scenes as the project's held-out
  synthetic stacks (``tools/benchmark.py`` HELD_OUT_IDS, README "Results"): d3net_indoor_train ids 0, 4, ..., 80
  (f/8 image, near all-in-focus, + Xtion depth), nyuv2_0045 and Middlebury cones, teddy, tsukuba, venus.
  **Report on it; never select recipes on it**: every look at it for a decision makes it less held out.

Geometry (the same as ``tools/convert_rgbd_sets.py``'s, written independently, so that the ground truth matches
the project's held-out stacks pixel for pixel and the two sets differ only in the defocus synthesis):
NYUv2 loses its white undistortion border (8, 6, 8, 6 px left, top, right, bottom: 624x468), D3Net its 3:2 sides
(34 left, 35 right: 576x432, 4:3), Middlebury is kept whole; then the image is resized to 320 px wide (height by
the aspect ratio: 240 for the 4:3 sources, 267 cones/teddy, 282 venus), RGB with Pillow's Lanczos filter, depth by
nearest neighbour at pixel centres (holes stay holes: 0 = no ground truth). Middlebury disparities (value / 4,
/ 8 for venus, / 16 for tsukuba; 0 = unknown) are mapped affinely in inverse depth onto 1-4 m (largest
disparity -> 1 m, smallest -> 4 m). NYUv2 depth = value / 10000 m, D3Net depth = value / 1000 m.

Camera: the ``nyu`` preset (f = 50 mm, f/8, 12 um pixels at 640 px, so 24 um at 320 px), frame 0 focused at 1 m,
frame 1 at 1.5 m (``--focus-distances-m``), as scene.json states; cross_synth renders each frame with a few %
misfocus, and everything drawn is in each scene's ``synth_config.json``.

    python tools/validation/make_cross_set.py build --src ../shared/data --out /tmp/xval/cross_train
    python tools/validation/make_cross_set.py build --variant heldout --src ../shared/data --out /tmp/xval/cross
    python tools/validation/make_cross_set.py baselines --scenes /tmp/xval/cross --out /tmp/xval/base_cross
    gs-dfd predict --scene /tmp/xval/cross --frame 0 --out /tmp/xval/pred_cross
    gs-dfd eval --scenes /tmp/xval/cross --predictions /tmp/xval/pred_cross --out /tmp/xval/eval_cross \
        --min-depth 0.5 --max-depth 4

``baselines`` writes two depth-free predictions for a set, to score with ``gs-dfd eval``: ``constant/`` (the one
depth, the same for every scene, that minimises the set's per-scene-averaged AbsRel given the ground truth: an
oracle-ish constant, since it is chosen with the answers) and ``median/`` (each scene the median of its own valid
ground truth in the evaluation range: a per-scene oracle).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

_HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("cross_synth", _HERE / "cross_synth.py")
cross_synth = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("cross_synth", cross_synth)
_spec.loader.exec_module(cross_synth)

D3NET_COUNT = 81  # d3net_indoor_train ids 0-80
HELDOUT_D3NET_IDS = tuple(range(0, D3NET_COUNT, 4))  # 21 ids: never in any training set
TRAINING_D3NET_IDS = tuple(i for i in range(D3NET_COUNT) if i % 4)  # 60 ids: the shipped weights' stage 2
MIDDLEBURY_RANGE_M = (1.0, 4.0)

# name -> (rgb, depth or disparity, kind, scale to metres or pixels, crop left top right bottom)
NAMED_SOURCES = {
    "nyuv2_0045": ("nyuv2_sample/rgb_0045.png", "nyuv2_sample/depth_0045.png", "depth", 1e-4, (8, 6, 8, 6)),
    "middlebury_cones": ("middlebury_2001_2003/cones/im2.png", "middlebury_2001_2003/cones/disp2.png",
                         "disparity", 1 / 4, (0, 0, 0, 0)),
    "middlebury_teddy": ("middlebury_2001_2003/teddy/im2.png", "middlebury_2001_2003/teddy/disp2.png",
                         "disparity", 1 / 4, (0, 0, 0, 0)),
    "middlebury_tsukuba": ("middlebury_2001_2003/tsukuba/im3.png", "middlebury_2001_2003/tsukuba/disp3.pgm",
                           "disparity", 1 / 16, (0, 0, 0, 0)),
    "middlebury_venus": ("middlebury_2001_2003/venus/im2.png", "middlebury_2001_2003/venus/disp2.pgm",
                         "disparity", 1 / 8, (0, 0, 0, 0)),
}
D3NET_CROP = (34, 0, 35, 0)  # 645x432 -> 576x432


def d3net_name(i: int) -> str:
    return f"d3net_rgbd_{i:03d}"  # the name the project's held-out stacks use, so per-scene rows line up


def source_of(name: str):
    if name.startswith("d3net_rgbd_"):
        i = int(name.rsplit("_", 1)[1])
        return (f"d3net_indoor_train/rgb_f8/{i:03d}.jpg", f"d3net_indoor_train/depth_mm/{i:03d}.png", "depth", 1e-3,
                D3NET_CROP)
    return NAMED_SOURCES[name]


def load_rgbd(src: Path, name: str, width: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """All-in-focus sRGB [H, W, 3] float in [0, 1] and depth [H, W] metres (0 = unknown) at ``width``."""
    rgb_rel, depth_rel, kind, scale, (left, top, right, bottom) = source_of(name)
    rgb_path, depth_path = src / rgb_rel, src / depth_rel
    for p in (rgb_path, depth_path):
        if not p.is_file():
            raise SystemExit(f"error: {p}: not found (is --src the shared data folder?)")
    with Image.open(rgb_path) as im:
        rgb = im.convert("RGB")
    with Image.open(depth_path) as im:
        raw = np.asarray(im).astype(np.float64)
    if raw.ndim == 3:
        raw = raw[..., 0]
    w0, h0 = rgb.size
    if raw.shape != (h0, w0):
        raise SystemExit(f"error: {depth_path}: size {raw.shape[::-1]} differs from the image's {(w0, h0)}")
    rgb = rgb.crop((left, top, w0 - right, h0 - bottom))
    raw = raw[top:h0 - bottom, left:w0 - right]
    values = raw * scale
    valid = values > 0
    if kind == "depth":
        depth = np.where(valid, values, 0.0)
    else:  # disparity ~ inverse depth, no metric calibration: map it affinely onto [1/far, 1/near]
        near, far = MIDDLEBURY_RANGE_M
        lo, hi = values[valid].min(), values[valid].max()
        inv = 1.0 / far + (values - lo) / max(hi - lo, 1e-12) * (1.0 / near - 1.0 / far)
        depth = np.where(valid, 1.0 / np.where(valid, inv, 1.0), 0.0)
    cw, ch = rgb.size
    height = round(ch * width / cw)
    rgb = rgb.resize((width, height), Image.LANCZOS)
    rows = np.minimum(((np.arange(height) + 0.5) * ch / height).astype(int), ch - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * cw / width).astype(int), cw - 1)
    depth = depth[rows[:, None], cols[None, :]]
    info = {"name": name, "rgb": rgb_rel, "depth": depth_rel, "kind": kind, "scale": scale,
            "crop_ltrb": [left, top, right, bottom], "size": [width, height]}
    if kind == "disparity":
        info["disparity_to_depth_range_m"] = list(MIDDLEBURY_RANGE_M)
    return np.asarray(rgb, dtype=np.float32) / 255.0, depth.astype(np.float32), info


def scene_names(variant: str, d3net_ids: list[int] | None, only: list[str] | None) -> list[str]:
    if variant == "heldout":
        ids = list(HELDOUT_D3NET_IDS) if d3net_ids is None else d3net_ids
        named = list(NAMED_SOURCES) if only is None else only
        bad = [i for i in ids if i not in HELDOUT_D3NET_IDS]
        if bad:
            raise SystemExit(f"error: --d3net-ids {bad} are training ids (id % 4 != 0), not held out")
        unknown = [n for n in named if n not in NAMED_SOURCES]
        if unknown:
            raise SystemExit(f"error: --only: unknown {unknown}; choose from {', '.join(NAMED_SOURCES)}")
    else:
        ids = list(TRAINING_D3NET_IDS) if d3net_ids is None else d3net_ids
        bad = [i for i in ids if i not in TRAINING_D3NET_IDS]
        if bad:
            raise SystemExit(f"error: --d3net-ids {bad} are held out (id % 4 == 0) or out of 0-80: "
                             "the training-ids variant takes only ids the training set uses")
        if only:
            raise SystemExit("error: --only names held-out sources; the training-ids variant has only d3net ids")
        named = []
    names = sorted(named) + [d3net_name(i) for i in sorted(set(ids))]
    if not names:
        raise SystemExit("error: no scene selected")
    return names


def build(args: argparse.Namespace) -> int:
    from gs_dfd.utils.outputs import atomic_output_dir

    names = scene_names(args.variant, args.d3net_ids, args.only)
    effects = [e for e in cross_synth.EFFECTS if e not in set(args.disable)]
    src = Path(args.src)
    t_start = time.time()
    with atomic_output_dir(Path(args.out), args.overwrite, [("--src", src)], "make_cross_set") as tmp:
        for k, name in enumerate(names):
            t0 = time.time()
            aif, depth, info = load_rgbd(src, name, args.width)
            camera = cross_synth.NominalCamera.from_preset(aif.shape[1], aif.shape[0], "nyu")
            (tmp / name).mkdir()
            cross_synth.write_cross_scene(tmp / name, aif, depth, camera, args.focus_distances_m, args.seed, name,
                                          effects, source=info, photons_at_white=tuple(args.photons_at_white),
                                          read_sigma=tuple(args.read_sigma))
            print(f"[{k + 1}/{len(names)}] {name} {aif.shape[1]}x{aif.shape[0]} {time.time() - t0:.1f} s", flush=True)
        manifest = {"format": "gs_dfd.cross_set/1", "purpose": "validation only: never train on these scenes",
                    "variant": args.variant, "seed": args.seed, "width": args.width,
                    "focus_distances_m": list(args.focus_distances_m), "effects": effects,
                    "disabled": list(args.disable), "photons_at_white": list(args.photons_at_white),
                    "read_sigma": list(args.read_sigma), "scenes": names, "argv": sys.argv[1:]}
        (tmp / "cross_set.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {len(names)} scenes ({args.variant}) to {args.out} in {time.time() - t_start:.0f} s")
    return 0


def best_constant(depths: list[np.ndarray]) -> float:
    """The constant c minimising mean over scenes of mean over pixels |c - g| / g: the weighted median of all g
    with weights 1 / (g * pixels of its scene) (the objective is convex and piecewise linear in c)."""
    g = np.concatenate(depths)
    wts = np.concatenate([1.0 / (d * d.size) for d in depths])
    order = np.argsort(g)
    cum = np.cumsum(wts[order])
    return float(g[order][np.searchsorted(cum, 0.5 * cum[-1])])


def baselines(args: argparse.Namespace) -> int:
    from gs_dfd.data.scene import load_scene

    root = Path(args.scenes)
    scenes = sorted(p.parent for p in root.glob("*/scene.json"))
    if not scenes:
        raise SystemExit(f"error: {root}: no scene folders")
    gts, shapes, medians = {}, {}, {}
    for s in scenes:
        gt = load_scene(s).load_depth_gt()
        ok = np.isfinite(gt) & (gt >= args.min_depth) & (gt <= args.max_depth)
        gts[s.name] = gt[ok].astype(np.float64)
        shapes[s.name] = gt.shape
        medians[s.name] = float(np.median(gts[s.name]))
    c = best_constant(list(gts.values()))
    out = Path(args.out)
    for kind in ("constant", "median"):
        (out / kind).mkdir(parents=True, exist_ok=args.overwrite)
    for name, shape in shapes.items():
        np.save(out / "constant" / f"{name}.npy", np.full(shape, c, np.float32))
        np.save(out / "median" / f"{name}.npy", np.full(shape, medians[name], np.float32))
    summary = {"scenes": str(root), "range_m": [args.min_depth, args.max_depth], "best_constant_m": c,
               "per_scene_median_m": medians}
    (out / "baselines.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"best constant {c:.4f} m; per-scene medians {min(medians.values()):.3f}-{max(medians.values()):.3f} m; "
          f"wrote {out}/constant and {out}/median")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="See the module docstring.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write the cross-synthesis scenes")
    b.add_argument("--src", default="../shared/data", help="the shared data folder")
    b.add_argument("--out", required=True, help="output folder (one scene per sub-folder), written atomically")
    b.add_argument("--variant", choices=("training-ids", "heldout"), default="training-ids",
                   help="training-ids: select recipes on it; heldout: report only (default training-ids)")
    b.add_argument("--d3net-ids", type=int, nargs="*", default=None, help="a subset of the variant's d3net ids")
    b.add_argument("--only", nargs="*", default=None, help="heldout: a subset of the named (non-d3net) sources")
    b.add_argument("--focus-distances-m", type=float, nargs="+", default=[1.0, 1.5])
    b.add_argument("--width", type=int, default=320)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--disable", nargs="*", default=[], choices=cross_synth.EFFECTS,
                   help="switch effects off (ablations)")
    b.add_argument("--photons-at-white", type=float, nargs=2, metavar=("LO", "HI"),
                   default=list(cross_synth.PHOTONS_AT_WHITE),
                   help="shot noise: photo-electrons at white, log-uniform in [LO, HI] (equal: fixed)")
    b.add_argument("--read-sigma", type=float, nargs=2, metavar=("LO", "HI"), default=list(cross_synth.READ_SIGMA),
                   help="read noise std, fraction of white, uniform in [LO, HI]")
    b.add_argument("--overwrite", action="store_true")
    b.set_defaults(func=build)
    c = sub.add_parser("baselines", help="constant and per-scene-median predictions of a set, for gs-dfd eval")
    c.add_argument("--scenes", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--min-depth", type=float, default=0.5)
    c.add_argument("--max-depth", type=float, default=4.0)
    c.add_argument("--overwrite", action="store_true")
    c.set_defaults(func=baselines)
    args = ap.parse_args(argv)
    from gs_dfd.cli import run_guarded

    return run_guarded(args.func, args)  # bad input: one line, exit 2, no traceback


if __name__ == "__main__":
    sys.exit(main())
