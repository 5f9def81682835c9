"""Depth map -> coloured point cloud (open3d), for looking at a fit or a prediction in 3D.

A fit folder and a predict folder both hold ``depth.npy`` (float32 metres,
camera-space z, H x W; 0 or non-finite = no depth) and ``camera.json``
(``gs_dfd.export.camera_json``); the colour is ``aif.png`` (fit) or
``image.png`` (predict), the optional ``confidence.npy`` in [0, 1].

Back-projection uses the renderer's pixel convention (``gs_dfd.render.projection``
and the rasterisers): pixel ``(u, v)`` has its centre at image coordinates
``(u + 0.5, v + 0.5)``, and a camera point ``(x, y, z)`` projects to
``(fx x / z + cx, fy y / z + cy)``; so a point re-projects exactly onto the
centre of the pixel it came from. Axes are OpenCV's (x right, y down, z forward).
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import numpy as np

from gs_dfd.data.images import read_image, to_channels
from gs_dfd.data.scene import Camera
from gs_dfd.data.maps import load_map_npy
from gs_dfd.errors import InputError
from gs_dfd.export.camera_json import CAMERA_FILE, read_camera_json
from gs_dfd.utils.atomic import write_file_atomic

COLOR_FILE = {"fit": "aif.png", "predict": "image.png"}
POINT_CLOUD_SUFFIXES = (".ply", ".pcd")
NORMAL_NEIGHBORS = 30


@dataclass
class DepthOutput:
    """What ``gs-dfd fit`` / ``predict`` left in a folder, validated against its camera."""

    root: Path
    camera: Camera
    world_to_cam: np.ndarray  # [4, 4]
    depth: np.ndarray  # [H, W] float32 metres, NaN where there is no depth
    colors: np.ndarray  # [H, W, 3] float32 in [0, 1]
    confidence: np.ndarray | None  # [H, W] float32 in [0, 1], NaN -> 0

    @property
    def depth_path(self) -> Path:
        return self.root / "depth.npy"


def _load_map(path: Path, camera: Camera, field: str, camera_path: Path) -> np.ndarray:
    """A float ``[H, W]`` map of the camera's size: fit and predict write float32, so integers are refused."""
    return load_map_npy(path, camera, field, camera_path, what=field, float_only=True)


# The file each command writes last: a folder without it is not a finished run (only folders from before outputs
# were built whole can lack it).
LAST_FILE = {"fit": "metrics.json", "predict": "prediction.json"}


def check_complete(root: Path, source: Literal["fit", "predict"]) -> None:
    """Refuse a fit / predict folder that a run did not finish (no final file)."""
    if not (root / LAST_FILE[source]).is_file():
        raise InputError(root, f"is not a finished gs-dfd {source} output (no {LAST_FILE[source]}): run gs-dfd "
                               f"{source} again", f"--{source}")


def load_depth_output(root: str | Path, source: Literal["fit", "predict"],
                      need_confidence: bool = False) -> DepthOutput:
    """Read and check ``depth.npy``, ``camera.json``, the colour image and (if present) ``confidence.npy``."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, f"{source} folder not found", f"--{source}")
    check_complete(root, source)
    camera_path = root / CAMERA_FILE
    camera, w2c = read_camera_json(camera_path)
    depth = _load_map(root / "depth.npy", camera, "depth", camera_path)
    finite = np.isfinite(depth)
    if np.any(depth[finite] < 0):
        n_neg = int((depth[finite] < 0).sum())
        raise InputError(root / "depth.npy", f"negative depth values ({n_neg} pixels)", "depth")
    depth = np.where(finite & (depth > 0), depth, np.nan).astype(np.float32)
    if not np.isfinite(depth).any():
        raise InputError(root / "depth.npy", "no valid depth (0 or non-finite everywhere)", "depth")
    color_path = root / COLOR_FILE[source]
    img = read_image(color_path, field="colour")
    if img.shape[:2] != depth.shape:
        raise InputError(color_path, f"image is {img.shape[1]}x{img.shape[0]} but camera is "
                                     f"{camera.width}x{camera.height} (see {camera_path})", "colour")
    conf_path = root / "confidence.npy"
    confidence = None
    if conf_path.exists():
        confidence = _load_map(conf_path, camera, "confidence", camera_path)
        finite = np.isfinite(confidence)
        outside = int((~np.isnan(confidence) & ~(finite & (confidence >= 0) & (confidence <= 1))).sum())
        if outside:  # NaN is "no confidence" (0); anything else must be in [0, 1]
            raise InputError(conf_path, f"confidence must be in [0, 1] ({outside} pixels are not)", "confidence")
        confidence = np.nan_to_num(confidence, nan=0.0)
    elif need_confidence:
        raise InputError(conf_path, "not found, but --confidence-min needs it", "--confidence-min")
    return DepthOutput(root=root, camera=camera, world_to_cam=w2c, depth=depth, colors=to_channels(img, 3),
                       confidence=confidence)


def backproject(depth: np.ndarray, camera: Camera, mask: np.ndarray) -> np.ndarray:
    """Camera-frame points ``[M, 3]`` of the pixels in ``mask`` (row-major order), at pixel centres."""
    h, w = depth.shape
    assert (h, w) == (camera.height, camera.width) and mask.shape == (h, w), (depth.shape, mask.shape)
    v, u = np.nonzero(mask)
    z = depth[v, u].astype(np.float64)
    x = (u + 0.5 - camera.cx) / camera.fx * z
    y = (v + 0.5 - camera.cy) / camera.fy * z
    return np.stack([x, y, z], axis=1)


def cam_to_world(points: np.ndarray, world_to_cam: np.ndarray) -> np.ndarray:
    """``[M, 3]`` camera-frame points (or, with zero translation, directions) -> world."""
    assert points.ndim == 2 and points.shape[1] == 3 and world_to_cam.shape == (4, 4)
    rot, t = world_to_cam[:3, :3], world_to_cam[:3, 3]
    return (points - t) @ rot  # R^T (p - t), row vectors


def world_to_cam_points(points: np.ndarray, world_to_cam: np.ndarray) -> np.ndarray:
    assert points.ndim == 2 and points.shape[1] == 3 and world_to_cam.shape == (4, 4)
    return points @ world_to_cam[:3, :3].T + world_to_cam[:3, 3]


def make_point_cloud(points: np.ndarray, colors: np.ndarray, normals: np.ndarray | None = None):
    """An ``open3d.geometry.PointCloud`` from ``[M, 3]`` points, ``[M, 3]`` colours in [0, 1], optional normals."""
    import open3d as o3d

    assert points.shape == colors.shape and points.shape[1:] == (3,), (points.shape, colors.shape)
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.ascontiguousarray(points, np.float64)))
    pcd.colors = o3d.utility.Vector3dVector(np.ascontiguousarray(np.clip(colors, 0, 1), np.float64))
    if normals is not None:
        pcd.normals = o3d.utility.Vector3dVector(np.ascontiguousarray(normals, np.float64))
    return pcd


def estimate_normals_towards(pcd, camera_centre: np.ndarray) -> None:
    """Normals from the ``NORMAL_NEIGHBORS`` nearest points, flipped to face the camera that saw them."""
    import open3d as o3d

    pcd.estimate_normals(o3d.geometry.KDTreeSearchParamKNN(knn=NORMAL_NEIGHBORS))
    pcd.orient_normals_towards_camera_location(np.asarray(camera_centre, np.float64))


@contextlib.contextmanager
def native_stderr_captured() -> Iterator[list[str]]:
    """Collect what C/C++ code writes to file descriptor 2 (not Python's sys.stderr) inside the block; the list
    holds its lines afterwards."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(sink.read(1 << 16).decode(errors="replace").splitlines())


def write_point_cloud(path: str | Path, pcd) -> Path:
    """Binary PLY or PCD by the extension, atomically (the temp name keeps it: open3d picks the format from it)."""
    import open3d as o3d

    def _write(tmp: Path) -> None:
        with native_stderr_captured() as said:  # RPly prints one line per failed value; one error line instead
            ok = o3d.io.write_point_cloud(str(tmp), pcd, write_ascii=False, compressed=False, print_progress=False)
        if not ok:
            reason = said[0].strip() if said and said[0].strip() else "open3d could not write the point cloud"
            raise OSError(errno.EIO, reason, str(path))

    return write_file_atomic(path, _write)
