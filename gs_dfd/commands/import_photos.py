"""``gs-dfd import``: a folder (or list) of photos -> a ``gs_dfd.scene/1`` scene.

Each optical value comes from a flag if given, else from the photos' EXIF, else the command stops with a
one-line error naming the flag to pass: a scene with a made-up focal length would fit a wrong depth without a
word. Focus distances alone may be left unknown (``--focus-unknown``): they are then spaced over an assumed
range and marked "assumed", and depth from the scene is relative (inverse depth up to an affine map). The
scene's ``"source"`` records where every value came from.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Literal, Optional

import tyro

from gs_dfd.console import console
from gs_dfd.data.images import resize_image, write_png
from gs_dfd.data.photos import (
    PhotoInfo, collect_photos, exiftool_focus_distances, find_duplicate_content, focus_sweep_m, probe_photo,
    read_photo,
)
from gs_dfd.data.scene import SCENE_FILE, Camera, Frame, Scene, load_scene
from gs_dfd.errors import InputError
from gs_dfd.optics.thin_lens import LensError, check_lens
from gs_dfd.utils.atomic import write_json_atomic
from gs_dfd.utils.outputs import OutputDir

FIELD = "PHOTOS"
ASSUMED_RANGE_FOCAL_LENGTHS = (20.0, 200.0)  # --focus-unknown without a range: 20 f .. 200 f (1-10 m at 50 mm)
INFINITY_FOCUS_M = 1000.0  # EXIF "infinity": a finite stand-in (1/s = 0.001 dioptre, below any blur it makes)
_SAME = 0.005  # EXIF values within 0.5 % are one setting (rounding of rationals)


@dataclass
class ImportConfig:
    """Turn photos of one view (a focus sweep, or an aperture pair) into a gs_dfd.scene/1 scene: frames as PNG in
    focus order (nearest focus first; 16-bit when the photos are), the camera from flags or EXIF, and
    scene.json's "source" saying where each value came from. For each value: the flag if given, else the
    photos' EXIF, else a one-line error naming the flag to pass."""

    photos: Annotated[tuple[Path, ...], tyro.conf.Positional, tyro.conf.arg(metavar="PHOTO [PHOTO ...]")]
    """One folder (its .jpg/.jpeg/.png/.tif/.tiff files in natural name order, img2 before img10; other files
    and sub-folders are skipped with a note) or photo files in the order given. RAW files: convert to 16-bit
    TIFF first."""
    out: Path
    """Output scene folder (written whole: it appears complete or not at all)."""
    focal_length_mm: Optional[float] = None
    """Lens focal length in mm (default: EXIF FocalLength)."""
    f_number: Optional[float] = None
    """F-number of every photo (default: EXIF FNumber)."""
    f_numbers: Optional[tuple[float, ...]] = None
    """One f-number per photo, in input order: an aperture stack (e.g. an f/2.8 + f/8 pair at one focus). Each
    frame records its own."""
    pixel_pitch_um: Optional[float] = None
    """Pixel pitch of the photos as given, in micrometres (default: EXIF FocalPlaneXResolution, else the sensor
    size implied by FocalLengthIn35mmFilm). Scaled with --max-size."""
    sensor_width_mm: Optional[float] = None
    """Instead of --pixel-pitch-um: the sensor width in mm that the photos' width covers."""
    focus_distances_m: Optional[tuple[float, ...]] = None
    """One focus distance (metres) per photo, in input order (default: EXIF maker notes via exiftool, else
    SubjectDistance)."""
    focus_range_m: Optional[tuple[float, float]] = None
    """Nearest and farthest focus of the sweep (metres), a guess when --focus-unknown is given too: the photos are
    spaced evenly in inverse distance between them (see --focus-spacing) in the order --focus-order gives; gs-dfd
    fit then keeps the two ends and learns where the focus of each photo between them lies."""
    focus_spacing: Literal["inverse", "linear"] = "inverse"
    """How --focus-range-m / --focus-unknown space the photos: evenly in 1/distance (a focus ring's steps) or in
    distance."""
    focus_order: Literal["near-to-far", "far-to-near"] = "near-to-far"
    """How the input order runs through focus; used with --focus-range-m or --focus-unknown, when no distances
    are known."""
    focus_unknown: bool = False
    """No focus distances are known: space them over --focus-range-m if given, else 20-200 focal lengths, and mark
    them "assumed". Depth from such a scene is relative, not metric."""
    max_size: int = 1024
    """Longest side of the written frames in pixels (anti-aliased downsizing; pixel pitch and intrinsics follow);
    0 keeps the photos' size."""
    overwrite: bool = False
    """Replace OUT if it is an earlier gs-dfd output (never anything else)."""
    progress: bool = True
    """Show a progress bar while writing frames."""
    debug: bool = False
    """Show full tracebacks instead of one-line errors."""


@dataclass
class _Optics:
    focal_length_m: float
    f_numbers: list[float]  # per photo, input order
    pixel_pitch_m: float  # at the photos' size
    focus_m: list[float]  # per photo, input order
    sources: dict[str, str]
    notes: list[str]


# --------------------------------------------------------------------------- flags


def _positive(value: float | None, flag: str) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise InputError(None, f"must be a finite number > 0 (got {value})", flag)


def _check_flags(cfg: ImportConfig) -> None:
    """Every flag on its own and against the others, before any file is read."""
    for value, flag in ((cfg.focal_length_mm, "--focal-length-mm"), (cfg.f_number, "--f-number"),
                        (cfg.pixel_pitch_um, "--pixel-pitch-um"), (cfg.sensor_width_mm, "--sensor-width-mm")):
        _positive(value, flag)
    for values, flag in ((cfg.f_numbers, "--f-numbers"), (cfg.focus_distances_m, "--focus-distances-m"),
                         (cfg.focus_range_m, "--focus-range-m")):
        for v in values or ():
            _positive(v, flag)
        if values is not None and not values:
            raise InputError(None, "needs at least one value", flag)
    if cfg.focus_range_m is not None and not cfg.focus_range_m[0] < cfg.focus_range_m[1]:
        raise InputError(None, f"needs NEAR < FAR (got {cfg.focus_range_m[0]:g} {cfg.focus_range_m[1]:g})",
                         "--focus-range-m")
    if cfg.max_size < 0 or (0 < cfg.max_size < 8):
        raise InputError(None, f"must be 0 (keep the size) or at least 8 pixels (got {cfg.max_size})", "--max-size")
    pairs = (("--pixel-pitch-um", cfg.pixel_pitch_um, "--sensor-width-mm", cfg.sensor_width_mm),
             ("--f-number", cfg.f_number, "--f-numbers", cfg.f_numbers),
             ("--focus-distances-m", cfg.focus_distances_m, "--focus-range-m", cfg.focus_range_m))
    for a, va, b, vb in pairs:
        if va is not None and vb is not None:
            raise InputError(None, f"give {a} or {b}, not both", b)
    if cfg.focus_distances_m is not None and cfg.focus_unknown:
        raise InputError(None, "--focus-distances-m gives the focus distances: drop --focus-unknown", "--focus-unknown")
    if cfg.focus_distances_m is not None and cfg.focus_order != "near-to-far":
        raise InputError(None, "--focus-distances-m already gives the order: --focus-order is for --focus-range-m "
                               "and --focus-unknown", "--focus-order")
    if not cfg.photos:
        raise InputError(None, "give the photos: a folder, or two or more files", FIELD)


def _count(values, n: int, flag: str) -> None:
    if values is not None and len(values) != n:
        raise InputError(None, f"needs exactly one value per photo: got {len(values)} for {n} photos", flag)


# --------------------------------------------------------------------------- checks of the stack


def _check_sizes(infos: list[PhotoInfo]) -> None:
    sizes = Counter((i.width, i.height) for i in infos)
    (w, h), _ = sizes.most_common(1)[0]
    for i in infos:
        if (i.width, i.height) != (w, h):
            raise InputError(i.path, f"is {i.width}x{i.height} but the other photos are {w}x{h}: a stack needs one "
                                     f"size (EXIF rotation is not applied)", FIELD)


def _differs(a: float, b: float) -> bool:
    return abs(a - b) > _SAME * max(a, b)


def _focal_length(cfg: ImportConfig, infos: list[PhotoInfo], notes: list[str]) -> tuple[float, str]:
    known = [(i, i.exif.focal_length_m) for i in infos if i.exif.focal_length_m is not None]
    ref = known[0] if known else None
    odd = next(((i, f) for i, f in known if _differs(f, ref[1])), None) if ref else None
    if cfg.focal_length_mm is not None:
        if odd:
            notes.append(f"EXIF focal lengths differ ({ref[0].path.name}: {ref[1] * 1e3:g} mm, {odd[0].path.name}: "
                         f"{odd[1] * 1e3:g} mm); using --focal-length-mm {cfg.focal_length_mm:g}")
        return cfg.focal_length_mm * 1e-3, "flag"
    if ref is None:
        raise InputError(infos[0].path, "no focal length in the photos' EXIF: pass --focal-length-mm",
                         "--focal-length-mm")
    if odd:
        raise InputError(odd[0].path, f"EXIF focal length {odd[1] * 1e3:g} mm differs from {ref[1] * 1e3:g} mm of "
                                      f"{ref[0].path.name} (zoom changed between shots?): a stack needs one focal "
                                      f"length; pass --focal-length-mm if the EXIF is wrong", FIELD)
    missing = [i.path.name for i in infos if i.exif.focal_length_m is None]
    if missing:
        notes.append(f"no EXIF focal length in {', '.join(missing)}: using the others' {ref[1] * 1e3:g} mm")
    return ref[1], "exif"


def _f_numbers(cfg: ImportConfig, infos: list[PhotoInfo]) -> tuple[list[float], str]:
    if cfg.f_numbers is not None:
        return list(cfg.f_numbers), "flag"
    if cfg.f_number is not None:
        return [cfg.f_number] * len(infos), "flag"
    for i in infos:
        if i.exif.f_number is None:
            raise InputError(i.path, "no f-number in its EXIF: pass --f-number (or --f-numbers, one per photo)",
                             "--f-number")
    return [i.exif.f_number for i in infos], "exif"


def _pixel_pitch(cfg: ImportConfig, infos: list[PhotoInfo], notes: list[str]) -> tuple[float, str]:
    width = infos[0].width
    if cfg.pixel_pitch_um is not None:
        return cfg.pixel_pitch_um * 1e-6, "flag"
    if cfg.sensor_width_mm is not None:
        return cfg.sensor_width_mm * 1e-3 / width, "flag"
    found = []
    for i in infos:
        pitch, src, note = i.exif.pixel_pitch_m(i.width, i.height)
        if note and note not in notes:
            notes.append(note)
        if pitch is not None:
            found.append((i, pitch, src))
    if not found:
        raise InputError(infos[0].path, "no pixel pitch in the photos' EXIF (neither FocalPlaneXResolution nor "
                                        "FocalLengthIn35mmFilm): pass --pixel-pitch-um or --sensor-width-mm",
                         "--pixel-pitch-um")
    ref = found[0]
    for i, pitch, _ in found[1:]:
        if _differs(pitch, ref[1]):
            raise InputError(i.path, f"EXIF pixel pitch {pitch * 1e6:.3g} um differs from {ref[1] * 1e6:.3g} um of "
                                     f"{ref[0].path.name} (another camera?); pass --pixel-pitch-um if the EXIF is "
                                     f"wrong", FIELD)
    return ref[1], ref[2]


def _sweep(near: float, far: float, n: int, cfg: ImportConfig) -> list[float]:
    d = focus_sweep_m(near, far, n, cfg.focus_spacing)
    return list(d if cfg.focus_order == "near-to-far" else d[::-1])


def _focus(cfg: ImportConfig, infos: list[PhotoInfo], focal_length_m: float, notes: list[str]
           ) -> tuple[list[float], str, str]:
    """Focus distances in input order, their source, and the flag a bad value is reported against."""
    n = len(infos)
    if cfg.focus_distances_m is not None:
        return list(cfg.focus_distances_m), "flag", "--focus-distances-m"
    if cfg.focus_range_m is not None and not cfg.focus_unknown:
        return _sweep(*cfg.focus_range_m, n, cfg), "range", "--focus-range-m"
    exif = [i.exif.focus_distance_m for i in infos]
    if all(d is not None for d in exif):
        tags = sorted({i.exif.maker_focus_tag or "SubjectDistance" for i in infos})
        if any(math.isinf(d) for d in exif):
            notes.append(f"EXIF focus at infinity written as {INFINITY_FOCUS_M:g} m")
        if cfg.focus_unknown or cfg.focus_order != "near-to-far":
            notes.append("the photos' EXIF has focus distances: --focus-unknown/--focus-order ignored")
        notes.append(f"focus distances from EXIF ({', '.join(tags)})")
        return [INFINITY_FOCUS_M if math.isinf(d) else d for d in exif], "exif", FIELD
    if any(d is not None for d in exif):
        notes.append(f"EXIF focus distance in only {sum(d is not None for d in exif)} of {n} photos: not used")
    if cfg.focus_unknown:
        near, far = cfg.focus_range_m or tuple(k * focal_length_m for k in ASSUMED_RANGE_FOCAL_LENGTHS)
        return _sweep(near, far, n, cfg), "assumed", "--focus-range-m"
    raise InputError(infos[0].path, "no focus distances in the photos' EXIF: pass --focus-distances-m D1 .. Dn, "
                                    "--focus-range-m NEAR FAR, or --focus-unknown (relative depth)",
                     "--focus-distances-m")


def _resolve(cfg: ImportConfig, infos: list[PhotoInfo]) -> _Optics:
    notes: list[str] = [f"{i.path.name}: {i.exif.error}: its EXIF is not used" for i in infos if i.exif.error]
    f, f_src = _focal_length(cfg, infos, notes)
    n_list, n_src = _f_numbers(cfg, infos)
    pitch, pitch_src = _pixel_pitch(cfg, infos, notes)
    focus, focus_src, focus_flag = _focus(cfg, infos, f, notes)
    for i, (info, s, n) in enumerate(zip(infos, focus, n_list)):
        if not s > f:
            where = info.path if focus_flag == FIELD else None
            raise InputError(where, f"focus distance {s:g} m of {info.path.name} must be greater than the focal "
                                    f"length {f * 1e3:g} mm", focus_flag)
        try:
            check_lens(f, n, s, pitch)
        except LensError as exc:
            raise InputError(info.path, f"{exc}", focus_flag) from None
    sources = {"focal_length_m": f_src, "f_number": n_src, "pixel_pitch_m": pitch_src, "focus_distance_m": focus_src}
    return _Optics(f, n_list, pitch, focus, sources, notes)


def _target_size(width: int, height: int, max_size: int) -> tuple[int, int]:
    if max_size == 0 or max(width, height) <= max_size:
        return width, height
    s = max_size / max(width, height)
    return max(1, round(width * s)), max(1, round(height * s))


# --------------------------------------------------------------------------- run


def run(cfg: ImportConfig) -> int:
    _check_flags(cfg)
    listed = collect_photos(cfg.photos, FIELD)
    output = OutputDir(cfg.out, command="import", overwrite=cfg.overwrite,
                       inputs=[(FIELD, p) for p in cfg.photos] + [(FIELD, p) for p in listed.files])
    output.check()  # before any photo is decoded
    files = listed.files
    if len(files) < 2:
        raise InputError(files[0], "a focal stack needs at least two photos (got one)", FIELD)
    n = len(files)
    _count(cfg.focus_distances_m, n, "--focus-distances-m")
    _count(cfg.f_numbers, n, "--f-numbers")
    infos = [probe_photo(p, FIELD) for p in files]
    _check_sizes(infos)
    find_duplicate_content(files, FIELD)
    if cfg.focus_distances_m is None and cfg.focus_range_m is None:
        maker, note = exiftool_focus_distances(files)
        if note:
            console.warn(note)
        infos = [replace(i, exif=replace(i.exif, maker_focus_distance_m=maker[i.path][0],
                                         maker_focus_tag=maker[i.path][1])) if i.path in maker else i
                 for i in infos]
    optics = _resolve(cfg, infos)

    width, height = infos[0].width, infos[0].height
    out_w, out_h = _target_size(width, height, cfg.max_size)
    pitch_m = optics.pixel_pitch_m * width / out_w
    order = sorted(range(n), key=lambda k: optics.focus_m[k])  # stable: equal focus keeps input order
    per_frame_n = len(set(optics.f_numbers)) > 1 or cfg.f_numbers is not None
    camera = Camera(width=out_w, height=out_h, fx=optics.focal_length_m / pitch_m,
                    fy=optics.focal_length_m / pitch_m, cx=out_w / 2.0, cy=out_h / 2.0,
                    focal_length_m=optics.focal_length_m, f_number=optics.f_numbers[order[0]], pixel_pitch_m=pitch_m)
    frames = [Frame(image=f"frames/{i:03d}.png", focus_distance_m=float(optics.focus_m[k]),
                    f_number=optics.f_numbers[k] if per_frame_n else None) for i, k in enumerate(order)]
    bit_depth = 16 if any(i.bit_depth == 16 for i in infos) else 8
    relative = optics.sources["focus_distance_m"] == "assumed"
    import gs_dfd

    source = {"tool": "gs-dfd import", "gs_dfd_version": gs_dfd.__version__,
              "photos": [files[k].name for k in order], **optics.sources,
              "depth": "relative" if relative else "metric",
              "resized_from": [width, height] if (out_w, out_h) != (width, height) else None,
              "bit_depth": bit_depth}
    if optics.sources["focus_distance_m"] in ("range", "assumed"):
        source.update(focus_order=cfg.focus_order, focus_spacing=cfg.focus_spacing)

    with output as work:
        (work.path / "frames").mkdir()
        for frame, k in console.progress(list(zip(frames, order)), "import", enabled=cfg.progress and n > 2):
            img = read_photo(infos[k], FIELD)
            if img.shape[:2] != (height, width):  # the header said otherwise: a damaged file
                raise InputError(files[k], f"decodes to {img.shape[1]}x{img.shape[0]}, not {width}x{height}", FIELD)
            write_png(work.path / frame.image, resize_image(img, out_w, out_h), bit_depth)
        scene = Scene(root=work.path, camera=camera, frames=frames, source=source)
        write_json_atomic(work.path / SCENE_FILE, scene.to_json())
        load_scene(work.path, check_files=False)  # the contract's own validation, before the folder appears

    _report(cfg, listed.skipped, optics, camera, frames, order, files, width, height)
    return 0


def _report(cfg: ImportConfig, skipped: list[str], optics: _Optics, camera: Camera, frames: list[Frame],
            order: list[int], files: list[Path], width: int, height: int) -> None:
    src = optics.sources
    if skipped:
        shown = ", ".join(skipped[:6]) + (f", ... ({len(skipped)} in all)" if len(skipped) > 6 else "")
        console.print(f"note: skipped (not photos): {shown}")
    for note in optics.notes:
        console.print(f"note: {note}")
    resized = f" (resized from {width}x{height})" if (camera.width, camera.height) != (width, height) else ""
    console.print(f"camera  {camera.width}x{camera.height} px{resized}, f={camera.focal_length_m * 1e3:g} mm "
                  f"({src['focal_length_m']}), pixel pitch {camera.pixel_pitch_m * 1e6:.3g} um "
                  f"({src['pixel_pitch_m']}), fx={camera.fx:.1f}; f-number from {src['f_number']}; "
                  f"focus distances from {src['focus_distance_m']}")
    console.print(f"  {'#':>3}  {'photo':<28} {'focus (m)':>10} {'f-number':>8}")
    for i, (frame, k) in enumerate(zip(frames, order)):
        console.print(f"  {i:>3}  {files[k].name[:28]:<28} {frame.focus_distance_m:>10.4g} "
                      f"{optics.f_numbers[k]:>8g}")
    if src["focus_distance_m"] == "assumed":
        console.print("note: focus distances are ASSUMED (spaced over a guessed range): depth from this scene is "
                      "relative (inverse depth up to scale and shift), not metric")
    console.print(f"imported {len(frames)} photos -> {cfg.out}")
