"""The focal-stack scene format ``gs_dfd.scene/1`` (a contract: external tools write it).

A scene is a folder with ``scene.json``::

    {
      "format": "gs_dfd.scene/1",
      "camera": {"width": 320, "height": 240, "fx": 2083.3, "fy": 2083.3, "cx": 160.0, "cy": 120.0,
                 "focal_length_m": 0.05, "f_number": 8.0, "pixel_pitch_m": 2.4e-05},
      "frames": [{"image": "frames/000.png", "focus_distance_m": 1.0},
                 {"image": "frames/001.png", "focus_distance_m": 1.5, "f_number": 2.8}],
      "depth_gt": "depth_gt.npy",
      "all_in_focus": "aif.png"
    }

Units are metres; intrinsics are pixels of the stored images. A frame may
override ``f_number`` and may carry ``world_to_cam`` (4x4 row-major; absent =
identity). ``depth_gt`` is optional: ``.npy`` float32 metres (0 or non-finite
= invalid) or a 16-bit PNG with ``depth_gt_scale`` (metres per unit).
``all_in_focus`` is for evaluation only. File names are relative paths that
must stay inside the scene folder (no absolute paths, no ``..`` or symlink
leading out). Everything is validated on load and every problem names the
file and the field.

Fitting and self-supervised training read frames through :meth:`Scene.load_frames`
only; ground truth is behind :meth:`Scene.load_depth_gt` and
:meth:`Scene.load_all_in_focus`, which evaluation alone calls.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from gs_dfd.data.images import read_image, to_channels, write_png
from gs_dfd.data.maps import load_npy
from gs_dfd.errors import InputError
from gs_dfd.optics.thin_lens import ThinLens
from gs_dfd.utils.atomic import save_npy_atomic, write_json_atomic

SCENE_FORMAT = "gs_dfd.scene/1"
SCENE_FILE = "scene.json"
_CAMERA_FIELDS = ("width", "height", "fx", "fy", "cx", "cy", "focal_length_m", "f_number", "pixel_pitch_m")
_FRAME_FIELDS = ("image", "focus_distance_m", "f_number", "world_to_cam")
_TOP_FIELDS = ("format", "camera", "frames", "depth_gt", "depth_gt_scale", "all_in_focus", "source")


@dataclass(frozen=True)
class Camera:
    """Pinhole intrinsics (pixels) plus the thin lens and sensor (metres)."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    focal_length_m: float
    f_number: float
    pixel_pitch_m: float

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _CAMERA_FIELDS}

    def intrinsics_matrix(self) -> np.ndarray:  # [3, 3]
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def lens(self, focus_distance_m: float, f_number: float | None = None) -> ThinLens:
        """This camera's thin lens focused at ``focus_distance_m`` (``f_number`` None: the camera's)."""
        return ThinLens(focal_length_m=self.focal_length_m, f_number=self.f_number if f_number is None else f_number,
                        focus_distance_m=focus_distance_m, pixel_pitch_m=self.pixel_pitch_m)


@dataclass(frozen=True)
class Frame:
    """One photo of the stack: its file and the lens setting it was taken with."""

    image: str  # relative to the scene folder
    focus_distance_m: float
    f_number: float | None = None  # None: the camera's
    world_to_cam: np.ndarray | None = None  # [4, 4]; None: identity

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"image": self.image, "focus_distance_m": self.focus_distance_m}
        if self.f_number is not None:
            out["f_number"] = self.f_number
        if self.world_to_cam is not None:
            out["world_to_cam"] = np.asarray(self.world_to_cam, dtype=float).tolist()
        return out


@dataclass
class Scene:
    root: Path
    camera: Camera
    frames: list[Frame]
    depth_gt: str | None = None
    depth_gt_scale: float | None = None
    all_in_focus: str | None = None
    warnings: list[str] = field(default_factory=list)
    source: dict[str, Any] | None = None  # optional provenance (e.g. gs-dfd import: where each value came from)

    @property
    def json_path(self) -> Path:
        return self.root / SCENE_FILE

    def f_number(self, i: int) -> float:
        n = self.frames[i].f_number
        return self.camera.f_number if n is None else n

    def lens(self, i: int) -> ThinLens:
        """The thin lens of frame ``i`` (its own focus distance and f-number)."""
        return self.camera.lens(self.frames[i].focus_distance_m, self.frames[i].f_number)

    def world_to_cam(self, i: int) -> np.ndarray:  # [4, 4]
        w2c = self.frames[i].world_to_cam
        return np.eye(4) if w2c is None else np.asarray(w2c, dtype=np.float64)

    def load_frames(self) -> np.ndarray:
        """All frames as float32 ``[F, H, W, C]`` in [0, 1]; C = 3 if any frame is RGB, else 1."""
        imgs = [self._read_sized(f.image, f"frames[{i}].image") for i, f in enumerate(self.frames)]
        channels = max(im.shape[2] for im in imgs)
        return np.stack([to_channels(im, channels) for im in imgs])

    def load_frame(self, i: int) -> np.ndarray:
        """Frame ``i`` alone, float32 ``[H, W, C]``, its size checked against the camera."""
        return self._read_sized(self.frames[i].image, f"frames[{i}].image")

    def load_depth_gt(self) -> np.ndarray | None:
        """Ground-truth depth, float32 ``[H, W]`` metres, 0 where invalid (evaluation only)."""
        if self.depth_gt is None:
            return None
        return _load_depth_gt(self.root, self.depth_gt, self.depth_gt_scale, self.camera)

    def load_all_in_focus(self) -> np.ndarray | None:
        """The all-in-focus image ``[H, W, C]`` (evaluation only, never for fitting)."""
        if self.all_in_focus is None:
            return None
        return self._read_sized(self.all_in_focus, "all_in_focus")

    def _read_sized(self, rel: str, field_name: str) -> np.ndarray:
        path = scene_file(self.root, rel, field_name)
        img = read_image(path, field=field_name)
        _check_size(img.shape[1], img.shape[0], self.camera, self.json_path, field_name, path)
        return img

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": SCENE_FORMAT,
            "camera": self.camera.to_json(),
            "frames": [f.to_json() for f in self.frames],
        }
        if self.depth_gt is not None:
            out["depth_gt"] = self.depth_gt
            if self.depth_gt_scale is not None:
                out["depth_gt_scale"] = self.depth_gt_scale
        if self.all_in_focus is not None:
            out["all_in_focus"] = self.all_in_focus
        if self.source is not None:
            out["source"] = self.source
        return out


# --------------------------------------------------------------------------- validation helpers


def _short(value: Any, limit: int = 60) -> str:
    """A JSON value for a one-line message: a 10 MB list must not become a 10 MB line."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = type(value).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def _number(obj: dict, key: str, where: str, jpath: Path, *, positive: bool = False, integer: bool = False,
            required: bool = True) -> Any:
    name = f"{where}.{key}" if where else key
    if key not in obj:
        if required:
            raise InputError(jpath, "missing", name)
        return None
    v = obj[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise InputError(jpath, f"must be a number (got {_short(v)})", name)
    try:
        finite = math.isfinite(v)
    except OverflowError:  # an integer with hundreds of digits
        finite = False
    if not finite:
        raise InputError(jpath, f"must be finite (got {str(v)[:40]})", name)
    if integer and (not isinstance(v, int) and not float(v).is_integer()):
        raise InputError(jpath, f"must be an integer (got {v})", name)
    if positive and v <= 0:
        raise InputError(jpath, f"must be > 0 (got {v})", name)
    return int(v) if integer else float(v)


def _check_size(width: int, height: int, camera: Camera, jpath: Path, field_name: str, file: Path) -> None:
    if (width, height) != (camera.width, camera.height):
        raise InputError(
            file, f"image is {width}x{height} but camera is {camera.width}x{camera.height} (see {jpath})", field_name
        )


def _parse_camera(raw: Any, jpath: Path) -> Camera:
    if not isinstance(raw, dict):
        raise InputError(jpath, "missing or not an object", "camera")
    vals = {
        "width": _number(raw, "width", "camera", jpath, positive=True, integer=True),
        "height": _number(raw, "height", "camera", jpath, positive=True, integer=True),
    }
    for k in ("fx", "fy", "focal_length_m", "f_number", "pixel_pitch_m"):
        vals[k] = _number(raw, k, "camera", jpath, positive=True)
    for k in ("cx", "cy"):
        vals[k] = _number(raw, k, "camera", jpath)
    return Camera(**vals)


def _parse_world_to_cam(raw: Any, jpath: Path, name: str) -> np.ndarray:
    rows = raw if isinstance(raw, list) else []
    if not all(isinstance(r, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in r)
               for r in rows) or not rows:  # numpy would also take strings ("1") and booleans
        raise InputError(jpath, "must be a 4x4 array of numbers", name)
    try:
        m = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise InputError(jpath, "must be a 4x4 array of numbers", name) from None
    if m.shape != (4, 4) or not np.all(np.isfinite(m)):
        raise InputError(jpath, f"must be a finite 4x4 array (got shape {m.shape})", name)
    if not np.allclose(m[3], [0, 0, 0, 1], atol=1e-6):
        raise InputError(jpath, "last row must be [0, 0, 0, 1]", name)
    rot = m[:3, :3]
    if not np.allclose(rot @ rot.T, np.eye(3), atol=1e-4) or np.linalg.det(rot) <= 0:
        raise InputError(jpath, "upper-left 3x3 must be a rotation (orthonormal, det +1)", name)
    return m


def scene_file(root: Path, rel: str, field_name: str) -> Path:
    """``root / rel``, refused unless it resolves (``..`` and symlinks followed) to a path inside ``root``.

    A scene.json is input from anyone: it must not make gs-dfd read, or quote in
    its messages, files outside the scene (``/etc/passwd``, ``../../secret``).
    Symlinks inside the scene that point inside it are fine.
    """
    root = Path(root)
    jpath = root / SCENE_FILE
    refused = InputError(jpath, f"must be a path inside the scene folder (got '{rel}')", field_name)
    if "\0" in rel or os.path.isabs(rel):
        raise refused
    try:
        real_root = Path(os.path.realpath(root))
        target = Path(os.path.realpath(root / rel))
    except (OSError, ValueError):
        raise refused from None
    if target == real_root or not target.is_relative_to(real_root):
        raise refused
    if target.is_dir():
        raise InputError(jpath, f"must name a file, not a folder (got '{rel}')", field_name)
    return root / rel


def _parse_frame(raw: Any, i: int, camera: Camera, root: Path, warnings: list[str]) -> Frame:
    where = f"frames[{i}]"
    jpath = root / SCENE_FILE
    if not isinstance(raw, dict):
        raise InputError(jpath, "must be an object", where)
    image = raw.get("image")
    if not isinstance(image, str) or not image:
        raise InputError(jpath, "missing or not a file name", f"{where}.image")
    scene_file(root, image, f"{where}.image")
    s = _number(raw, "focus_distance_m", where, jpath, positive=True)
    if s <= camera.focal_length_m:
        raise InputError(
            jpath,
            f"focus distance {s:g} m must be greater than camera.focal_length_m = {camera.focal_length_m:g} m",
            f"{where}.focus_distance_m",
        )
    n = _number(raw, "f_number", where, jpath, positive=True, required=False)
    w2c = _parse_world_to_cam(raw["world_to_cam"], jpath, f"{where}.world_to_cam") if "world_to_cam" in raw else None
    unknown = sorted(set(raw) - set(_FRAME_FIELDS))
    if unknown:
        warnings.append(f"{jpath}: {where}: ignoring unknown field(s) {', '.join(unknown)}")
    return Frame(image=image, focus_distance_m=s, f_number=n, world_to_cam=w2c)


def _load_depth_gt(root: Path, rel: str, scale: float | None, camera: Camera) -> np.ndarray:
    path = scene_file(root, rel, "depth_gt")
    jpath = root / SCENE_FILE
    if not path.is_file():
        raise InputError(path, "depth file not found", "depth_gt")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        raw = load_npy(path, "depth_gt", what="depth")
        # Integer units (millimetres, PNG-style counts) would silently be read as metres.
        if raw.dtype == np.bool_:
            raise InputError(path, "boolean depth .npy: store float32 metres", "depth_gt")
        if np.issubdtype(raw.dtype, np.integer):
            raise InputError(path, "integer depth .npy: store float32 metres, or a 16-bit PNG with depth_gt_scale",
                             "depth_gt")
        if not np.issubdtype(raw.dtype, np.floating):
            raise InputError(path, f"must hold float32 metres (got dtype {raw.dtype})", "depth_gt")
        depth = raw.astype(np.float32)
    elif suffix == ".png":
        if scale is None:
            raise InputError(jpath, "a PNG depth_gt needs depth_gt_scale (metres per unit)", "depth_gt_scale")
        import imageio.v3 as iio

        try:
            raw = np.asarray(iio.imread(path, plugin="pillow"))
        except Exception as exc:  # corrupt, truncated or a decompression bomb: Pillow raises many types
            raise InputError(path, f"cannot read PNG ({type(exc).__name__})", "depth_gt") from None
        if raw.ndim != 2 or raw.dtype not in (np.uint16, np.uint8):
            raise InputError(path, f"must be a single-channel 16-bit PNG (got {raw.dtype}, shape {raw.shape})", "depth_gt")
        depth = raw.astype(np.float32) * np.float32(scale)
    else:
        raise InputError(path, f"unsupported depth file type '{suffix}' (use .npy or 16-bit .png)", "depth_gt")
    if depth.ndim != 2:
        raise InputError(path, f"must be H x W (got shape {depth.shape})", "depth_gt")
    if depth.shape != (camera.height, camera.width):
        raise InputError(
            path, f"depth is {depth.shape[1]}x{depth.shape[0]} but camera is {camera.width}x{camera.height}", "depth_gt"
        )
    finite = np.isfinite(depth)
    if np.any(depth[finite] < 0):
        raise InputError(path, f"negative depth values ({int((depth[finite] < 0).sum())} pixels)", "depth_gt")
    return np.where(finite, depth, 0.0).astype(np.float32)


# --------------------------------------------------------------------------- load / write


def read_json(path: Path) -> Any:
    """Parse a JSON file; unreadable, non-UTF-8, malformed or absurdly nested content is a one-line error."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read ({type(exc).__name__})") from None
    except json.JSONDecodeError as exc:
        raise InputError(path, f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except (ValueError, RecursionError) as exc:  # an integer of > 4300 digits; nesting deeper than the stack
        raise InputError(path, f"invalid JSON ({type(exc).__name__})") from None


def load_scene(folder: str | Path, check_files: bool = True) -> Scene:
    """Parse and validate a scene folder.

    With ``check_files`` every image is decoded and its size checked, and the
    depth map is loaded and checked; without it only ``scene.json`` is read.
    """
    root = Path(folder)
    jpath = root / SCENE_FILE
    if not root.is_dir():
        raise InputError(root, "scene folder not found")
    if not jpath.is_file():
        raise InputError(jpath, "scene.json not found")
    raw = read_json(jpath)
    if not isinstance(raw, dict):
        raise InputError(jpath, "top level must be a JSON object")
    fmt = raw.get("format")
    if fmt != SCENE_FORMAT:
        raise InputError(jpath, f"unknown format {_short(fmt)} (expected \"{SCENE_FORMAT}\")", "format")
    camera = _parse_camera(raw.get("camera"), jpath)
    frames_raw = raw.get("frames")
    if not isinstance(frames_raw, list):
        raise InputError(jpath, "missing or not a list", "frames")
    if not frames_raw:
        raise InputError(jpath, "frame list is empty", "frames")
    warnings: list[str] = []
    frames = [_parse_frame(fr, i, camera, root, warnings) for i, fr in enumerate(frames_raw)]
    scale = _number(raw, "depth_gt_scale", "", jpath, positive=True, required=False)
    depth_gt, aif = raw.get("depth_gt"), raw.get("all_in_focus")
    for key, val in (("depth_gt", depth_gt), ("all_in_focus", aif)):
        if val is not None and (not isinstance(val, str) or not val):
            raise InputError(jpath, "must be a file name", key)
        if val is not None:
            scene_file(root, val, key)
    unknown = sorted(set(raw) - set(_TOP_FIELDS))
    if unknown:
        warnings.append(f"{jpath}: ignoring unknown field(s) {', '.join(unknown)}")
    source = raw.get("source")
    if source is not None and not isinstance(source, dict):
        warnings.append(f"{jpath}: ignoring field 'source' (not an object)")
        source = None
    if abs(camera.fx * camera.pixel_pitch_m / camera.focal_length_m - 1.0) > 0.25:
        warnings.append(
            f"{jpath}: camera.fx * pixel_pitch_m = {camera.fx * camera.pixel_pitch_m * 1e3:.2f} mm differs from "
            f"focal_length_m = {camera.focal_length_m * 1e3:.2f} mm by more than 25%"
        )
    scene = Scene(root=root, camera=camera, frames=frames, depth_gt=depth_gt, depth_gt_scale=scale,
                  all_in_focus=aif, warnings=warnings, source=source)
    if check_files:
        scene.load_frames()
        if scene.all_in_focus is not None:
            scene.load_all_in_focus()
        if scene.depth_gt is not None:
            d = scene.load_depth_gt()
            if not np.any(d > 0):
                warnings.append(f"{root / depth_gt}: depth_gt has no valid pixel")
    return scene


def write_scene(
    folder: str | Path,
    camera: Camera,
    frames: Sequence[Frame],
    images: np.ndarray,  # [F, H, W, C] float in [0, 1]
    depth_gt_m: np.ndarray | None = None,  # [H, W] metres, 0 = invalid
    all_in_focus: np.ndarray | None = None,  # [H, W, C]
    depth_format: str = "npy",
    bit_depth: int = 8,
    depth_png_scale_m: float = 1e-4,
) -> Scene:
    """Write a scene into an existing (empty or temporary) folder.

    Frame ``image`` names are taken from ``frames``; callers that want the
    whole folder to appear atomically wrap this in ``atomic_output_dir``.
    """
    root = Path(folder)
    assert images.ndim == 4 and images.shape[0] == len(frames), images.shape
    assert images.shape[1:3] == (camera.height, camera.width), (images.shape, camera)
    for frame, img in zip(frames, images):
        write_png(root / frame.image, img, bit_depth)
    depth_rel = scale = aif_rel = None
    if depth_gt_m is not None:
        assert depth_gt_m.shape == (camera.height, camera.width), depth_gt_m.shape
        depth = np.where(np.isfinite(depth_gt_m) & (depth_gt_m > 0), depth_gt_m, 0.0).astype(np.float32)
        if depth_format == "npy":
            depth_rel = "depth_gt.npy"
            save_npy_atomic(root / depth_rel, depth)
        elif depth_format == "png16":
            # The finest step that still fits the deepest pixel into 16 bits.
            scale = max(depth_png_scale_m, float(np.ceil(depth.max() / 65535.0 * 1e6) / 1e6))
            depth_rel = "depth_gt.png"
            units = np.round(depth / scale)
            write_png(root / depth_rel, units.astype(np.uint16))
        else:
            raise ValueError(f"depth_format must be 'npy' or 'png16' (got {depth_format!r})")
    if all_in_focus is not None:
        aif_rel = "aif.png"
        write_png(root / aif_rel, all_in_focus, bit_depth)
    scene = Scene(root=root, camera=camera, frames=list(frames), depth_gt=depth_rel, depth_gt_scale=scale,
                  all_in_focus=aif_rel)
    write_json_atomic(root / SCENE_FILE, scene.to_json())
    return scene
