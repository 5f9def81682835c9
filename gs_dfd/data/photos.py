"""Photos as they come off a camera: which files, their pixels (8 or 16 bits), and the EXIF that fixes the optics.

The EXIF is read through Pillow (``Image.getexif()``, the Exif IFD 0x8769), which is maintained and already
installed; when the ``exiftool`` binary is on PATH it also supplies the maker-note focus distances that the
standard tags rarely carry (Canon FocusDistanceUpper/Lower, Nikon and Olympus FocusDistance, Sony
FocusDistance2). Pixels stay as stored: EXIF orientation is not applied (a stack is one camera pose; rotating
some frames and not others would break it).

RAW files are refused with a one-line error, not decoded: rawpy (LibRaw) would be a compiled dependency, and a
raw file only becomes an image after choices (demosaicing, white balance, colour matrix, highlights) that a raw
developer makes better and shows the user. ``dcraw -4 -T``, darktable or RawTherapee write a linear 16-bit
TIFF that keeps what RAW offers (16 bits, no tone curve), and this module reads it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from gs_dfd.data.images import check_image_size, first_line, open_image, png_header, read_image
from gs_dfd.errors import InputError

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
RAW_SUFFIXES = frozenset({".3fr", ".arw", ".cr2", ".cr3", ".crw", ".dcr", ".dng", ".erf", ".fff", ".iiq", ".k25",
                          ".kdc", ".mef", ".mos", ".mrw", ".nef", ".nrw", ".orf", ".pef", ".raf", ".raw", ".rw2",
                          ".rwl", ".sr2", ".srf", ".srw", ".x3f"})
RAW_ADVICE = ("RAW files are not read: convert them to 16-bit TIFF first (e.g. `dcraw -4 -T FILE`, or darktable / "
              "RawTherapee with a 16-bit TIFF export)")

# EXIF tags (Exif IFD unless noted).
TAG_EXIF_IFD = 0x8769
TAG_MAKE, TAG_MODEL = 0x010F, 0x0110  # IFD0
TAG_FOCAL_LENGTH = 0x920A
TAG_F_NUMBER = 0x829D
TAG_SUBJECT_DISTANCE = 0x9206
TAG_FOCAL_PLANE_X_RESOLUTION = 0xA20E
TAG_FOCAL_PLANE_RESOLUTION_UNIT = 0xA210
TAG_EXIF_IMAGE_WIDTH, TAG_EXIF_IMAGE_HEIGHT = 0xA002, 0xA003  # PixelXDimension / PixelYDimension
TAG_FOCAL_LENGTH_35MM = 0xA405

# FocalPlaneResolutionUnit -> metres (2 inch is the EXIF default; 4 mm and 5 um occur in the wild).
_RESOLUTION_UNIT_M = {2: 0.0254, 3: 0.01, 4: 0.001, 5: 1e-6}
_FULL_FRAME_DIAGONAL_M = math.hypot(0.036, 0.024)  # what "35 mm equivalent" focal lengths refer to
_PLAUSIBLE_PITCH_M = (0.2e-6, 2e-3)  # a FocalPlaneXResolution outside this is garbage, not a sensor
SUBJECT_DISTANCE_INFINITY = 0xFFFFFFFF  # EXIF: SubjectDistance of 0xFFFFFFFF means infinity
EXIFTOOL_TAGS = ("FocusDistanceUpper", "FocusDistanceLower", "FocusDistance", "FocusDistance2")
_CANON_INFINITY_M = 655.0  # exiftool -n: Canon's FocusDistanceUpper of 655.35 m means infinity


def natural_key(name: str) -> list:
    """Sort key that orders ``img2`` before ``img10`` (cameras and exports rarely zero-pad enough)."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t.lower()) for t in re.split(r"(\d+)", name) if t]


@dataclass
class PhotoList:
    """The photos to import, in input order, plus what was skipped (for a console note)."""

    files: list[Path]
    skipped: list[str]


def _refuse_raw(path: Path, field: str) -> None:
    raise InputError(path, RAW_ADVICE, field)


def collect_photos(inputs: Sequence[Path], field: str = "PHOTOS") -> PhotoList:
    """Expand the command's inputs into photo files: a folder gives its photos in natural name order (not its
    sub-folders); files come in the order given. Other files in a folder (text, RAW beside JPEGs, hidden files)
    are skipped and listed; a listed file that is not a photo is refused."""
    files: list[Path] = []
    skipped: list[str] = []
    for src in inputs:
        src = Path(src)
        if src.is_dir():
            found, raws = [], []
            for p in sorted(src.iterdir(), key=lambda q: natural_key(q.name)):
                suffix = p.suffix.lower()
                if p.name.startswith(".") or not p.is_file():
                    skipped.append(p.name + ("/" if p.is_dir() else ""))
                elif suffix in PHOTO_SUFFIXES:
                    found.append(p)
                else:
                    skipped.append(p.name)
                    if suffix in RAW_SUFFIXES:
                        raws.append(p)
            if not found and raws:
                _refuse_raw(raws[0], field)
            if not found:
                raise InputError(src, f"folder holds no photo ({', '.join(PHOTO_SUFFIXES)})", field)
            files.extend(found)
        elif src.is_file():
            suffix = src.suffix.lower()
            if suffix in RAW_SUFFIXES:
                _refuse_raw(src, field)
            if suffix not in PHOTO_SUFFIXES:
                raise InputError(src, f"not a photo this command reads (use {', '.join(PHOTO_SUFFIXES)})", field)
            files.append(src)
        else:
            raise InputError(src, "photo or folder not found", field)
    seen: dict[str, Path] = {}
    for p in files:
        key = os.path.realpath(p)
        if key in seen:
            raise InputError(p, f"is listed twice (also as {seen[key]}): each photo once", field)
        seen[key] = p
    return PhotoList(files=files, skipped=skipped)


def find_duplicate_content(files: Sequence[Path], field: str = "PHOTOS") -> None:
    """Refuse two files with the same bytes: a copied frame would look like two focus settings of one image."""
    seen: dict[str, Path] = {}
    for p in files:
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        digest = h.hexdigest()
        if digest in seen:
            raise InputError(p, f"has the same content as {seen[digest]}: a duplicate photo", field)
        seen[digest] = p


# --------------------------------------------------------------------------- EXIF


def _number(value: Any) -> float | None:
    """An EXIF number (int, IFDRational, or a 1-tuple) as a float; None when absent, zero, negative or NaN."""
    if isinstance(value, tuple) and len(value) >= 1:
        value = value[0]
    if isinstance(value, (bytes, str)) or value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        return None
    return v if math.isfinite(v) and v > 0 else None


@dataclass(frozen=True)
class ExifOptics:
    """What a photo's EXIF says about the lens and sensor (None: not recorded)."""

    focal_length_m: float | None = None
    f_number: float | None = None
    focal_length_35mm_m: float | None = None
    focal_plane_pitch_m: float | None = None  # from FocalPlaneXResolution: pixels of the image as shot
    exif_size: tuple[int, int] | None = None  # ExifImageWidth/Height: the image as shot
    subject_distance_m: float | None = None  # math.inf: recorded as infinity
    maker_focus_distance_m: float | None = None  # from exiftool; math.inf: infinity
    maker_focus_tag: str | None = None
    camera: str | None = None
    error: str | None = None  # why the EXIF could not be read

    @property
    def focus_distance_m(self) -> float | None:
        """The maker note's focus distance (what the lens was set to) before the standard SubjectDistance."""
        return self.maker_focus_distance_m if self.maker_focus_distance_m is not None else self.subject_distance_m

    def pixel_pitch_m(self, width: int, height: int) -> tuple[float | None, str | None, str | None]:
        """(pitch of the stored ``width`` x ``height`` pixels, source, note) from the EXIF, or (None, None, note).

        FocalPlaneXResolution counts pixels of the image as the camera wrote it (ExifImageWidth): a resized
        copy has fewer, larger pixels. Without it, the 35 mm equivalent focal length gives the sensor diagonal
        (the crop factor is a ratio of diagonals), hence the width for this image's aspect ratio.
        """
        note = None
        from_35mm = None
        if self.focal_length_35mm_m is not None and self.focal_length_m is not None:
            diagonal_m = _FULL_FRAME_DIAGONAL_M * self.focal_length_m / self.focal_length_35mm_m
            from_35mm = diagonal_m / math.hypot(width, height)
        if self.focal_plane_pitch_m is not None:
            full_w = width
            if self.exif_size is not None:
                ew, eh = self.exif_size
                if abs(ew / eh - width / height) <= 0.02 * width / height:
                    full_w = ew
                elif abs(eh / ew - width / height) <= 0.02 * width / height:
                    full_w = eh  # stored rotated relative to the recorded size (square pixels assumed)
                else:
                    full_w = ew
                    note = (f"EXIF size {ew}x{eh} has another aspect ratio than the stored {width}x{height} "
                            f"(cropped?): pixel pitch scaled by width")
            pitch = self.focal_plane_pitch_m * full_w / width
            if _PLAUSIBLE_PITCH_M[0] <= pitch <= _PLAUSIBLE_PITCH_M[1]:
                if from_35mm is not None and abs(pitch / from_35mm - 1.0) > 0.25:  # e.g. resized, size tags lost
                    note = (f"EXIF FocalPlaneXResolution gives a pixel pitch of {pitch * 1e6:.3g} um but "
                            f"FocalLengthIn35mmFilm {from_35mm * 1e6:.3g} um: using the first; pass "
                            f"--pixel-pitch-um if it is wrong")
                return pitch, "exif", note
            note = f"EXIF FocalPlaneXResolution gives an implausible pixel pitch ({pitch * 1e6:.3g} um): ignored"
        if from_35mm is not None and _PLAUSIBLE_PITCH_M[0] <= from_35mm <= _PLAUSIBLE_PITCH_M[1]:
            return from_35mm, "exif-35mm", note
        return None, None, note


def _exif_tags(img) -> dict[int, Any]:
    """IFD0 merged with the Exif IFD (the Exif IFD wins): TIFF writers such as dcraw put lens tags in IFD0."""
    exif = img.getexif()
    tags = dict(exif)
    tags.update(exif.get_ifd(TAG_EXIF_IFD))
    return tags


def exif_optics(img) -> ExifOptics:
    """The optics in an open Pillow image's EXIF; an unreadable EXIF is reported in ``error``, not raised."""
    try:
        tags = _exif_tags(img)
    except Exception as exc:  # corrupt EXIF: Pillow raises several types
        return ExifOptics(error=f"unreadable EXIF ({type(exc).__name__})")
    f_mm = _number(tags.get(TAG_FOCAL_LENGTH))
    f35_mm = _number(tags.get(TAG_FOCAL_LENGTH_35MM))
    pitch = None
    res = _number(tags.get(TAG_FOCAL_PLANE_X_RESOLUTION))
    unit = tags.get(TAG_FOCAL_PLANE_RESOLUTION_UNIT, 2)
    if res is not None and isinstance(unit, int) and unit in _RESOLUTION_UNIT_M:
        pitch = _RESOLUTION_UNIT_M[unit] / res
    ew, eh = _number(tags.get(TAG_EXIF_IMAGE_WIDTH)), _number(tags.get(TAG_EXIF_IMAGE_HEIGHT))
    subject = _number(tags.get(TAG_SUBJECT_DISTANCE))
    if subject is not None and subject >= SUBJECT_DISTANCE_INFINITY * 0.999:
        subject = math.inf
    camera = " ".join(str(tags[t]).strip("\x00 ") for t in (TAG_MAKE, TAG_MODEL)
                      if isinstance(tags.get(t), str) and tags[t].strip("\x00 "))
    return ExifOptics(
        focal_length_m=None if f_mm is None else f_mm * 1e-3,
        f_number=_number(tags.get(TAG_F_NUMBER)),
        focal_length_35mm_m=None if f35_mm is None else f35_mm * 1e-3,
        focal_plane_pitch_m=pitch,
        exif_size=(int(ew), int(eh)) if ew and eh else None,
        subject_distance_m=subject,
        camera=camera or None,
    )


def _exiftool_value(v: Any) -> float | None:
    """An exiftool -n value in metres; 'inf' -> math.inf; anything else unusable -> None."""
    if isinstance(v, str):
        if v.strip().lower() in ("inf", "infinity"):
            return math.inf
        try:
            v = float(v.split()[0])
        except (ValueError, IndexError):
            return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        return None
    return float(v)


def _maker_focus(entry: dict) -> tuple[float, str] | None:
    """The focus distance (metres) in one exiftool -j -n record, from the tags makers use."""
    upper = _exiftool_value(entry.get("FocusDistanceUpper"))
    lower = _exiftool_value(entry.get("FocusDistanceLower"))
    if upper is not None and upper >= _CANON_INFINITY_M:
        upper = math.inf
    if upper and lower:  # Canon: the lens reports a bracket; take its middle in inverse distance (dioptres)
        return 2.0 / (1.0 / lower + 1.0 / upper), "Canon FocusDistanceUpper/Lower"
    for tag, label in (("FocusDistance2", "Sony FocusDistance2"), ("FocusDistance", "FocusDistance")):
        v = _exiftool_value(entry.get(tag))
        if v is not None:
            return (math.inf if v == 0 else v), label  # Olympus writes 0 for infinity
    if upper or lower:
        return (upper or lower), "Canon FocusDistanceUpper/Lower"
    return None


def exiftool_focus_distances(files: Sequence[Path], timeout_s: float = 120.0
                             ) -> tuple[dict[Path, tuple[float, str]], str | None]:
    """Maker-note focus distances through the ``exiftool`` binary when it is installed.

    Returns ({file: (metres, tag)}, note): files without one are absent; the note says why none could be read
    (exiftool missing is silent: it is optional). Paths are passed absolute so none can look like an option.
    """
    exe = shutil.which("exiftool")
    if exe is None or not files:
        return {}, None
    paths = [os.path.abspath(p) for p in files]
    cmd = [exe, "-j", "-n", "-q", "-q", *(f"-{t}" for t in EXIFTOOL_TAGS), *paths]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout_s, check=False)
        records = json.loads(proc.stdout.decode("utf-8", "replace") or "[]")
    except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
        return {}, f"exiftool could not be run ({type(exc).__name__}): maker-note focus distances not read"
    if not isinstance(records, list):
        return {}, "exiftool gave no record list: maker-note focus distances not read"
    by_path = {p: f for p, f in zip(paths, files)}
    out: dict[Path, tuple[float, str]] = {}
    for rec in records:
        if not isinstance(rec, dict):
            continue
        src = rec.get("SourceFile")
        file = by_path.get(os.path.abspath(src)) if isinstance(src, str) else None
        found = _maker_focus(rec) if file is not None else None
        if found is not None:
            out[file] = found
    return out, None


# --------------------------------------------------------------------------- pixels


@dataclass(frozen=True)
class PhotoInfo:
    """One photo from its header: size, bit depth and EXIF (nothing decoded)."""

    path: Path
    width: int
    height: int
    bit_depth: int  # 8, or 16 for anything deeper (16-bit PNG/TIFF, float TIFF)
    exif: ExifOptics
    tiff16_rgb: bool = False  # needs this module's reader: Pillow would reduce it to 8 bits


def _bits(img, path: Path) -> int:
    if img.format == "PNG":
        header = png_header(path)
        return 16 if header is not None and header[0] == 16 else 8
    if img.format == "TIFF":
        bps = img.tag_v2.get(258, (8,))
        bps = bps if isinstance(bps, tuple) else (bps,)
        return 16 if max(int(b) for b in bps) > 8 else 8
    return 16 if img.mode.startswith("I") or img.mode == "F" else 8


def probe_photo(path: Path, field: str = "PHOTOS") -> PhotoInfo:
    """Size, bit depth and EXIF of a photo from its header (a broken or tiny file is a one-line error)."""
    img = open_image(path, field)
    with img:
        width, height = img.size
        check_image_size(path, width, height, field)
        bits = _bits(img, path)
        tiff16_rgb = img.format == "TIFF" and bits == 16 and img.mode in ("RGB", "RGBA", "RGBX")
        return PhotoInfo(path=path, width=width, height=height, bit_depth=bits, exif=exif_optics(img),
                         tiff16_rgb=tiff16_rgb)


def _read_tiff16_rgb(path: Path, field: str) -> np.ndarray:
    """A 16-bit RGB(A) TIFF as float32 ``[H, W, 3]``: Pillow opens these as 8-bit RGB, losing the low byte.

    Reads what raw converters write: strips, chunky samples, no compression or deflate, optional horizontal
    predictor. Anything else is a one-line error saying what to save instead.
    """
    img = open_image(path, field)
    with img:
        tags = img.tag_v2
        width, height = img.size
        spp = int(tags.get(277, 3))
        compression = int(tags.get(259, 1))
        predictor = int(tags.get(317, 1))
        layout = (f"compression {compression}, predictor {predictor}, planar {tags.get(284, 1)}, "
                  f"{'tiled' if 322 in tags else 'strips'}")
        if compression not in (1, 8, 32946) or predictor not in (1, 2) or int(tags.get(284, 1)) != 1 \
                or 322 in tags or spp not in (3, 4):
            raise InputError(path, f"16-bit RGB TIFF layout not supported ({layout}): save it uncompressed or with "
                                   f"deflate, or as a 16-bit PNG", field)
        offsets, counts = tags.get(273), tags.get(279)
        offsets = offsets if isinstance(offsets, tuple) else (offsets,)
        counts = counts if isinstance(counts, tuple) else (counts,)
    with open(path, "rb") as fh:
        order = "<" if fh.read(2) == b"II" else ">"
        chunks = []
        for off, n in zip(offsets, counts):
            fh.seek(int(off))
            data = fh.read(int(n))
            chunks.append(zlib.decompress(data) if compression != 1 else data)
    need = width * height * spp * 2
    raw = b"".join(chunks)
    if len(raw) < need:
        raise InputError(path, f"cannot read image (TIFF data truncated: {len(raw)} of {need} bytes)", field)
    arr = np.frombuffer(raw[:need], dtype=f"{order}u2").reshape(height, width, spp)
    if predictor == 2:  # horizontal differencing: each sample stores the difference to its left neighbour
        arr = np.cumsum(arr, axis=1, dtype=np.uint16)
    return arr[:, :, :3].astype(np.float32) / 65535.0


def read_photo(info: PhotoInfo, field: str = "PHOTOS") -> np.ndarray:
    """The photo's pixels as stored (no EXIF rotation), float32 ``[H, W, C]`` in [0, 1], C = 1 or 3."""
    if info.tiff16_rgb:
        try:
            return _read_tiff16_rgb(info.path, field)
        except InputError:
            raise
        except Exception as exc:  # corrupt deflate data, bad offsets
            raise InputError(info.path, f"cannot read image ({first_line(exc)})", field) from None
    return read_image(info.path, field=field)


def focus_sweep_m(near_m: float, far_m: float, count: int, spacing: str = "inverse") -> np.ndarray:
    """``count`` focus distances from ``near_m`` to ``far_m``: evenly in inverse distance (dioptres: a focus
    ring and the blur both move linearly in 1/s) or, with ``spacing="linear"``, in distance."""
    t = np.linspace(0.0, 1.0, count)
    if spacing == "linear":
        return near_m + (far_m - near_m) * t
    if spacing != "inverse":
        raise ValueError(f"spacing must be 'inverse' or 'linear' (got {spacing!r})")
    return 1.0 / (1.0 / near_m + (1.0 / far_m - 1.0 / near_m) * t)
