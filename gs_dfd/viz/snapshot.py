"""Pictures of a point cloud from a few viewpoints, in plain NumPy.

open3d's off-screen renderer needs EGL or Vulkan (it fails on a headless
machine without a GPU: "Failed to load vulkan library"), so the views are
z-buffered square splats through a virtual pinhole camera instead: the
reference camera turned about the cloud's median point. Works anywhere,
deterministic, fast enough for a few hundred thousand points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BACKGROUND = (0.13, 0.13, 0.15)


@dataclass(frozen=True)
class View:
    """The reference camera turned about the pivot: ``yaw_deg`` > 0 moves it left, ``pitch_deg`` > 0 up."""

    title: str
    yaw_deg: float = 0.0
    pitch_deg: float = 0.0


DEFAULT_VIEWS = (View("front (reference camera)"), View("20° left", yaw_deg=20.0), View("20° right", yaw_deg=-20.0),
                 View("35° from above", pitch_deg=35.0))


def _rotation(yaw_deg: float, pitch_deg: float) -> np.ndarray:  # [3, 3]
    """Rotation of the camera about the pivot, in the reference camera's axes (x right, y down, z forward)."""
    a, b = math.radians(yaw_deg), math.radians(pitch_deg)
    # Yaw about the vertical (y) axis: the camera centre (0, 0, -D) relative to the pivot goes to x = -D sin a.
    yaw = np.array([[math.cos(a), 0.0, math.sin(a)], [0.0, 1.0, 0.0], [-math.sin(a), 0.0, math.cos(a)]])
    # Pitch about the horizontal (x) axis: the centre goes to y = -D sin b (up, since y points down).
    pitch = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(b), math.sin(b)], [0.0, -math.sin(b), math.cos(b)]])
    return yaw @ pitch


def view_points(points: np.ndarray, pivot: np.ndarray, view: View) -> np.ndarray:
    """Reference-camera points ``[N, 3]`` -> the turned camera's frame ``[N, 3]``.

    Turning the camera by ``Q`` about the pivot is turning the points by ``Q^T`` about it.
    """
    q = _rotation(view.yaw_deg, view.pitch_deg)
    return (points - pivot) @ q + pivot  # row vectors: (Q^T (p - c))^T = (p - c)^T Q


def splat(points: np.ndarray, colors: np.ndarray, size_m: np.ndarray, fx: float, fy: float, cx: float, cy: float,
          width: int, height: int, max_splat_px: int = 3,
          background: tuple[float, float, float] = BACKGROUND) -> np.ndarray:
    """Z-buffered square splats: ``[N, 3]`` camera-frame points, ``[N, 3]`` colours, ``[N]`` footprints (metres).

    Each point covers ``round(fx * size_m / z)`` pixels (1 to ``max_splat_px``)
    so surfaces stay closed; the nearest point wins each pixel. Returns
    ``[height, width, 3]`` float32 in [0, 1].
    """
    n = points.shape[0]
    assert points.shape == (n, 3) and colors.shape == (n, 3) and size_m.shape == (n,), (points.shape, colors.shape)
    img = np.empty((height, width, 3), np.float32)
    img[:] = background
    z = points[:, 2]
    front = z > 1e-6
    pts, col, z, size_m = points[front], colors[front], z[front], size_m[front]
    u = fx * pts[:, 0] / z + cx
    v = fy * pts[:, 1] / z + cy
    size = np.clip(np.rint(fx * size_m / z), 1, max_splat_px).astype(np.int64)
    # Square of `size` pixels whose centre is nearest to (u, v): start at round(u - size / 2).
    u0 = np.floor(u - size / 2 + 0.5).astype(np.int64)
    v0 = np.floor(v - size / 2 + 0.5).astype(np.int64)
    keep = (u0 + size > 0) & (u0 < width) & (v0 + size > 0) & (v0 < height)
    u0, v0, size, z, col = u0[keep], v0[keep], size[keep], z[keep], col[keep]
    pix, depth, src = [], [], []
    for dy in range(max_splat_px):
        for dx in range(max_splat_px):
            m = (dx < size) & (dy < size)
            uu, vv = u0[m] + dx, v0[m] + dy
            ok = (uu >= 0) & (uu < width) & (vv >= 0) & (vv < height)
            pix.append((vv[ok] * width + uu[ok]))
            depth.append(z[m][ok])
            src.append(np.nonzero(m)[0][ok])
    pix_a, depth_a, src_a = np.concatenate(pix), np.concatenate(depth), np.concatenate(src)
    if pix_a.size:
        order = np.lexsort((depth_a, pix_a))  # by pixel, then nearest first
        pix_s = pix_a[order]
        first = np.ones(pix_s.size, bool)
        first[1:] = pix_s[1:] != pix_s[:-1]
        img.reshape(-1, 3)[pix_s[first]] = col[src_a[order][first]]
    return img


def frame_intrinsics(points: np.ndarray, width: int, height: int, margin: float = 0.04,
                     percentiles: tuple[float, float] = (0.5, 99.5)) -> tuple[float, float, float, float]:
    """(fx, fy, cx, cy) of a square-pixel camera at the origin looking down +z that fits ``[N, 3]`` points
    (their ``percentiles`` of x/z and y/z, so a few strays do not shrink the picture) into the image."""
    front = points[:, 2] > 1e-6
    ax, ay = points[front, 0] / points[front, 2], points[front, 1] / points[front, 2]
    (x0, x1), (y0, y1) = np.percentile(ax, percentiles), np.percentile(ay, percentiles)
    f = min(width * (1 - 2 * margin) / max(x1 - x0, 1e-9), height * (1 - 2 * margin) / max(y1 - y0, 1e-9))
    return f, f, width / 2 - f * (x0 + x1) / 2, height / 2 - f * (y0 + y1) / 2


def render_views(points: np.ndarray, colors: np.ndarray, size_m: np.ndarray, width: int, height: int,
                 views=DEFAULT_VIEWS, tile_width_px: tuple[int, int] = (240, 480), min_fov_deg: float = 40.0,
                 orbit_distance: float = 2.0, min_splat_px: int = 2) -> tuple[list[np.ndarray], float]:
    """One picture ``[h, w, 3]`` per view of reference-camera points ``[N, 3]`` (``width x height`` scaled to
    ``tile_width_px[0]`` to ``[1]`` pixels wide), and the lateral stretch applied to the turned views.

    A view without a turn is the reference camera itself (re-framed). A
    turned view orbits the points' median at ``orbit_distance`` times the
    reference camera's distance to it (less perspective distortion of near
    objects) and re-frames the points (focal length and principal point). A
    long lens sees a cloud much deeper than wide, which from any side is a
    thin sliver; so for turned views x and y are stretched about the camera
    centre until the cloud spans ``min_fov_deg`` across, as if seen through a
    wider lens (planes stay planes, the depth order stays). The caller
    should say so when the stretch is not 1.
    """
    n = points.shape[0]
    assert points.shape == (n, 3) and colors.shape == (n, 3) and size_m.shape == (n,)
    scale = min(max(width, tile_width_px[0]), tile_width_px[1]) / width
    w, h = int(round(width * scale)), int(round(height * scale))
    front = points[:, 2] > 1e-6
    x0, x1 = np.percentile(points[front, 0] / points[front, 2], [0.5, 99.5]) if front.any() else (-1.0, 1.0)
    stretch = max(1.0, 2 * math.tan(math.radians(min_fov_deg / 2)) / max(x1 - x0, 1e-9))
    out = []
    for v in views:
        turned = v.yaw_deg != 0 or v.pitch_deg != 0
        k = stretch if turned else 1.0
        pts = points * np.array([k, k, 1.0])
        pivot = np.median(pts, axis=0)
        pts = view_points(pts, pivot, v)
        if turned:
            pts[:, 2] += (orbit_distance - 1.0) * float(np.linalg.norm(pivot))
        fx, fy, cx, cy = frame_intrinsics(pts, w, h)
        size = np.maximum(size_m * k, min_splat_px * np.abs(pts[:, 2]) / fx)
        out.append(splat(pts, colors, size, fx, fy, cx, cy, w, h))
    return out, stretch
