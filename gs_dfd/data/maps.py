"""Per-pixel maps (depth, confidence) stored as ``.npy``: read and check them against a camera."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gs_dfd.data.scene import Camera
from gs_dfd.errors import InputError


def load_map_npy(path: Path, camera: Camera, field: str | None, see: Path, what: str = "map",
                 float_only: bool = False) -> np.ndarray:
    """``[H, W]`` float32 of the camera's size, or a one-line :class:`InputError` naming ``path`` and ``field``.

    ``what`` names the map in messages ("prediction", "map"); ``see`` is the file that defines the camera;
    ``float_only`` refuses integer arrays (a depth prediction must be float metres).
    """
    if not path.is_file():
        raise InputError(path, f"{what} file not found", field)
    try:
        raw = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises several types for corrupt files
        raise InputError(path, f"cannot read .npy ({type(exc).__name__})", field) from None
    numeric = np.issubdtype(raw.dtype, np.floating) or (not float_only and np.issubdtype(raw.dtype, np.integer))
    if not numeric:
        kind = "float metres" if float_only else "numbers"
        raise InputError(path, f"{what} must hold {kind} (got dtype {raw.dtype})", field)
    if raw.ndim != 2:
        raise InputError(path, f"{what} must be H x W (got shape {raw.shape})", field)
    if raw.shape != (camera.height, camera.width):
        raise InputError(path, f"{what} is {raw.shape[1]}x{raw.shape[0]} but the camera is "
                               f"{camera.width}x{camera.height} (see {see})", field)
    return raw.astype(np.float32)
