"""Camera effects on the network's input frames: everything a real photo adds that is not defocus.

The training stacks are noise-free 8-bit PNGs rendered with an ideal camera, so a network trained on them alone
may read sensor noise or JPEG blocking as sharpness. :func:`augment_frames` randomises, per training step, what
a real camera does to a focal stack besides blurring it, on the frames the network reads only: the
self-supervised loss targets stay the clean frames. In the order light meets the camera:

1. white balance and exposure, in linear light (sRGB decoded with the standard transfer function, IEC
   61966-2-1): per-scene gains on R and B (the same for both frames of a pair: one camera, one setting), and a
   per-frame exposure gain in EV;
2. vignetting ``1 - v r^2`` (``r`` = 1 at the corners of the crop; the same for both frames: it is the lens);
3. sensor noise, Poisson-Gaussian on the linear values relative to white (Foi et al., "Practical
   Poissonian-Gaussian noise modeling and fitting for single-image raw-data", IEEE TIP 17(10), 2008): shot
   noise of variance ``x / photons_at_white`` (Poisson in the Gaussian approximation) plus read noise of std
   ``read_noise_std``, drawn per frame, sometimes none at all;
4. the tone curve: sRGB re-encoding, then a gamma on the encoded values (per scene);
5. 8-bit quantisation, and sometimes a JPEG round trip (Pillow) at a quality drawn per scene.

"Scene" here is one crop of a batch: the pair of frames of one stack. Every draw comes from the generator the
caller passes, so a step's augmentation is a pure function of its seed (exact resume).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import tyro
from torch import Tensor

from gs_dfd.errors import InputError


def _flag(name: str):
    """``--augment.NAME``: gs-dfd's flags drop nested prefixes, but ``--enabled`` alone would say nothing."""
    return tyro.conf.arg(name=f"augment.{name}")


@dataclass
class CameraAugmentConfig:
    """Random camera effects (white balance, exposure, vignetting, sensor noise, tone, 8-bit and JPEG) on the
    frames the network reads; the self-supervised loss still compares with the clean frames."""

    enabled: Annotated[bool, _flag("enabled")] = False
    """Augment the network's input frames (off: the frames as stored, bit-exact with earlier runs)."""
    white_balance_max: Annotated[float, _flag("white_balance_max")] = 0.08
    """Largest white-balance error, as a fraction: per scene, the R and B gains are each drawn uniformly in
    [1 - x, 1 + x] (G stays 1), in linear light."""
    exposure_max_ev: Annotated[float, _flag("exposure_max_ev")] = 0.25
    """Largest exposure error in EV (stops): per frame, a gain 2^e with e uniform in [-x, x], in linear light."""
    vignette_max: Annotated[float, _flag("vignette_max")] = 0.3
    """Largest vignetting: per scene, v uniform in [0, x] and linear light times 1 - v r^2 (r = 1 at the crop's
    corners, so x is the light lost there, as a fraction)."""
    noise_probability: Annotated[float, _flag("noise_probability")] = 0.85
    """Probability that a frame gets sensor noise (otherwise none at all)."""
    photons_at_white_min: Annotated[float, _flag("photons_at_white_min")] = 2e3
    """Fewest photo-electrons a white pixel collects (high ISO); per frame, drawn log-uniformly between this and
    photons_at_white_max. Shot noise std at linear value x (white = 1) is sqrt(x / photons_at_white)."""
    photons_at_white_max: Annotated[float, _flag("photons_at_white_max")] = 2e5
    """Most photo-electrons a white pixel collects (low ISO, large pixels)."""
    read_noise_std_min: Annotated[float, _flag("read_noise_std_min")] = 2e-4
    """Smallest read-noise std, as a fraction of white (linear); per frame, drawn log-uniformly up to
    read_noise_std_max."""
    read_noise_std_max: Annotated[float, _flag("read_noise_std_max")] = 2e-3
    """Largest read-noise std, as a fraction of white (linear)."""
    gamma_min: Annotated[float, _flag("gamma_min")] = 0.9
    """Smallest tone gamma: per scene, the sRGB-encoded values are raised to a power uniform in
    [gamma_min, gamma_max] (1 = the standard curve)."""
    gamma_max: Annotated[float, _flag("gamma_max")] = 1.1
    """Largest tone gamma."""
    jpeg_probability: Annotated[float, _flag("jpeg_probability")] = 0.7
    """Probability that a scene's frames go through a JPEG round trip after 8-bit quantisation (otherwise they
    are only quantised to 8 bits)."""
    jpeg_quality_min: Annotated[int, _flag("jpeg_quality_min")] = 60
    """Lowest JPEG quality (Pillow's 1-95 scale); per scene, drawn uniformly up to jpeg_quality_max."""
    jpeg_quality_max: Annotated[int, _flag("jpeg_quality_max")] = 95
    """Highest JPEG quality (Pillow's 1-95 scale)."""


def check_augment_config(cfg: CameraAugmentConfig, path: Path | None = None) -> None:
    """Refuse ranges no camera has before any long work; ``path``: the YAML file the values may come from."""
    def bad(name: str, rule: str) -> InputError:
        return InputError(path, f"{rule} (got {getattr(cfg, name)})", f"augment.{name}")

    for name in ("white_balance_max", "exposure_max_ev", "vignette_max"):
        if not getattr(cfg, name) >= 0:
            raise bad(name, "must be >= 0")
    if not cfg.white_balance_max < 1:
        raise bad("white_balance_max", "must be < 1 (a gain of 1 - x must stay positive)")
    if not cfg.vignette_max < 1:
        raise bad("vignette_max", "must be < 1 (the corners must keep some light)")
    for name in ("noise_probability", "jpeg_probability"):
        if not 0 <= getattr(cfg, name) <= 1:
            raise bad(name, "must be a probability in [0, 1]")
    for low, high in (("photons_at_white_min", "photons_at_white_max"), ("read_noise_std_min", "read_noise_std_max"),
                      ("gamma_min", "gamma_max"), ("jpeg_quality_min", "jpeg_quality_max")):
        if not 0 < getattr(cfg, low) <= getattr(cfg, high):
            raise bad(low, f"must be > 0 and <= {high} ({getattr(cfg, high)})")
    if not cfg.jpeg_quality_max <= 95:
        raise bad("jpeg_quality_max", "must be <= 95 (Pillow's highest useful quality)")


def srgb_to_linear(encoded: np.ndarray) -> np.ndarray:
    """The standard sRGB decoding (IEC 61966-2-1), values in [0, 1]."""
    return np.where(encoded <= 0.04045, encoded / 12.92, ((encoded + 0.055) / 1.055) ** 2.4).astype(encoded.dtype)


def linear_to_srgb(linear: np.ndarray) -> np.ndarray:
    """The standard sRGB encoding (IEC 61966-2-1), values in [0, 1]."""
    x = np.clip(linear, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055).astype(linear.dtype)


def vignette_gain(hw: tuple[int, int], strength: float) -> np.ndarray:
    """``[h, w]`` light fraction ``1 - strength r^2``, r the distance from the crop's centre over its half
    diagonal (1 at the corners)."""
    h, w = hw
    y = (np.arange(h, dtype=np.float32) + 0.5 - h / 2)[:, None]
    x = (np.arange(w, dtype=np.float32) + 0.5 - w / 2)[None, :]
    r2 = (x * x + y * y) / ((h / 2) ** 2 + (w / 2) ** 2)
    return (1.0 - strength * r2).astype(np.float32)


def add_sensor_noise(linear: np.ndarray, photons_at_white: float, read_noise_std: float,
                     rng: np.random.Generator) -> np.ndarray:
    """Poisson-Gaussian noise (Foi et al. 2008) on linear values relative to white: variance
    ``x / photons_at_white + read_noise_std^2`` (Poisson shot noise in its Gaussian approximation)."""
    variance = np.clip(linear, 0.0, None) / photons_at_white + read_noise_std ** 2
    noise = rng.standard_normal(linear.shape, dtype=np.float32)
    return (linear + np.sqrt(variance) * noise).astype(np.float32)


def jpeg_round_trip(image_u8: np.ndarray, quality: int) -> np.ndarray:
    """``[h, w, 3]`` uint8 -> the same image saved as JPEG at ``quality`` (Pillow, its default 4:2:0 chroma
    subsampling) and decoded."""
    from PIL import Image

    assert image_u8.dtype == np.uint8 and image_u8.ndim == 3 and image_u8.shape[2] == 3, image_u8.shape
    buf = io.BytesIO()
    Image.fromarray(image_u8, "RGB").save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


@dataclass
class _SceneDraw:
    """What one camera shares over a pair of frames."""

    gains_rgb: np.ndarray  # [3] white balance, linear
    vignette: float
    gamma: float
    jpeg_quality: int | None  # None: 8-bit quantisation only


@dataclass
class _FrameDraw:
    """What changes from frame to frame."""

    exposure_gain: float  # linear
    photons_at_white: float | None  # None: no sensor noise
    read_noise_std: float


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _draw_scene(rng: np.random.Generator, cfg: CameraAugmentConfig) -> _SceneDraw:
    wb = cfg.white_balance_max
    r_gain, b_gain = rng.uniform(1 - wb, 1 + wb, size=2)
    vignette = float(rng.uniform(0.0, cfg.vignette_max))
    gamma = float(rng.uniform(cfg.gamma_min, cfg.gamma_max))
    use_jpeg = rng.random() < cfg.jpeg_probability
    quality = int(rng.integers(cfg.jpeg_quality_min, cfg.jpeg_quality_max + 1))  # drawn either way: fixed draw count
    return _SceneDraw(gains_rgb=np.array([r_gain, 1.0, b_gain], dtype=np.float32), vignette=vignette, gamma=gamma,
                      jpeg_quality=quality if use_jpeg else None)


def _draw_frame(rng: np.random.Generator, cfg: CameraAugmentConfig) -> _FrameDraw:
    ev = float(rng.uniform(-cfg.exposure_max_ev, cfg.exposure_max_ev))
    noisy = rng.random() < cfg.noise_probability
    photons = _log_uniform(rng, cfg.photons_at_white_min, cfg.photons_at_white_max)
    read_std = _log_uniform(rng, cfg.read_noise_std_min, cfg.read_noise_std_max)
    return _FrameDraw(exposure_gain=2.0 ** ev, photons_at_white=photons if noisy else None, read_noise_std=read_std)


def _camera(encoded_chw: np.ndarray, scene: _SceneDraw, frame: _FrameDraw, vignette: np.ndarray,
            rng: np.random.Generator) -> np.ndarray:
    """One frame ``[3, h, w]`` (sRGB in [0, 1]) through the camera -> ``[3, h, w]`` in [0, 1]."""
    linear = srgb_to_linear(encoded_chw)
    linear = linear * (scene.gains_rgb[:, None, None] * frame.exposure_gain) * vignette[None]
    linear = np.clip(linear, 0.0, 1.0)  # the sensor saturates at white
    if frame.photons_at_white is not None:
        linear = add_sensor_noise(linear, frame.photons_at_white, frame.read_noise_std, rng)
    encoded = linear_to_srgb(linear) ** np.float32(scene.gamma)
    image_u8 = np.round(np.clip(encoded, 0.0, 1.0) * 255).astype(np.uint8).transpose(1, 2, 0)  # [h, w, 3]
    if scene.jpeg_quality is not None:
        image_u8 = jpeg_round_trip(np.ascontiguousarray(image_u8), scene.jpeg_quality)
    return image_u8.transpose(2, 0, 1).astype(np.float32) / 255.0


def augment_frames(frames: Tensor, rng: np.random.Generator, cfg: CameraAugmentConfig) -> Tensor:
    """Batch frames ``[B, 2, 3, h, w]`` in [0, 1] (a crop's pair of frames on axis 1) -> new frames of the same
    shape, dtype and device, through a randomly drawn camera each; ``frames`` is never modified. Disabled: the
    input itself. Per scene (both frames of a pair): white balance, vignetting, gamma, JPEG; per frame:
    exposure and sensor noise."""
    if not cfg.enabled:
        return frames
    assert frames.ndim == 5 and frames.shape[1] == 2 and frames.shape[2] == 3, tuple(frames.shape)
    b, n, _, h, w = frames.shape
    src = frames.detach().to("cpu", torch.float32).numpy()
    out = np.empty(src.shape, dtype=np.float32)
    for k in range(b):
        scene = _draw_scene(rng, cfg)
        vignette = vignette_gain((h, w), scene.vignette)
        for f in range(n):
            out[k, f] = _camera(np.clip(src[k, f], 0.0, 1.0), scene, _draw_frame(rng, cfg), vignette, rng)
    return torch.from_numpy(out).to(device=frames.device, dtype=frames.dtype)
