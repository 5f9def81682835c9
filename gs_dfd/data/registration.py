"""Registering the shots of one view: real stacks move between exposures.

The f/2.8 and f/8 shots of the d3net pairs are offset by a median of about
1.5 px (one by 12 px). Phase correlation (Kuglin & Hines 1975) finds such a
translation and, since it whitens the spectra, does not care how differently
the two shots are blurred. Whitening alone locks onto the JPEG 8x8 block
grid, which does not move between shots, so frequencies are weighted by a
Gaussian low-pass (measured against a direct least-squares search on 13
d3net pairs: within 0.3 px).

Convention: a shift ``(dx, dy)`` means the frame shows the reference's
content moved by ``(dx, dy)`` px: ``frame(x) = ref(x - s)``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def _gray(img: np.ndarray) -> np.ndarray:
    return np.asarray(img, np.float64).mean(-1) if img.ndim == 3 else np.asarray(img, np.float64)


def _parabola_offset(m: float, c: float, p: float) -> float:
    """Sub-sample peak offset from the values left of, at and right of an integer peak."""
    denom = m - 2 * c + p
    return 0.0 if abs(denom) < 1e-12 else float(np.clip(0.5 * (m - p) / denom, -0.5, 0.5))


def estimate_shift_px(ref: np.ndarray, img: np.ndarray, max_shift_px: float = 32.0,
                      lowpass_cycles_per_px: float = 0.06) -> tuple[float, float]:
    """``(dx, dy)`` such that ``img(x) ~ ref(x - (dx, dy))``, by phase correlation.

    ref, img: ``[H, W]`` or ``[H, W, C]``. Shifts beyond ``max_shift_px`` are
    not searched (a stack's shots are expected to be nearly registered).
    """
    a, b = _gray(ref), _gray(img)
    assert a.shape == b.shape, (a.shape, b.shape)
    h, w = a.shape
    window = np.outer(np.hanning(h), np.hanning(w))
    fa = np.fft.fft2((a - a.mean()) * window)
    fb = np.fft.fft2((b - b.mean()) * window)
    cross = fb * np.conj(fa)
    freq_sq = np.fft.fftfreq(h)[:, None] ** 2 + np.fft.fftfreq(w)[None, :] ** 2
    lowpass = np.exp(-freq_sq / lowpass_cycles_per_px**2)
    corr = np.real(np.fft.ifft2(cross / np.maximum(np.abs(cross), 1e-12) * lowpass))
    dy_all = np.fft.fftfreq(h, 1.0 / h)  # signed integer shifts of each row / column index
    dx_all = np.fft.fftfreq(w, 1.0 / w)
    reachable = (np.abs(dy_all)[:, None] <= max_shift_px) & (np.abs(dx_all)[None, :] <= max_shift_px)
    iy, ix = np.unravel_index(np.argmax(np.where(reachable, corr, -np.inf)), corr.shape)
    sub_y = _parabola_offset(corr[(iy - 1) % h, ix], corr[iy, ix], corr[(iy + 1) % h, ix])
    sub_x = _parabola_offset(corr[iy, (ix - 1) % w], corr[iy, ix], corr[iy, (ix + 1) % w])
    return float(dx_all[ix] + sub_x), float(dy_all[iy] + sub_y)


def translate_images(images: Tensor, shift_px: Tensor) -> Tensor:
    """``[F, H, W, C]`` images, ``[F, 2]`` shifts -> ``out_i(x) = images_i(x - shift_i)`` (bilinear, border)."""
    f, h, w, _ = images.shape
    assert shift_px.shape == (f, 2), (shift_px.shape, images.shape)
    ys = (2 * torch.arange(h, dtype=images.dtype) + 1) / h - 1
    xs = (2 * torch.arange(w, dtype=images.dtype) + 1) / w - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    scale = torch.tensor([2.0 / w, 2.0 / h], dtype=images.dtype)
    grid = torch.stack([gx, gy], -1)[None] - (shift_px.to(images.dtype) * scale)[:, None, None, :]  # [F, H, W, 2]
    out = F.grid_sample(images.permute(0, 3, 1, 2), grid, mode="bilinear", padding_mode="border",
                        align_corners=False)
    return out.permute(0, 2, 3, 1)


def move_to_reference(image: np.ndarray, shift_px: tuple[float, float] | np.ndarray) -> np.ndarray:
    """A frame's ``[H, W]`` or ``[H, W, C]`` image (or map) moved back by its ``shift_px`` into the reference's grid."""
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    x = x[None, ..., None] if image.ndim == 2 else x[None]
    with torch.no_grad():
        out = translate_images(x, -torch.as_tensor(np.asarray(shift_px, np.float32)).reshape(1, 2))[0].numpy()
    return out[..., 0] if image.ndim == 2 else out
