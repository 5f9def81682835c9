"""Per-pixel maps (depth, confidence) stored as ``.npy``: read and check them against a camera."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gs_dfd.errors import InputError

if TYPE_CHECKING:  # scene.py imports this module: no import cycle at run time
    from gs_dfd.data.scene import Camera

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}" if text else type(exc).__name__


def _npy_header(path: Path, field: str | None) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) from a ``.npy`` header, without reading the data.

    Lets a truncated file, an ``.npz`` or a pickle under a ``.npy`` name be refused
    before numpy allocates what a (possibly forged) header declares.
    """
    try:
        with open(path, "rb") as fh:
            magic = fh.read(6)
            if magic[:4] == _ZIP_MAGIC:
                raise InputError(path, "cannot read .npy: it is an .npz archive, not a .npy array "
                                       "(save one array with np.save)", field)
            if magic != _NPY_MAGIC:
                raise InputError(path, "cannot read .npy: not a .npy file (no NumPy header; "
                                       "save the array with np.save)", field)
            fh.seek(0)
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _fortran, dtype = read(fh)
            return tuple(shape), np.dtype(dtype), fh.tell()
    except InputError:
        raise
    except Exception as exc:  # numpy raises ValueError / EOFError / SyntaxError for a corrupt header
        raise InputError(path, f"cannot read .npy header ({_reason(exc)})", field) from None


def load_npy(path: Path, field: str | None, what: str = "map") -> np.ndarray:
    """The one array in a ``.npy`` file, never unpickled; anything else is a one-line :class:`InputError`.

    Refuses a missing file, a folder, an ``.npz`` or other content under a ``.npy`` name,
    object arrays, and a body shorter than its header declares.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"is a folder, not a {what} file" if path.is_dir() else f"{what} file not found", field)
    shape, dtype, offset = _npy_header(path, field)
    if dtype.hasobject:
        raise InputError(path, f"{what} holds Python objects (dtype {dtype}); store a numeric array", field)
    need = math.prod(shape) * dtype.itemsize
    have = path.stat().st_size - offset
    if have < need:
        raise InputError(path, f"truncated: header declares shape {shape} {dtype} ({need} bytes), file holds "
                               f"{max(have, 0)} bytes", field)
    try:
        raw = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises several types for corrupt files
        raise InputError(path, f"cannot read .npy ({_reason(exc)})", field) from None
    if not isinstance(raw, np.ndarray):  # defensive: np.load returns an NpzFile for zip content
        getattr(raw, "close", lambda: None)()
        raise InputError(path, "not a single .npy array", field)
    return raw


def load_map_npy(path: Path, camera: Camera, field: str | None, see: Path, what: str = "map",
                 float_only: bool = False) -> np.ndarray:
    """``[H, W]`` float32 of the camera's size, or a one-line :class:`InputError` naming ``path`` and ``field``.

    ``what`` names the map in messages ("prediction", "map"); ``see`` is the file that defines the camera;
    ``float_only`` refuses integer arrays (a depth prediction must be float metres, not quantised units).
    """
    raw = load_npy(path, field, what)
    numeric = np.issubdtype(raw.dtype, np.floating) or (not float_only and np.issubdtype(raw.dtype, np.integer))
    if not numeric:
        kind = "floating-point values (float32)" if float_only else "numbers"
        raise InputError(path, f"{what} must hold {kind} (got dtype {raw.dtype})", field)
    if raw.ndim != 2:
        raise InputError(path, f"{what} must be H x W (got shape {raw.shape})", field)
    if raw.shape != (camera.height, camera.width):
        raise InputError(path, f"{what} is {raw.shape[1]}x{raw.shape[0]} but the camera is "
                               f"{camera.width}x{camera.height} (see {see})", field)
    return raw.astype(np.float32)
