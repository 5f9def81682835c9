"""Atomic files: a reader sees the old file or the complete new one, never a
half-written one (after a crash, Ctrl-C or a full disk). Whole output folders
and the rules on where outputs may go live in :mod:`gs_dfd.utils.outputs`."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _tmp_sibling(path: Path, suffix: str = "") -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    os.chmod(name, 0o666 & ~umask())  # mkstemp makes 0600; outputs get the usual permissions
    return Path(name)


def write_file_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then rename over ``path``; the temp keeps the extension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path, suffix=path.suffix)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    return write_file_atomic(path, lambda p: p.write_bytes(data))


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    text = json.dumps(obj, indent=2) + "\n"
    return write_file_atomic(path, lambda p: p.write_text(text))


def save_npy_atomic(path: str | Path, array: np.ndarray) -> Path:
    def _write(p: Path) -> None:
        with open(p, "wb") as fh:
            np.save(fh, array)

    return write_file_atomic(path, _write)
