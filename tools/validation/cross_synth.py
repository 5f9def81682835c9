"""Cross-synthesis: a second, independently written defocus synthesiser, for VALIDATION ONLY.

Why it exists (issue #28, item 1). The shipped single-image network scores well on held-out stacks made by the
project's own synthesiser (``gs_dfd.synth``) but barely beats a constant depth on stacks made by an independent
implementation of the same physics. A validation set made by the *same* code that made the training data cannot
show that gap, so recipes must be selected on data from a synthesiser that shares nothing with the training one
but the thin-lens formula. This module is that synthesiser. Never train on its output: it is only useful while the
networks have never seen it.

It imports nothing of ``gs_dfd.synth`` or ``gs_dfd.render`` (it was written after reading
``gs_dfd/synth/layered.py`` only to make sure it differs). From the package it uses only the scene writer
(``gs_dfd.data.scene``: ``Camera``, ``Frame``, ``write_scene``) and the ``nyu`` preset's numbers
(``gs_dfd.optics.get_preset``: focal length, f-number, pixel pitch at its reference width).

Model, per frame (focus distance ``s`` stated in scene.json, camera f, N, pixel pitch p stated in scene.json):

* **Thin lens**, written out here: aperture A = f / N, signed CoC diameter in pixels
  ``c(d) = A f (d - s) / (d (s - f)) / p`` (> 0 behind the focus plane), i.e. affine in 1/d:
  ``c = A f s / ((s - f) p) * (1/s - 1/d)``.
* **Misfocus**: the frame is rendered with a true focus ``s (1 + e)``, ``e`` drawn in +-4 %, while scene.json keeps
  the nominal ``s``: the network is evaluated with what a user would tell it.
* **Aperture PSF**: a regular polygon of 5-9 blades at a random rotation, with the area of the thin-lens disk
  (same light, same f-number), rasterised on a ``supersample`` x ``supersample`` grid per pixel (box
  integration), with a soft edge (a linear ramp 0.3-0.8 px wide: diffraction and sensor blur) and a
  spherical-aberration-like radial profile ``1 + b (2 rho^2 - 1)`` (rho = 0 centre, 1 edge; mean-preserving),
  ``b`` in [0, 0.4]: a bright rim behind the focus plane and a bright core in front of it (the sign of ``b``
  flips with the sign of the CoC), and the polygon is point-reflected in front of the focus plane (the
  aperture's image is inverted on the other side of focus). Our training synthesiser uses a uniform
  anti-aliased disk, identical on both sides of focus.
* **Light**: blur, vignetting, exposure, white balance and noise act on *linear* radiance (the sRGB decoding
  of the all-in-focus image); the camera's tone curve comes after. Our training synthesiser blurs the sRGB
  values themselves.
* **Layers and occlusion** (own design): per frame, each pixel is put in a bin of signed CoC 0.5 px wide, by
  *dithering* (floor or ceil of its continuous bin index, with the probability of its fractional part, seeded),
  so the blur follows depth on average without a CoC staircase and without soft membership. Bins are
  composited near to far (increasing signed CoC = increasing depth) with a *delayed transmittance*: a bin is
  dimmed only by the blurred coverage of bins more than ``tolerance_px`` (1.5 px) of CoC nearer, so a slanted
  surface does not occlude itself while real depth steps do. Each bin's premultiplied radiance and coverage are
  scattered with its PSF (FFT convolution of the bin's crop, image borders mirrored), and the result is
  normalised by the accumulated coverage (``sum T P / sum T a``): where the surface hidden behind a blurred
  occluder is missing from the RGB-D data, the visible neighbours fill it in, instead of the nearest-pixel
  extension of hidden layers that our synthesiser uses (Hasinoff & Kutulakos). A sharp occluder stays sharp
  (its coverage is 1, transmittance behind it 0); a blurred occluder spreads over a sharp background.
* **Vignetting**: ``cos^4(atan(r / f_v))`` of the distance ``r`` from the image centre, with ``f_v`` chosen so
  that the corners lose 5-25 % (more than the nyu lens' natural cos^4, which is under 1 % at 8.8 deg: this stands
  for optical vignetting too).
* **Exposure and white balance**: a gain of +-0.2 EV per frame and red/blue gains of +-7 % per scene.
* **Sensor noise**: Poisson-Gaussian (shot + read) on linear values,
  ``z = Poisson(x n) / n + N(0, sigma_r^2)``, n = 10^4-10^5 photo-electrons at white (log-uniform), sigma_r =
  0.0002-0.001 of white; variance ``x / n + sigma_r^2``. Model: A. Foi, M. Trimeche, V. Katkovnik, K.
  Egiazarian, "Practical Poissonian-Gaussian noise modeling and fitting for single-image raw-data", IEEE TIP
  17(10), 2008. Then clipping at white (saturation). Through the sRGB slope that is 0.4-1.3 8-bit levels (DN)
  of noise at mid grey (linear 0.18) and 1-3 DN in the shadows (linear 0.02): a well-lit indoor capture at
  about this resolution ("mild"). The level matters more than anything else here (docs/transfer_validation.md:
  the shipped weights go from AbsRel 0.27 at 0.2 DN to 0.44 at 4 DN), so it is a parameter
  (``photons_at_white``, ``read_sigma``; make_cross_set.py ``--photons-at-white``, ``--read-sigma``), and each
  scene's ``synth_config.json`` states its level in DN (``noise_dn_8bit``).
* **Tone curve**: the sRGB encoding, raised to a gamma of 0.9-1.1, blended with a smoothstep S-curve by 0-25 %.
* **8 bits and JPEG**: rounding to uint8, then a JPEG round trip through Pillow at quality 75-95 (4:2:0 chroma
  subsampling, Pillow's default). The decoded pixels are stored as PNG (lossless, so the scene's loader reads
  exactly the JPEG-decoded image).

Every draw comes from ``numpy.random.default_rng`` seeded by (seed, crc32(scene name)), and everything drawn is
recorded in the scene folder's ``synth_config.json`` (format ``gs_dfd.cross_synth/1``). Same inputs and seed give
bit-identical frames (for a fixed numpy/scipy/Pillow).

Known approximations: within ``tolerance_px`` of CoC, depth steps blend instead of occluding; the hidden
background is filled by normalisation (visible colour spreads under a blurred occluder's edge instead of the
true hidden surface showing through); the PSF does not vary across the field (no coma, no cat's-eye).
"""

from __future__ import annotations

import io
import json
import math
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage, signal

CONFIG_FORMAT = "gs_dfd.cross_synth/1"
CONFIG_FILE = "synth_config.json"

# Effects that can be switched off (ablations); the polygonal PSF and the layering are always this module's own.
EFFECTS = ("misfocus", "aberration", "linear_light", "vignetting", "exposure", "white_balance", "noise", "tone",
           "jpeg")

# Ranges of the random draws (documented in the module docstring and in docs/transfer_validation.md).
BLADES = (5, 9)  # inclusive
SPHERICAL = (0.0, 0.4)
EDGE_PX = (0.3, 0.8)
MISFOCUS = 0.04  # +- relative
VIGNETTE_CORNER_LOSS = (0.05, 0.25)
EXPOSURE_EV = 0.2  # +-
WHITE_BALANCE = 0.07  # +- on red and blue
PHOTONS_AT_WHITE = (1.0e4, 1.0e5)  # log-uniform; 0.4-1.3 DN of 8-bit noise at mid grey
READ_SIGMA = (0.0002, 0.001)
GAMMA = (0.9, 1.1)
CONTRAST = (0.0, 0.25)
JPEG_QUALITY = (75, 95)  # inclusive

BIN_PX = 0.5
TOLERANCE_PX = 1.5
SUPERSAMPLE = 6


# --------------------------------------------------------------------------- camera and thin lens


@dataclass(frozen=True)
class NominalCamera:
    """The camera scene.json states (what a user would tell the network)."""

    width: int
    height: int
    focal_length_m: float
    f_number: float
    pixel_pitch_m: float

    @classmethod
    def from_preset(cls, width: int, height: int, name: str = "nyu") -> "NominalCamera":
        """A preset's numbers (only its numbers are read); the pitch scales with the width (same sensor)."""
        from gs_dfd.optics import get_preset

        p = get_preset(name)
        return cls(width=width, height=height, focal_length_m=float(p.focal_length_m), f_number=float(p.f_number),
                   pixel_pitch_m=float(p.pixel_pitch_m) * p.reference_width_px / width)

    @property
    def fx(self) -> float:
        return self.focal_length_m / self.pixel_pitch_m

    def to_scene_camera(self):
        from gs_dfd.data.scene import Camera

        return Camera(width=self.width, height=self.height, fx=self.fx, fy=self.fx, cx=self.width / 2.0,
                      cy=self.height / 2.0, focal_length_m=self.focal_length_m, f_number=self.f_number,
                      pixel_pitch_m=self.pixel_pitch_m)


def signed_coc_px(depth_m: np.ndarray | float, focus_m: float, focal_length_m: float, f_number: float,
                  pixel_pitch_m: float) -> np.ndarray:
    """Thin-lens CoC diameter in pixels, signed (> 0 behind the focus plane): A f (d - s) / (d (s - f)) / p."""
    if not (focus_m > focal_length_m > 0 and f_number > 0 and pixel_pitch_m > 0):
        raise ValueError(f"bad lens: s={focus_m} f={focal_length_m} N={f_number} p={pixel_pitch_m}")
    d = np.asarray(depth_m, dtype=np.float64)
    aperture = focal_length_m / f_number
    return aperture * focal_length_m * (d - focus_m) / (d * (focus_m - focal_length_m)) / pixel_pitch_m


# --------------------------------------------------------------------------- aperture PSF


@dataclass(frozen=True)
class Aperture:
    """A polygonal iris with a soft edge and a spherical-aberration-like radial profile."""

    blades: int = 7
    rotation_rad: float = 0.0
    spherical: float = 0.0  # b: profile 1 + b (2 rho^2 - 1) behind focus, 1 - b (...) in front
    edge_px: float = 0.0  # width of the soft edge's linear ramp (0 = hard edge)
    supersample: int = SUPERSAMPLE


def polygon_circumradius(diameter_px: float, blades: int) -> float:
    """Circumradius of the regular polygon with the area of a disk of this diameter."""
    n = int(blades)
    return abs(diameter_px) / 2.0 * math.sqrt(2.0 * math.pi / (n * math.sin(2.0 * math.pi / n)))


def aperture_psf(coc_px: float, ap: Aperture) -> np.ndarray:
    """Normalised PSF (sum 1, odd square) of a point whose signed CoC diameter is ``coc_px``."""
    if ap.blades < 3:
        raise ValueError(f"blades must be >= 3 (got {ap.blades})")
    radius = polygon_circumradius(coc_px, ap.blades)
    half = max(0, math.ceil(radius + ap.edge_px / 2.0 - 0.5))
    if half == 0:
        return np.ones((1, 1))
    n_px, ss = 2 * half + 1, int(ap.supersample)
    t = (np.arange(n_px * ss) + 0.5) / ss - (half + 0.5)  # sub-sample centres; pixel centres at integers
    x, y = np.meshgrid(t, t)
    r = np.hypot(x, y)
    phi = np.arctan2(y, x)
    behind = coc_px >= 0
    if not behind:
        phi = phi + math.pi  # the aperture's image is point-reflected in front of the focus plane
    seg = 2.0 * math.pi / ap.blades
    apothem = radius * math.cos(math.pi / ap.blades)
    r_edge = apothem / np.cos(np.mod(phi - ap.rotation_rad, seg) - seg / 2.0)  # boundary distance per direction
    if ap.edge_px > 0:
        cover = np.clip(0.5 + (r_edge - r) / ap.edge_px, 0.0, 1.0)
    else:
        cover = (r <= r_edge).astype(np.float64)
    rho = np.minimum(r / np.maximum(r_edge, 1e-12), 1.0)
    b = ap.spherical if behind else -ap.spherical
    weight = cover * (1.0 + b * (2.0 * rho * rho - 1.0))
    kernel = weight.reshape(n_px, ss, n_px, ss).mean(axis=(1, 3))
    total = kernel.sum()
    if total <= 0:
        return np.ones((1, 1))
    return kernel / total


# --------------------------------------------------------------------------- layered scatter


def dithered_bins(coc_px: np.ndarray, bin_px: float, rng: np.random.Generator | None) -> np.ndarray:
    """Integer bin of each pixel's signed CoC: floor or ceil of coc / bin_px with the probability of the fraction
    (unbiased on average); ``rng`` None rounds instead."""
    u = np.asarray(coc_px, dtype=np.float64) / bin_px
    if rng is None:
        return np.round(u).astype(np.int64)
    lo = np.floor(u)
    return (lo + (rng.random(u.shape) < (u - lo))).astype(np.int64)


def defocus_layers(radiance: np.ndarray, coc_px: np.ndarray, ap: Aperture, rng: np.random.Generator | None,
                   bin_px: float = BIN_PX, tolerance_px: float = TOLERANCE_PX) -> np.ndarray:
    """Blur ``radiance`` [H, W, C] whose pixels have signed CoC ``coc_px`` [H, W]; returns [H, W, C] float64.

    Near-to-far scatter of dithered CoC bins with delayed transmittance and coverage normalisation (see the
    module docstring)."""
    radiance = np.asarray(radiance, dtype=np.float64)
    h, w, n_ch = radiance.shape
    if coc_px.shape != (h, w):
        raise ValueError(f"coc_px must be {(h, w)} (got {coc_px.shape})")
    if not np.all(np.isfinite(coc_px)):
        raise ValueError("coc_px must be finite")
    bins = dithered_bins(coc_px, bin_px, rng)
    used = np.unique(bins)
    kernels = {int(b): aperture_psf(b * bin_px, ap) for b in used}
    pad = max(k.shape[0] // 2 for k in kernels.values())
    rad_p = np.pad(radiance, ((pad, pad), (pad, pad), (0, 0)), mode="symmetric")
    bins_p = np.pad(bins, pad, mode="symmetric")
    tol_bins = int(round(tolerance_px / bin_px))

    colour = np.zeros((h, w, n_ch))
    cover = np.zeros((h, w))
    transmit = np.ones((h, w))
    pending: list[tuple[int, tuple[slice, slice], np.ndarray]] = []  # (bin, output window, coverage)
    for b in used:  # ascending signed CoC = near to far
        b = int(b)
        while pending and pending[0][0] < b - tol_bins:  # nearer by more than the tolerance: now occludes
            _, win, a = pending.pop(0)
            transmit[win] *= 1.0 - a
        kern = kernels[b]
        k = kern.shape[0] // 2
        mask = bins_p == b
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        r0, r1 = max(rows[0] - k, 0), min(rows[-1] + 1 + k, bins_p.shape[0])
        c0, c1 = max(cols[0] - k, 0), min(cols[-1] + 1 + k, bins_p.shape[1])
        m = mask[r0:r1, c0:c1].astype(np.float64)
        src = np.concatenate([rad_p[r0:r1, c0:c1] * m[..., None], m[..., None]], axis=2)
        if k == 0:
            out = src
        else:
            out = signal.fftconvolve(src, kern[:, :, None], mode="same", axes=(0, 1))
        # window of the output image this crop covers
        o_r0, o_r1 = max(r0, pad), min(r1, pad + h)
        o_c0, o_c1 = max(c0, pad), min(c1, pad + w)
        if o_r0 >= o_r1 or o_c0 >= o_c1:
            continue
        part = out[o_r0 - r0:o_r1 - r0, o_c0 - c0:o_c1 - c0]
        win = (slice(o_r0 - pad, o_r1 - pad), slice(o_c0 - pad, o_c1 - pad))
        a = np.clip(part[..., n_ch], 0.0, 1.0)
        t = transmit[win]
        colour[win] += t[..., None] * part[..., :n_ch]
        cover[win] += t * a
        pending.append((b, win, a))
    ok = cover > 1e-9
    out = np.where(ok[..., None], colour / np.where(ok, cover, 1.0)[..., None], radiance)
    return np.clip(out, 0.0, None)


# --------------------------------------------------------------------------- camera pipeline


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    x = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1.0 / 2.4) - 0.055)


def vignetting_map(height: int, width: int, corner_loss: float) -> np.ndarray:
    """cos^4(atan(r / f_v)) with f_v such that the corners keep 1 - corner_loss of their light. [H, W]"""
    if corner_loss <= 0:
        return np.ones((height, width))
    yy, xx = np.mgrid[0:height, 0:width]
    r = np.hypot(xx + 0.5 - width / 2.0, yy + 0.5 - height / 2.0)
    r_corner = math.hypot(width / 2.0, height / 2.0)
    f_v = r_corner / math.tan(math.acos((1.0 - corner_loss) ** 0.25))
    return np.cos(np.arctan(r / f_v)) ** 4


def poisson_gaussian(x: np.ndarray, photons_at_white: float, read_sigma: float,
                     rng: np.random.Generator) -> np.ndarray:
    """Shot + read noise on linear values (Foi et al., IEEE TIP 2008): Poisson(x n) / n + N(0, read_sigma^2).

    Mean x, variance x / n + read_sigma^2 (n = photons_at_white). Not clipped."""
    x = np.clip(np.asarray(x, dtype=np.float64), 0.0, None)
    shot = rng.poisson(x * photons_at_white) / photons_at_white
    return shot + read_sigma * rng.standard_normal(x.shape)


def tone_curve(x: np.ndarray, gamma: float, contrast: float, from_linear: bool) -> np.ndarray:
    """The camera's rendering: sRGB encoding (when the input is linear), a gamma tweak, an S-curve blend."""
    y = linear_to_srgb(x) if from_linear else np.clip(x, 0.0, 1.0)
    y = y ** gamma
    s = y * y * (3.0 - 2.0 * y)
    return np.clip((1.0 - contrast) * y + contrast * s, 0.0, 1.0)


def jpeg_roundtrip(img_u8: np.ndarray, quality: int) -> np.ndarray:
    """Encode with Pillow's JPEG at ``quality`` and decode again (uint8 in, uint8 out, same shape)."""
    arr = np.asarray(img_u8)
    if arr.dtype != np.uint8:
        raise ValueError(f"jpeg_roundtrip needs uint8 (got {arr.dtype})")
    squeeze = arr.ndim == 3 and arr.shape[2] == 1
    im = Image.fromarray(arr[..., 0] if squeeze else arr)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    out = np.asarray(Image.open(buf).convert(im.mode))
    return out[..., None] if squeeze else out


# --------------------------------------------------------------------------- parameters


@dataclass
class FrameParams:
    focus_nominal_m: float
    focus_true_m: float
    exposure_gain: float
    noise_seed: int
    dither_seed: int


@dataclass
class SceneParams:
    """Everything drawn for one scene (recorded in synth_config.json)."""

    seed: int
    name: str
    effects: tuple[str, ...]
    aperture: Aperture
    vignette_corner_loss: float
    white_balance: tuple[float, float, float]
    photons_at_white: float | None  # None: no noise
    read_sigma: float
    gamma: float
    contrast: float
    jpeg_quality: int | None  # None: no JPEG
    frames: list[FrameParams] = field(default_factory=list)
    bin_px: float = BIN_PX
    tolerance_px: float = TOLERANCE_PX

    def to_json(self) -> dict:
        d = asdict(self)
        d["effects"] = list(self.effects)
        d["white_balance"] = list(self.white_balance)
        return d


def scene_rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(name.encode("utf-8"))])


def draw_params(seed: int, name: str, focus_distances_m: Sequence[float],
                effects: Sequence[str] = EFFECTS, photons_at_white: tuple[float, float] = PHOTONS_AT_WHITE,
                read_sigma: tuple[float, float] = READ_SIGMA) -> SceneParams:
    """Draw every random setting of one scene. Disabled effects get neutral values; the draws of the others do
    not depend on which are disabled, nor on the noise ranges (everything is always drawn, in a fixed order, and
    the noise levels are the same quantiles of whatever range is given). ``photons_at_white`` (log-uniform) and
    ``read_sigma`` (uniform) are (low, high) ranges; low == high fixes the value."""
    if not (0 < photons_at_white[0] <= photons_at_white[1]) or not (0 <= read_sigma[0] <= read_sigma[1]):
        raise ValueError(f"bad noise ranges: photons_at_white {photons_at_white}, read_sigma {read_sigma}")
    unknown = sorted(set(effects) - set(EFFECTS))
    if unknown:
        raise ValueError(f"unknown effects {unknown}; choose from {', '.join(EFFECTS)}")
    effects = tuple(e for e in EFFECTS if e in set(effects))
    on = set(effects)
    rng = scene_rng(seed, name)
    blades = int(rng.integers(BLADES[0], BLADES[1] + 1))
    rotation = float(rng.uniform(0.0, 2.0 * math.pi / blades))
    spherical = float(rng.uniform(*SPHERICAL))
    edge = float(rng.uniform(*EDGE_PX))
    vignette = float(rng.uniform(*VIGNETTE_CORNER_LOSS))
    wb = (float(1.0 + rng.uniform(-WHITE_BALANCE, WHITE_BALANCE)), 1.0,
          float(1.0 + rng.uniform(-WHITE_BALANCE, WHITE_BALANCE)))
    u_photons, u_read = float(rng.random()), float(rng.random())
    lo, hi = math.log(photons_at_white[0]), math.log(photons_at_white[1])
    photons = float(math.exp(lo + u_photons * (hi - lo)))
    read = float(read_sigma[0] + u_read * (read_sigma[1] - read_sigma[0]))
    gamma = float(rng.uniform(*GAMMA))
    contrast = float(rng.uniform(*CONTRAST))
    quality = int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
    frames = []
    for s in focus_distances_m:
        e = float(rng.uniform(-MISFOCUS, MISFOCUS))
        ev = float(rng.uniform(-EXPOSURE_EV, EXPOSURE_EV))
        noise_seed, dither_seed = (int(v) for v in rng.integers(0, 2**31 - 1, size=2))
        frames.append(FrameParams(focus_nominal_m=float(s),
                                  focus_true_m=float(s) * (1.0 + e if "misfocus" in on else 1.0),
                                  exposure_gain=float(2.0 ** ev) if "exposure" in on else 1.0,
                                  noise_seed=noise_seed, dither_seed=dither_seed))
    ap = Aperture(blades=blades, rotation_rad=rotation, spherical=spherical if "aberration" in on else 0.0,
                  edge_px=edge if "aberration" in on else 0.0)
    return SceneParams(seed=int(seed), name=name, effects=effects, aperture=ap,
                       vignette_corner_loss=vignette if "vignetting" in on else 0.0,
                       white_balance=wb if "white_balance" in on else (1.0, 1.0, 1.0),
                       photons_at_white=photons if "noise" in on else None,
                       read_sigma=read if "noise" in on else 0.0,
                       gamma=gamma if "tone" in on else 1.0, contrast=contrast if "tone" in on else 0.0,
                       jpeg_quality=quality if "jpeg" in on else None, frames=frames)


# --------------------------------------------------------------------------- synthesis


def fill_holes_nearest(depth_m: np.ndarray) -> np.ndarray:
    """Depth for rendering: every pixel without a valid depth (0 / non-finite) takes its nearest valid one."""
    valid = np.isfinite(depth_m) & (depth_m > 0)
    if not valid.any():
        raise ValueError("depth has no valid pixel")
    if valid.all():
        return depth_m.astype(np.float64)
    _, (iy, ix) = ndimage.distance_transform_edt(~valid, return_indices=True)
    return depth_m[iy, ix].astype(np.float64)


def synthesize_frames(aif_srgb: np.ndarray, depth_m: np.ndarray, camera: NominalCamera,
                      params: SceneParams) -> tuple[np.ndarray, list[dict]]:
    """Render every frame of ``params``: uint8 [F, H, W, C] and a per-frame record (true focus, CoC range).

    aif_srgb: [H, W, C] float in [0, 1] (sRGB-encoded, as photographs are); depth_m: [H, W] metres, 0 = unknown
    (filled by the nearest valid depth for rendering)."""
    aif = np.asarray(aif_srgb, dtype=np.float64)
    if aif.ndim != 3 or aif.shape[2] not in (1, 3):
        raise ValueError(f"aif must be [H, W, 1 or 3] (got {aif.shape})")
    h, w, n_ch = aif.shape
    if depth_m.shape != (h, w) or (camera.height, camera.width) != (h, w):
        raise ValueError(f"depth {depth_m.shape}, aif {aif.shape[:2]} and camera {(camera.height, camera.width)} "
                         "must agree")
    linear = "linear_light" in params.effects
    radiance = srgb_to_linear(aif) if linear else np.clip(aif, 0.0, 1.0)
    depth = fill_holes_nearest(np.asarray(depth_m, dtype=np.float64))
    vignette = vignetting_map(h, w, params.vignette_corner_loss)[..., None]
    wb = np.asarray(params.white_balance if n_ch == 3 else (1.0,))
    frames, records = [], []
    for fp in params.frames:
        coc = signed_coc_px(depth, fp.focus_true_m, camera.focal_length_m, camera.f_number, camera.pixel_pitch_m)
        img = defocus_layers(radiance, coc, params.aperture, np.random.default_rng(fp.dither_seed),
                             params.bin_px, params.tolerance_px)
        img = img * vignette * (fp.exposure_gain * wb)
        if params.photons_at_white is not None:
            img = poisson_gaussian(img, params.photons_at_white, params.read_sigma,
                                   np.random.default_rng(fp.noise_seed))
        img = tone_curve(np.clip(img, 0.0, 1.0), params.gamma, params.contrast, from_linear=linear)
        u8 = np.round(img * 255.0).astype(np.uint8)
        if params.jpeg_quality is not None:
            u8 = jpeg_roundtrip(u8, params.jpeg_quality)
        frames.append(u8)
        records.append({"focus_nominal_m": fp.focus_nominal_m, "focus_true_m": fp.focus_true_m,
                        "coc_px_min": float(coc.min()), "coc_px_max": float(coc.max())})
    return np.stack(frames), records


def noise_dn(x_linear: float, params: SceneParams) -> float:
    """Std of the sensor noise at linear level ``x_linear`` in 8-bit output units, through the sRGB encoding's
    slope there (tone tweaks, exposure and JPEG ignored): a readable summary of a scene's noise level."""
    if params.photons_at_white is None:
        return 0.0
    sigma = math.sqrt(x_linear / params.photons_at_white + params.read_sigma ** 2)
    if "linear_light" not in params.effects:
        return 255.0 * sigma
    slope = 12.92 if x_linear <= 0.0031308 else 1.055 / 2.4 * x_linear ** (1.0 / 2.4 - 1.0)  # d sRGB / d linear
    return 255.0 * slope * sigma


def write_cross_scene(out_dir: str | Path, aif_srgb: np.ndarray, depth_gt_m: np.ndarray, camera: NominalCamera,
                      focus_distances_m: Sequence[float], seed: int, name: str,
                      effects: Sequence[str] = EFFECTS, source: dict | None = None,
                      photons_at_white: tuple[float, float] = PHOTONS_AT_WHITE,
                      read_sigma: tuple[float, float] = READ_SIGMA) -> SceneParams:
    """Synthesise one scene and write it as a gs_dfd.scene/1 folder (``out_dir`` must exist and be empty) with
    its ``synth_config.json``. scene.json states the nominal camera and focus distances."""
    from gs_dfd.data.scene import Frame, write_scene

    out_dir = Path(out_dir)
    params = draw_params(seed, name, focus_distances_m, effects, photons_at_white, read_sigma)
    frames_u8, records = synthesize_frames(aif_srgb, depth_gt_m, camera, params)
    frames = [Frame(image=f"frames/{i:03d}.png", focus_distance_m=float(s)) for i, s in enumerate(focus_distances_m)]
    depth_gt = np.where(np.isfinite(depth_gt_m) & (depth_gt_m > 0), depth_gt_m, 0.0).astype(np.float32)
    write_scene(out_dir, camera.to_scene_camera(), frames, frames_u8, depth_gt_m=depth_gt,
                all_in_focus=np.clip(np.asarray(aif_srgb, dtype=np.float32), 0.0, 1.0))
    config = {"format": CONFIG_FORMAT, "generator": "tools/validation/cross_synth.py",
              "purpose": "validation only: never train on this scene",
              "camera_nominal": asdict(camera), "params": params.to_json(), "frames": records,
              "noise_dn_8bit": {f"linear_{x:g}": noise_dn(x, params) for x in (0.02, 0.18, 0.5)},
              "source": source or {}}
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n")
    return params


def with_effects(params: SceneParams, effects: Sequence[str]) -> SceneParams:
    """The same scene's draws with another set of effects (for ablations in tests)."""
    return draw_params(params.seed, params.name, [f.focus_nominal_m for f in params.frames], effects)


__all__ = ["Aperture", "EFFECTS", "NominalCamera", "SceneParams", "aperture_psf", "defocus_layers",
           "draw_params", "jpeg_roundtrip", "poisson_gaussian", "signed_coc_px", "synthesize_frames",
           "tone_curve", "vignetting_map", "with_effects", "write_cross_scene"]
