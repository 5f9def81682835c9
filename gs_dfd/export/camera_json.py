"""``camera.json`` (``gs_dfd.camera/1``): the camera next to a depth map, so that it can be back-projected.

Written by ``gs-dfd fit`` and ``gs-dfd predict`` next to their ``depth.npy``; read by ``gs-dfd export``::

    {
      "format": "gs_dfd.camera/1",
      "camera": {"width": 320, "height": 240, "fx": 2083.3, "fy": 2083.3, "cx": 160.0, "cy": 120.0,
                 "focal_length_m": 0.05, "f_number": 8.0, "pixel_pitch_m": 2.4e-05},
      "world_to_cam": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    }

``camera`` is exactly the scene's camera (``Camera.to_json()``, as in
``scene.json``); ``world_to_cam`` is the 4x4 row-major pose of the view the
depth map belongs to (the reference frame, frame 0), OpenCV axes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gs_dfd.data.scene import Camera, _parse_camera, _parse_world_to_cam, _short, read_json
from gs_dfd.errors import InputError
from gs_dfd.utils.atomic import write_json_atomic

CAMERA_FORMAT = "gs_dfd.camera/1"
CAMERA_FILE = "camera.json"


def write_camera_json(path: str | Path, camera: Camera, world_to_cam: np.ndarray | None = None) -> Path:
    """Write atomically; ``world_to_cam`` ``[4, 4]`` (None = identity)."""
    w2c = np.eye(4) if world_to_cam is None else np.asarray(world_to_cam, dtype=np.float64)
    assert w2c.shape == (4, 4), w2c.shape
    return write_json_atomic(path, {"format": CAMERA_FORMAT, "camera": camera.to_json(), "world_to_cam": w2c.tolist()})


def read_camera_json(path: str | Path) -> tuple[Camera, np.ndarray]:
    """(camera, world_to_cam ``[4, 4]``), validated with the scene format's rules; errors name file and field."""
    path = Path(path)
    if path.is_dir():
        raise InputError(path, "is a folder, not a camera.json file")
    if not path.is_file():
        raise InputError(path, "camera.json not found (written by gs-dfd fit and gs-dfd predict)")
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise InputError(path, "top level must be a JSON object")
    if raw.get("format") != CAMERA_FORMAT:
        raise InputError(path, f"unknown format {_short(raw.get('format'))} (expected \"{CAMERA_FORMAT}\")",
                         "format")
    camera = _parse_camera(raw.get("camera"), path)
    if "world_to_cam" not in raw:
        raise InputError(path, "missing", "world_to_cam")
    return camera, _parse_world_to_cam(raw["world_to_cam"], path, "world_to_cam")
