"""Per-frame image translation: the shots of a real stack are not registered.

The f/2.8 and f/8 shots of the d3net pairs are offset by a median of about
1.5 px (one by 12 px): the camera moved between shots, or the aperture
change shifted the image. Left alone, the fit explains that offset as blur,
and since the far-side CoC is bounded, textured edges run off to infinity.
So every frame that shares the reference frame's pose gets a learnable 2D
translation of its render, started from phase correlation (Kuglin & Hines
1975), which whitens the spectra and so is insensitive to how differently
the frames are blurred. Whitening alone locks onto the JPEG 8x8 block grid,
which does not move between shots, so frequencies are weighted by a
Gaussian low-pass (measured against a direct least-squares search on 13
d3net pairs: within 0.3 px). Frame 0 is the reference: the Gaussians, depth map
and all-in-focus image stay in its pixel grid.

Convention: ``shift_px[i] = (dx, dy)`` means frame ``i`` shows the
reference's content moved by ``(dx, dy)`` px: ``frame_i(x) = ref(x - s)``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


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


def register_frames(frames: np.ndarray, movable: list[bool], max_shift_px: float = 32.0) -> np.ndarray:
    """``[F, 2]`` phase-correlation shifts of each frame against frame 0; zero where ``movable`` is False."""
    shifts = np.zeros((len(frames), 2), np.float32)
    for i in range(1, len(frames)):
        if movable[i]:
            shifts[i] = estimate_shift_px(frames[0], frames[i], max_shift_px)
    return shifts


class FrameAlignment(nn.Module):
    """Learnable per-frame translation of the renders; frame 0 and frames with their own pose stay fixed."""

    def __init__(self, init_shift_px: np.ndarray, movable: list[bool], enabled: bool = True):
        super().__init__()
        n = len(movable)
        assert init_shift_px.shape == (n, 2), (init_shift_px.shape, n)
        mask = torch.tensor([bool(m) and i > 0 and enabled for i, m in enumerate(movable)], dtype=torch.float32)
        self.enabled = bool(enabled and mask.any())
        self.register_buffer("mask", mask[:, None])
        init = torch.tensor(init_shift_px, dtype=torch.float32) * self.mask
        self.register_buffer("init_shift_px", init.clone())
        self.shift_px = nn.Parameter(init, requires_grad=self.enabled)

    def shifts(self) -> Tensor:  # [F, 2]
        return self.shift_px * self.mask

    def forward(self, rgb: Tensor) -> Tensor:
        """``[F, H, W, C]`` renders in the reference's pixel grid -> where each frame recorded them."""
        return translate_images(rgb, self.shifts()) if self.enabled else rgb

    def to_reference(self, image: np.ndarray, frame: int) -> np.ndarray:
        """Frame ``frame``'s ``[H, W]`` or ``[H, W, C]`` image (or map) moved into the reference's pixel grid."""
        if not self.enabled or frame == 0:
            return image
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        x = x[None, ..., None] if image.ndim == 2 else x[None]
        with torch.no_grad():
            out = translate_images(x, -self.shifts()[frame : frame + 1])[0].numpy()
        return out[..., 0] if image.ndim == 2 else out

    def margin_px(self) -> int:
        """Border left out of the loss, where a translated render repeats its edge instead of showing the
        scene: the starting shift plus 2 px of learned change (fixed, so a resumed fit sees the same loss)."""
        return int(np.ceil(float(self.init_shift_px.abs().max()))) + 2 if self.enabled else 0

    def report(self) -> list[dict]:
        with torch.no_grad():
            return [{"frame": i, "shift_px": [round(float(v), 3) for v in s]}
                    for i, s in enumerate(self.shifts()) if i > 0]
