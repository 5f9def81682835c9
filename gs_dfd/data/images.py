"""Image I/O: 8/16-bit, gray/RGB in; float32 in [0, 1] out."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np

from gs_dfd.errors import InputError
from gs_dfd.utils.atomic import write_file_atomic

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MIN_IMAGE_SIDE_PX = 8  # smaller images cannot hold a blur estimate; usually a broken export


def _to_float(raw: np.ndarray, path: Path, field: str | None) -> np.ndarray:
    if raw.dtype == np.uint8:
        return raw.astype(np.float32) / 255.0
    if raw.dtype == np.uint16:
        return raw.astype(np.float32) / 65535.0
    if raw.dtype == np.bool_:
        return raw.astype(np.float32)
    if np.issubdtype(raw.dtype, np.floating):
        img = raw.astype(np.float32)
        if not np.all(np.isfinite(img)) or img.min() < 0 or img.max() > 1:
            raise InputError(path, "floating-point image must hold finite values in [0, 1]", field)
        return img
    raise InputError(path, f"unsupported pixel type {raw.dtype} (use 8- or 16-bit PNG/JPEG)", field)


def png_header(path: Path) -> tuple[int, int] | None:
    """(bit depth, colour type) of a PNG file, or None for other files."""
    with open(path, "rb") as fh:
        head = fh.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return head[24], head[25]


def _read_png16_color(path: Path) -> np.ndarray:
    """16-bit colour PNGs through pypng: Pillow silently reduces them to 8 bits."""
    import png

    width, height, rows, info = png.Reader(filename=str(path)).asDirect()
    arr = np.vstack([np.asarray(r, dtype=np.uint16) for r in rows])
    return arr.reshape(height, width, info["planes"])


def first_line(exc: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}" if text else type(exc).__name__


def open_image(path: Path, field: str | None):
    """Open an image lazily (header only); a decompression bomb or an unreadable file is a one-line error."""
    from PIL import Image

    if not path.is_file():
        raise InputError(path, "is a folder, not an image file" if path.is_dir() else "image file not found", field)
    try:
        return Image.open(path)
    except Image.DecompressionBombError as exc:
        raise InputError(path, f"image too large to decode safely ({first_line(exc)})", field) from None
    except Exception as exc:  # Pillow raises several types for files it does not recognise
        raise InputError(path, f"cannot read image ({first_line(exc)})", field) from None


# Pillow modes kept as they are: numpy reads them as gray (+ alpha) / RGB(A) arrays of 1, 8, 16 or 32 bits.
_KEEP_MODES = {"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F", "RGB", "RGBA"}


def _pixels(img) -> np.ndarray:
    """Pixels of a Pillow image as stored (no EXIF rotation); other colour models are converted to RGB.

    Pillow decodes a CMYK or YCbCr JPEG, a LAB TIFF or a palette PNG in its own colour model;
    numpy would see 4 CMYK channels, or palette indices, as if they were RGB.
    """
    mode = img.mode
    if mode not in _KEEP_MODES:  # the alpha of PA / RGBa / a transparent palette is dropped later
        img = img.convert("RGBA" if mode in ("PA", "RGBa") or "transparency" in img.info else "RGB")
    raw = np.asarray(img)
    if raw.dtype.byteorder not in ("=", "|"):  # 'I;16B': big-endian 16-bit gray
        raw = raw.astype(raw.dtype.newbyteorder("="))
    if mode == "I":  # 32-bit integer gray: a 16-bit gray PNG or TIFF as some Pillow versions open it
        if raw.size and (raw.min() < 0 or raw.max() > 65535):
            raise ValueError("32-bit integer pixels outside the 16-bit range")
        raw = raw.astype(np.uint16)
    return raw


def check_image_size(path: Path, width: int, height: int, field: str | None = None) -> None:
    """Refuse, in one line, an image too small to hold a defocus signal (under MIN_IMAGE_SIDE_PX on a side)."""
    if min(width, height) < MIN_IMAGE_SIDE_PX:
        raise InputError(path, f"image is {width}x{height}: too small (need at least "
                               f"{MIN_IMAGE_SIDE_PX}x{MIN_IMAGE_SIDE_PX} pixels)", field)


def _imread(path: Path, field: str | None = None) -> np.ndarray:
    """Decode an image after checking its header: too small, too large or unreadable are one-line errors."""
    img = open_image(path, field)
    with img:
        width, height = img.size
        check_image_size(path, width, height, field)
        try:
            header = png_header(path)
            if header is not None and header[0] == 16 and header[1] in (2, 4, 6):
                return _read_png16_color(path)
            img.seek(0)  # the first frame of an animation or a multi-page file
            return _pixels(img)
        except Exception as exc:  # truncated or corrupt data: Pillow and pypng raise many types
            raise InputError(path, f"cannot read image ({first_line(exc)})", field) from None


def _write_png(path: Path, arr: np.ndarray) -> None:
    if arr.dtype == np.uint16 and arr.ndim == 3:
        import png

        h, w, c = arr.shape
        writer = png.Writer(w, h, bitdepth=16, greyscale=c < 3, alpha=c in (2, 4))
        with open(path, "wb") as fh:
            writer.write(fh, arr.reshape(h, w * c))
    else:
        iio.imwrite(path, arr, extension=".png", plugin="pillow")


def read_image(path: str | Path, field: str | None = None) -> np.ndarray:
    """Read an image as float32 ``[H, W, C]`` in [0, 1] with C = 1 (gray) or 3 (RGB).

    An alpha channel is dropped (focal-stack frames are opaque photos); CMYK, YCbCr,
    LAB and palette images are converted to RGB. Pixels stay as stored (no EXIF
    rotation). Images under ``MIN_IMAGE_SIDE_PX`` on a side are refused.
    """
    path = Path(path)
    raw = _imread(path, field)
    if raw.ndim == 2:
        raw = raw[:, :, None]
    if raw.ndim != 3 or raw.shape[2] not in (1, 2, 3, 4):
        raise InputError(path, f"unsupported image shape {tuple(raw.shape)} (need H x W gray or RGB)", field)
    if raw.shape[2] == 2:  # gray + alpha
        raw = raw[:, :, :1]
    elif raw.shape[2] == 4:  # RGBA
        raw = raw[:, :, :3]
    return _to_float(raw, path, field)


def image_size(path: str | Path, field: str | None = None) -> tuple[int, int]:
    """(width, height) of an image, from its header only (nothing is decoded)."""
    path = Path(path)
    with open_image(path, field) as img:
        return img.size


def image_megapixels(path: str | Path, field: str | None = None) -> float:
    """Pixel count in millions, from the header only: lets a caller refuse a huge image before decoding it."""
    width, height = image_size(path, field)
    return width * height / 1e6


def to_channels(img: np.ndarray, channels: int) -> np.ndarray:
    """Gray -> RGB by replication (``[H, W, 1] -> [H, W, 3]``); RGB stays."""
    assert img.ndim == 3
    if img.shape[2] == channels:
        return img
    if img.shape[2] == 1 and channels == 3:
        return np.repeat(img, 3, axis=2)
    if img.shape[2] == 3 and channels == 1:
        return img.mean(axis=2, keepdims=True)
    raise ValueError(f"cannot convert {img.shape[2]} channels to {channels}")


def quantize(img: np.ndarray, bit_depth: int = 8) -> np.ndarray:
    """float [0, 1] -> uint8 / uint16 with rounding; ``[H, W, C]`` with C = 1 is squeezed."""
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16 (got {bit_depth})")
    top = 255 if bit_depth == 8 else 65535
    out = np.round(np.clip(img, 0.0, 1.0) * top).astype(np.uint8 if bit_depth == 8 else np.uint16)
    if out.ndim == 3 and out.shape[2] == 1:
        out = out[:, :, 0]
    return out


def write_png(path: str | Path, img: np.ndarray, bit_depth: int = 8) -> Path:
    """Write a float image in [0, 1] (or an integer array as is) as PNG, atomically."""
    arr = img if np.issubdtype(img.dtype, np.integer) else quantize(img, bit_depth)
    return write_file_atomic(path, lambda p: _write_png(p, arr))


def resize_image(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Anti-aliased bilinear resize of ``[H, W, C]`` float images."""
    import torch
    import torch.nn.functional as F

    assert img.ndim == 3, img.shape
    if img.shape[:2] == (height, width):
        return img
    x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)).permute(2, 0, 1)[None]
    y = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return y[0].permute(1, 2, 0).clamp(0, 1).numpy()


def resize_nearest(values: np.ndarray, width: int, height: int) -> np.ndarray:
    """Nearest-neighbour resize of ``[H, W]`` maps (depth: no mixing across edges or holes)."""
    assert values.ndim == 2, values.shape
    if values.shape == (height, width):
        return values
    rows = np.minimum(((np.arange(height) + 0.5) * values.shape[0] / height).astype(int), values.shape[0] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * values.shape[1] / width).astype(int), values.shape[1] - 1)
    return values[rows[:, None], cols[None, :]]


def crop_border(values: np.ndarray, crop_px: tuple[int, int, int, int]) -> np.ndarray:
    """Cut (left, top, right, bottom) pixels off an ``[H, W, ...]`` array."""
    left, top, right, bottom = crop_px
    h, w = values.shape[:2]
    if min(crop_px) < 0 or left + right >= w or top + bottom >= h:
        raise InputError(None, f"crop {tuple(crop_px)} does not fit a {w}x{h} image", "--crop-px")
    return values[top:h - bottom, left:w - right]
