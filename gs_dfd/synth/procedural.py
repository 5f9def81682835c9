"""Procedural all-in-focus scenes with exact depth, for synthetic focal stacks.

Every surface is a plane. With camera rays ``r = ((x - cx) / fx, (y - cy) / fx, 1)``
a plane ``n . X = d`` has inverse depth ``q = P . r`` with ``P = n / d``, which
is affine in pixel coordinates, like the thin-lens CoC. So the visible scene
is the per-pixel maximum of affine inverse-depth maps, object silhouettes cut
it with sharp occlusion edges, and any affine remap ``q -> a q + b`` (used to
fit the requested depth range) keeps every piece planar.

Textures are mapped in each plane's own coordinates (perspective-correct), so
their image-space frequency varies with depth, as in real photographs, and
are pre-blurred where a pixel spans several texels (a mip-map in spirit), so
far and grazing surfaces show no moire that a real lens would not. The
pinhole (``fx = 1.2 * width``, principal point at the centre) is only for the
geometry; the lens that defocuses the scene is chosen by the caller.

Kinds:

* ``planes``: a room of 2-4 textured planes (back wall plus floor, ceiling or
  side walls), continuous depth with creases.
* ``occlusion``: a textured slanted background (plane or room) with textured
  objects (discs, ellipses, rectangles, slightly slanted) well in front of it.
* ``textureless``: like ``occlusion`` but with uniform-colour regions (a patch
  on the background and at least one large object) where depth from defocus
  is ill-posed.
* ``mixed``: a random combination of all of the above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

PROCEDURAL_KINDS = ("planes", "occlusion", "textureless", "mixed")

_FX_PER_WIDTH = 1.2
_TEX_SIZE = 256  # texels per texture tile side
_MAX_MIP_LEVEL = 5  # texture pre-blur for up to 32 texels per pixel
_VALUE_RANGE = (0.02, 0.98)
_MIN_DEPTH_GAP = 0.12  # occluder gap, as a fraction of the inverse-depth range


# ---------------------------------------------------------------------------
# Textures


def _spectral_noise(rng: np.random.Generator, size: int, beta: float) -> np.ndarray:
    """Periodic noise with amplitude spectrum ~ 1/f^beta (1/f: natural-image-like).  # [S, S], std 1"""
    radius = np.hypot(np.fft.fftfreq(size)[:, None], np.fft.rfftfreq(size)[None, :])
    amplitude = 1.0 / np.maximum(radius, 1.0 / size) ** beta
    field = np.fft.irfft2(np.fft.rfft2(rng.standard_normal((size, size))) * amplitude, s=(size, size))
    return (field - field.mean()) / (field.std() + 1e-12)


def _random_colour(rng: np.random.Generator, lo: float = 0.15, hi: float = 0.85) -> np.ndarray:
    return rng.uniform(lo, hi, 3)


def _colour_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """Luminance 1/f noise plus smoother chroma, around a random base colour.  # [S, S, 3]"""
    lum = _spectral_noise(rng, size, rng.uniform(0.5, 1.0))
    chroma = [_spectral_noise(rng, size, rng.uniform(1.3, 2.0)) for _ in range(2)]
    base = _random_colour(rng, 0.3, 0.7)
    contrast = rng.uniform(0.18, 0.28)
    dirs = rng.normal(size=(2, 3))
    tex = base + contrast * lum[..., None] + 0.4 * contrast * sum(c[..., None] * d for c, d in zip(chroma, dirs))
    return tex


def _stripes(rng: np.random.Generator, size: int) -> np.ndarray:
    """Soft-edged stripes of two colours; the period divides the tile so it wraps."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    kx, ky = rng.integers(-12, 13, 2)
    if kx == 0 and ky == 0:
        kx = 8
    wave = np.tanh(rng.uniform(1.5, 6.0) * np.sin(2 * np.pi * (kx * xx + ky * yy)))
    a, b = _random_colour(rng), _random_colour(rng)
    return 0.5 * (a + b) + 0.5 * (a - b) * wave[..., None]


def _checker(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    cell = int(rng.choice([8, 16, 32]))
    parity = ((xx // cell + yy // cell) % 2).astype(np.float64)
    a, b = _random_colour(rng), _random_colour(rng)
    return a + (b - a) * parity[..., None]


def _dots(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    cell = int(rng.choice([16, 32]))
    radius = rng.uniform(0.2, 0.4) * cell
    dy, dx = (yy % cell) - cell / 2, (xx % cell) - cell / 2
    inside = np.clip(radius + 0.5 - np.hypot(dx, dy), 0.0, 1.0)  # one-texel soft edge
    a, b = _random_colour(rng), _random_colour(rng)
    return a + (b - a) * inside[..., None]


def _make_texture(rng: np.random.Generator, style: str) -> np.ndarray:
    """One periodic texture tile  # [S, S, 3] in [0.02, 0.98]; 'uniform' is a single colour."""
    size = _TEX_SIZE
    if style == "uniform":
        tex = np.broadcast_to(_random_colour(rng), (size, size, 3))
    elif style == "noise":
        tex = _colour_noise(rng, size)
    else:
        pattern = {"stripes": _stripes, "checker": _checker, "dots": _dots}[style](rng, size)
        grain = 0.06 * _spectral_noise(rng, size, 1.0)[..., None]  # keeps patterns from looking synthetic
        tex = pattern + grain
    return np.clip(tex, *_VALUE_RANGE)


def _random_style(rng: np.random.Generator, uniform_prob: float = 0.0) -> str:
    if rng.random() < uniform_prob:
        return "uniform"
    return str(rng.choice(["noise", "noise", "noise", "stripes", "checker", "dots"]))


# ---------------------------------------------------------------------------
# Geometry


@dataclass(frozen=True)
class _Camera:
    width: int
    height: int

    @property
    def fx(self) -> float:
        return _FX_PER_WIDTH * self.width

    def rays(self) -> np.ndarray:
        """Camera rays with z = 1 through pixel centres.  # [H, W, 3]"""
        ys, xs = np.mgrid[0:self.height, 0:self.width].astype(np.float64) + 0.5
        rx = (xs - self.width / 2.0) / self.fx
        ry = (ys - self.height / 2.0) / self.fx
        return np.stack([rx, ry, np.ones_like(rx)], axis=-1)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _room_planes(rng: np.random.Generator) -> list[np.ndarray]:
    """Plane vectors P = n / d of a back wall plus 1-3 of floor, ceiling and side walls."""
    back = _unit(np.array([rng.uniform(-0.35, 0.35), rng.uniform(-0.25, 0.25), 1.0])) / rng.uniform(3.0, 6.0)
    sides = {
        "floor": np.array([rng.uniform(-0.2, 0.2), 1.0, rng.uniform(-0.3, 0.1)]),
        "ceiling": np.array([rng.uniform(-0.2, 0.2), -1.0, rng.uniform(-0.3, 0.1)]),
        "left": np.array([-1.0, rng.uniform(-0.2, 0.2), rng.uniform(-0.4, 0.1)]),
        "right": np.array([1.0, rng.uniform(-0.2, 0.2), rng.uniform(-0.4, 0.1)]),
    }
    names = rng.permutation(list(sides))[: rng.integers(1, 4)]
    return [back] + [_unit(sides[n]) / rng.uniform(0.8, 2.0) for n in names]


def _slanted_plane(rng: np.random.Generator) -> list[np.ndarray]:
    tilt = rng.uniform(-0.8, 0.8, 2)
    return [_unit(np.array([tilt[0], tilt[1], 1.0])) / rng.uniform(2.0, 5.0)]


def _fit_range(planes: list[np.ndarray], rays: np.ndarray, q_far: float, q_near: float) -> list[np.ndarray]:
    """Affinely remap inverse depth so that the visible surface spans [q_far, q_near]."""
    q = np.max([rays @ p for p in planes], axis=0)
    lo, hi = float(q.min()), float(q.max())
    scale = (q_near - q_far) / (hi - lo) if hi > lo else 0.0
    shift = q_far - scale * lo if hi > lo else 0.5 * (q_far + q_near)
    return [scale * p + np.array([0.0, 0.0, shift]) for p in planes]


def _shape_mask(rng: np.random.Generator, cam: _Camera, size_frac: tuple[float, float]) -> np.ndarray:
    """A disc, ellipse or rotated rectangle somewhere in the image.  # [H, W] bool"""
    ys, xs = np.mgrid[0:cam.height, 0:cam.width] + 0.5
    scale = min(cam.width, cam.height)
    cx, cy = rng.uniform(0.1, 0.9) * cam.width, rng.uniform(0.1, 0.9) * cam.height
    a = rng.uniform(*size_frac) * scale
    b = a * rng.uniform(0.5, 1.0)
    angle = rng.uniform(0, np.pi)
    u = (xs - cx) * np.cos(angle) + (ys - cy) * np.sin(angle)
    v = -(xs - cx) * np.sin(angle) + (ys - cy) * np.cos(angle)
    shape = rng.choice(["disc", "ellipse", "rectangle"])
    if shape == "disc":
        return (xs - cx) ** 2 + (ys - cy) ** 2 <= a * a
    if shape == "ellipse":
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0
    return (np.abs(u) <= a) & (np.abs(v) <= b)


# ---------------------------------------------------------------------------
# Scene assembly


@dataclass
class _Canvas:
    """The scene so far: camera rays, inverse depth and colour per pixel."""

    cam: _Camera
    rays: np.ndarray  # [H, W, 3]
    q: np.ndarray  # [H, W] inverse depth (1/m)
    rgb: np.ndarray  # [H, W, 3]


def _plane_basis(plane: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two orthonormal directions in the plane, to lay a texture on it."""
    normal = _unit(plane)
    t1 = _unit(np.cross(normal, [0.0, 1.0, 0.0]) if abs(normal[1]) < 0.9 else np.cross(normal, [1.0, 0.0, 0.0]))
    return t1, np.cross(normal, t1)


def _texel_coords(rays: np.ndarray, plane: np.ndarray, basis: tuple[np.ndarray, np.ndarray],
                  texel_m: float, offset: np.ndarray) -> np.ndarray:
    """Texture coordinates (texels) where ``rays`` [M, 3] hit ``plane``.  # [2, M]"""
    points = rays / np.maximum(rays @ plane, 1e-9)[:, None]  # [M, 3] metres
    return np.stack([points @ basis[1] / texel_m + offset[0], points @ basis[0] / texel_m + offset[1]])


def _sample_filtered(tex: np.ndarray, coords: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """Bilinear texture lookup, pre-blurred where one pixel spans several texels (no moire).  # [M, 3]

    A mip-map in spirit: level l is the texture blurred by sigma = 2^l / 2
    texels, for a footprint of 2^l texels per pixel; levels blend linearly.
    """
    level = np.clip(np.log2(np.maximum(footprint, 1.0)), 0.0, _MAX_MIP_LEVEL)
    lo = np.floor(level).astype(np.int64)
    frac = level - lo
    out = np.zeros((coords.shape[1], 3))
    for lev in np.unique(np.concatenate([lo, lo[frac > 0] + 1])):
        weight = np.where(lo == lev, 1.0 - frac, 0.0) + np.where(lo + 1 == lev, frac, 0.0)
        sel = weight > 0
        sigma = 0.5 * 2.0 ** lev
        level_tex = tex if lev == 0 else ndimage.gaussian_filter(tex, sigma=(sigma, sigma, 0), mode="wrap")
        out[sel] += weight[sel, None] * np.stack(
            [ndimage.map_coordinates(level_tex[..., c], coords[:, sel], order=1, mode="grid-wrap")
             for c in range(3)], axis=-1)
    return out


def _paint(canvas: _Canvas, rng: np.random.Generator, plane: np.ndarray, mask: np.ndarray, style: str) -> None:
    """Texture the pixels ``mask`` of ``plane`` in its own plane coordinates (perspective-correct)."""
    rays = canvas.rays[mask]  # [M, 3]
    depth_typ = float(np.median(1.0 / (rays @ plane)))
    texel_m = depth_typ / canvas.cam.fx * rng.uniform(0.7, 1.6)  # about a pixel per texel: fine detail to blur
    offset = rng.uniform(0, _TEX_SIZE, 2)
    tex = _make_texture(rng, style)
    if style == "uniform":
        canvas.rgb[mask] = tex[0, 0]
        return
    basis = _plane_basis(plane)
    coords = _texel_coords(rays, plane, basis, texel_m, offset)
    step = 1.0 / canvas.cam.fx  # one pixel along x or y
    footprint = np.maximum(
        np.linalg.norm(_texel_coords(rays + [step, 0.0, 0.0], plane, basis, texel_m, offset) - coords, axis=0),
        np.linalg.norm(_texel_coords(rays + [0.0, step, 0.0], plane, basis, texel_m, offset) - coords, axis=0))
    canvas.rgb[mask] = _sample_filtered(tex, coords, footprint)


def _background(canvas: _Canvas, rng: np.random.Generator, q_far: float, q_near: float,
                room: bool, uniform_prob: float) -> None:
    planes = _room_planes(rng) if room else _slanted_plane(rng)
    planes = _fit_range(planes, canvas.rays, q_far, q_near)
    per_plane = np.stack([canvas.rays @ p for p in planes])  # [P, H, W]
    owner = np.argmax(per_plane, axis=0)
    canvas.q[:] = per_plane.max(axis=0)
    for i, p in enumerate(planes):
        mask = owner == i
        if mask.any():
            _paint(canvas, rng, p, mask, _random_style(rng, uniform_prob))


def _add_object(canvas: _Canvas, rng: np.random.Generator, q_near: float, gap: float,
                style: str, size_frac: tuple[float, float]) -> bool:
    """Put a slightly slanted planar object in front of everything under it; False if no room."""
    mask = _shape_mask(rng, canvas.cam, size_frac)
    if mask.sum() < 16:
        return False
    tilt = rng.uniform(-0.4, 0.4, 2)
    plane = np.array([tilt[0], tilt[1], 1.0])
    q_obj = canvas.rays[mask] @ plane
    behind = float(canvas.q[mask].max())
    low = behind + gap
    if low >= q_near:
        return False
    target = rng.uniform(low, low + 0.6 * (q_near - low))
    plane = plane * (target / q_obj.min())  # scaling P scales q: the object's farthest point sits at target
    q_obj = canvas.rays[mask] @ plane
    if q_obj.max() > q_near:  # too slanted to fit: make it fronto-parallel
        plane = np.array([0.0, 0.0, 0.5 * (low + q_near)])
        q_obj = canvas.rays[mask] @ plane
    canvas.q[mask] = q_obj
    _paint(canvas, rng, plane, mask, style)
    return True


def _uniform_patch(canvas: _Canvas, rng: np.random.Generator) -> None:
    """A flat-coloured poster on whatever lies there (depth unchanged): texture-free but not depth-free."""
    h, w = canvas.q.shape
    ph, pw = int(rng.uniform(0.3, 0.45) * h), int(rng.uniform(0.3, 0.45) * w)
    r0, c0 = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    canvas.rgb[r0:r0 + ph, c0:c0 + pw] = _random_colour(rng)


def _objects(canvas: _Canvas, rng: np.random.Generator, count: int, q_near: float, gap: float,
             uniform_prob: float) -> None:
    for _ in range(count):
        _add_object(canvas, rng, q_near, gap, _random_style(rng, uniform_prob), (0.06, 0.22))


def _build(kind: str, canvas: _Canvas, rng: np.random.Generator, q_far: float, q_near: float) -> None:
    span = q_near - q_far
    gap = _MIN_DEPTH_GAP * span
    if kind == "planes":
        lo = q_far + rng.uniform(0.0, 0.2) * span
        _background(canvas, rng, lo, lo + rng.uniform(0.6, 1.0) * (q_near - lo), room=True, uniform_prob=0.0)
        return
    split = q_far + rng.uniform(0.25, 0.5) * span
    if kind == "occlusion":
        _background(canvas, rng, q_far, split, room=bool(rng.random() < 0.4), uniform_prob=0.0)
        _objects(canvas, rng, int(rng.integers(3, 7)), q_near, gap, uniform_prob=0.0)
    elif kind == "textureless":
        _background(canvas, rng, q_far, split, room=bool(rng.random() < 0.4), uniform_prob=0.25)
        _uniform_patch(canvas, rng)
        _objects(canvas, rng, int(rng.integers(2, 5)), q_near, gap, uniform_prob=0.3)
        # a large uniform object last, so nothing hides it
        for _ in range(20):
            if _add_object(canvas, rng, q_near, gap, "uniform", (0.15, 0.25)):
                break
    else:  # mixed
        room = bool(rng.random() < 0.5)
        _background(canvas, rng, q_far, split if rng.random() < 0.7 else q_far + 0.8 * span, room, uniform_prob=0.2)
        if rng.random() < 0.4:
            _uniform_patch(canvas, rng)
        _objects(canvas, rng, int(rng.integers(0, 6)), q_near, gap, uniform_prob=0.25)


def _check_args(kind: str, width: int, height: int, seed: int, min_depth_m: float, max_depth_m: float) -> None:
    if kind not in PROCEDURAL_KINDS:
        raise ValueError(f"unknown procedural kind {kind!r}; expected one of {', '.join(PROCEDURAL_KINDS)}")
    for name, v in (("width", width), ("height", height)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 16:
            raise ValueError(f"{name} must be an integer >= 16 (got {v!r})")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0 (got {seed!r})")
    if not (math.isfinite(min_depth_m) and math.isfinite(max_depth_m) and 0 < min_depth_m < max_depth_m):
        raise ValueError(f"need finite 0 < min_depth_m < max_depth_m (got {min_depth_m}, {max_depth_m})")


def make_procedural_scene(kind: str, width: int, height: int, seed: int,
                          min_depth_m: float = 0.6, max_depth_m: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """An all-in-focus image and its depth: (aif [H, W, 3] float32 in [0.02, 0.98], depth_m [H, W] float32).

    Deterministic for a seed; depth lies in [min_depth_m, max_depth_m].
    """
    _check_args(kind, width, height, seed, min_depth_m, max_depth_m)
    rng = np.random.default_rng([seed, PROCEDURAL_KINDS.index(kind)])  # same seed, other kind: other scene
    cam = _Camera(int(width), int(height))
    canvas = _Canvas(cam, cam.rays(), np.zeros((cam.height, cam.width)), np.zeros((cam.height, cam.width, 3)))
    q_far, q_near = 1.0 / max_depth_m, 1.0 / min_depth_m
    _build(kind, canvas, rng, q_far, q_near)
    depth = np.clip(1.0 / np.clip(canvas.q, q_far, q_near), min_depth_m, max_depth_m)
    aif = np.clip(canvas.rgb, *_VALUE_RANGE)
    return aif.astype(np.float32), depth.astype(np.float32)
