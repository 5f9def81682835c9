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

Similarities. A focus sweep also *breathes* (the image scale changes with
focus: 4.4 % between 1 m and 6 m at 50 mm, more in macro) and a hand-held or
rail shot turns a little (~0.5 deg) and changes exposure. A similarity is four
numbers ``(log_scale, angle_rad, tx_px, ty_px)`` that map REFERENCE pixel
coordinates to FRAME pixel coordinates about a centre ``c = (cx, cy)`` (the
principal point; pixel ``(i, j)`` has its centre at ``x = j + 0.5,
y = i + 0.5``)::

    x_frame = c + exp(log_scale) * R(angle) @ (x_ref - c) + t,
    R(a) = [[cos a, -sin a], [sin a, cos a]]      (on (x, y), y pointing DOWN)
    frame(x_frame) = ref(x_ref)

so a positive angle turns +x toward +y (clockwise on screen), and with
``log_scale = angle = 0`` it is exactly the shift convention above.

:func:`estimate_similarity` is a coarse-to-fine Gauss-Newton fit (forward
additive Lucas-Kanade: Lucas & Kanade 1981; Baker & Matthews 2004, "Lucas-
Kanade 20 years on") of the four parameters plus a gain and an offset, with
Huber weights (IRLS), on a Gaussian pyramid of the grey images, each level
low-passed, started from :func:`estimate_shift_px`. Two shots of a sweep are
focused at different distances, so their difference is dominated by blur,
not by noise: that difference is zero-phase (it does not move edges) and the
Huber weights keep the regions whose sharpness differs most from dominating;
before each level the sharper image is blurred toward the other (the extra
blur whose residual is smallest), which removes most of what is left
(160 x 120, sharp against blur sigma 2.5 px, 12 pairs: corner error median
0.19 / max 0.40 px without it, 0.05 / 0.10 px with it). Images above 1024 px on the long side are registered
as a block-averaged copy (translation scaled back): ~0.3 s a pair at
960 x 540 on one core.
OpenCV's ``findTransformECC`` does much the same, but OpenCV is not a
dependency of this project (torch, numpy, scipy are), and the Gauss-Newton
similarity is ~200 lines (half of them the blur matching) sharing its warp (:func:`warp_images`, torch
``grid_sample``) with the fit; scikit-image registers translations only.

:func:`register_stack` chains: frame ``i`` is registered against frame
``i - 1`` and the transforms are composed (as matrices). Neighbours of a
sweep are blurred alike, while frame 0 and the last frame may share almost
no sharp detail (in macro, hardly any structure at all): each link is then
an easy, accurate registration, and their small, unbiased errors add up as a
random walk (synthetic 12-frame sweeps across a slanted scene, 160 x 120:
chained within 0.12 px at the corners, each frame directly against frame 0
within 0.24 px). For that the fit leaves out the pixels within 2 sigma of a
border, whose padded low-pass would otherwise bias the scale of every link
the same way.
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


# ----------------------------------------------------------------------------------------------------------------
# Similarities: (log_scale, angle_rad, tx_px, ty_px), reference px -> frame px about a centre (module docstring).


def similarity_matrix(params: np.ndarray, center: tuple[float, float]) -> np.ndarray:
    """``[3, 3]`` homogeneous map of reference px to frame px for ``params = (log_scale, angle_rad, tx_px, ty_px)``."""
    log_s, angle_rad, tx_px, ty_px = (float(v) for v in np.asarray(params, np.float64).reshape(4))
    c = np.asarray(center, np.float64).reshape(2)
    a = np.exp(log_s) * np.array([[np.cos(angle_rad), -np.sin(angle_rad)], [np.sin(angle_rad), np.cos(angle_rad)]])
    m = np.eye(3)
    m[:2, :2] = a
    m[:2, 2] = c - a @ c + [tx_px, ty_px]
    return m


def params_from_matrix(matrix: np.ndarray, center: tuple[float, float]) -> np.ndarray:
    """Inverse of :func:`similarity_matrix`: ``[4]`` params of a ``[3, 3]`` similarity (its linear part is
    taken as ``s R``; the mean of the two estimates of ``s cos``, ``s sin``)."""
    m = np.asarray(matrix, np.float64)
    assert m.shape == (3, 3), m.shape
    c = np.asarray(center, np.float64).reshape(2)
    sc, ss = 0.5 * (m[0, 0] + m[1, 1]), 0.5 * (m[1, 0] - m[0, 1])
    a = np.array([[sc, -ss], [ss, sc]])
    t = m[:2, 2] - c + a @ c
    return np.array([0.5 * np.log(sc * sc + ss * ss), np.arctan2(ss, sc), t[0], t[1]])


def _frame_coords_px(params: Tensor, center: tuple[float, float] | Tensor, h: int, w: int) -> Tensor:
    """``[F, 4]`` params -> ``[F, H, W, 2]`` frame px ``(x, y)`` of each reference pixel centre."""
    assert params.ndim == 2 and params.shape[1] == 4, params.shape
    dt = params.dtype
    c = torch.as_tensor(center, dtype=dt).reshape(2)
    dy, dx = torch.meshgrid(torch.arange(h, dtype=dt) + 0.5 - c[1], torch.arange(w, dtype=dt) + 0.5 - c[0],
                            indexing="ij")  # [H, W] each
    s = torch.exp(params[:, 0])[:, None, None]
    cos, sin = torch.cos(params[:, 1])[:, None, None], torch.sin(params[:, 1])[:, None, None]
    x = c[0] + s * (cos * dx - sin * dy) + params[:, 2, None, None]
    y = c[1] + s * (sin * dx + cos * dy) + params[:, 3, None, None]
    return torch.stack([x, y], -1)


def _sample_px(images: Tensor, xy_px: Tensor) -> Tensor:
    """``[F, C, H, W]`` images at ``[F, H', W', 2]`` px ``(x, y)`` -> ``[F, C, H', W']`` (bilinear, border)."""
    h, w = images.shape[-2:]
    scale = torch.tensor([2.0 / w, 2.0 / h], dtype=xy_px.dtype)
    return F.grid_sample(images, xy_px * scale - 1, mode="bilinear", padding_mode="border", align_corners=False)


def warp_images(images: Tensor, params: Tensor, center: tuple[float, float] | Tensor) -> Tensor:
    """``[F, H, W, C]`` frames, ``[F, 4]`` similarities -> ``[F, H, W, C]`` frames in the reference's grid:
    ``out_i(x_ref) = images_i(x_frame_i(x_ref))`` (bilinear, border). Differentiable in images and params."""
    f, h, w, _ = images.shape
    assert params.shape == (f, 4), (params.shape, images.shape)
    xy = _frame_coords_px(params.to(images.dtype), center, h, w)  # [F, H, W, 2]
    return _sample_px(images.permute(0, 3, 1, 2), xy).permute(0, 2, 3, 1)


def warp_to_reference(image: np.ndarray, params: np.ndarray, center: tuple[float, float]) -> np.ndarray:
    """A frame's ``[H, W]`` or ``[H, W, C]`` image (or map) moved into the reference's pixel grid, float32:
    ``out(x_ref) = image(x_frame(x_ref))``."""
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    x = x[None, ..., None] if image.ndim == 2 else x[None]
    p = torch.as_tensor(np.asarray(params, np.float32)).reshape(1, 4)
    with torch.no_grad():
        out = warp_images(x, p, center)[0].numpy()
    return out[..., 0] if image.ndim == 2 else out


# ----------------------------------------------------------------------------------------------------------------
# Estimation: coarse-to-fine Gauss-Newton with gain, offset and Huber weights.

_WORK_MAX_PX = 1024  # long side above which a block-averaged copy is registered
_PYR_MIN_PX = 20  # no pyramid level's short side below this
_INIT_MAX_PX = 256  # phase correlation (translation start) on the first level with a long side <= this
_LEVEL_SIGMA_PX = 1.0  # low-pass of each level's images, in that level's px
_GAIN_RANGE = (0.1, 10.0)  # exposure gains outside are taken as a failure (e.g. a flat image), and clamped
_HUBER_K = 1.345  # Huber threshold, in robust standard deviations of the residual
_ITERS_COARSE, _ITERS_FINE = 30, 6  # Gauss-Newton iterations per level, coarsest to finest (geometric)
_STOP_PX = 0.005  # a level stops once no corner moves by more than this (level px) in an iteration
_BLUR_WINDOW_PX = 320  # the blur difference is measured on a central window of at most this side (level px)
_BLUR_SEARCH_MAX_FRAC = 0.012  # largest extra blur searched (sigma) per px of the long side ...
_BLUR_SEARCH_MIN_PX = 4.0  # ... but at least this (level px)


def _block_mean(a: np.ndarray, k: int) -> np.ndarray:
    """``[H, W]`` -> ``[H // k, W // k]`` means of k x k blocks (the remainder rows / columns are cut): pixel
    centres map as ``x_out = x_in / k``."""
    h, w = a.shape[0] // k, a.shape[1] // k
    return a[:h * k, :w * k].reshape(h, k, w, k).mean((1, 3))


def _pyramid(gray: np.ndarray) -> list[np.ndarray]:
    """Finest first: ``gray`` and its 2x2 block means down to a short side of ``_PYR_MIN_PX``."""
    levels = [np.asarray(gray, np.float32)]
    while min(levels[-1].shape) // 2 >= _PYR_MIN_PX:
        levels.append(_block_mean(levels[-1], 2))
    return levels


def _work_gray(img: np.ndarray) -> tuple[np.ndarray, int]:
    """Grey copy with a long side <= ``_WORK_MAX_PX`` and its integer downsampling factor."""
    g = _gray(img)
    k = int(np.ceil(max(g.shape) / _WORK_MAX_PX))
    return (g if k == 1 else _block_mean(g, k)).astype(np.float32), k


def _lowpass(a: np.ndarray, sigma_px: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(a, sigma_px, mode="nearest") if sigma_px > 0 else a


def _corner_motion_px(dp: np.ndarray, h: int, w: int, center: np.ndarray) -> float:
    """Largest displacement of an image corner under a small change ``dp`` of the four params (first order)."""
    d = np.array([[0.0, 0.0], [w, 0.0], [0.0, h], [w, h]]) - center
    mx = dp[0] * d[:, 0] - dp[1] * d[:, 1] + dp[2]
    my = dp[0] * d[:, 1] + dp[1] * d[:, 0] + dp[3]
    return float(np.sqrt(mx**2 + my**2).max())


class _LevelFit:
    """Gauss-Newton on one pyramid level: ``img(x_frame(x_ref; p)) ~ gain * ref(x_ref) + offset``."""

    def __init__(self, ref: np.ndarray, img: np.ndarray, center_px: np.ndarray, ref_margin_px: float = 0.5,
                 img_margin_px: float = 0.5):
        assert ref.shape == img.shape, (ref.shape, img.shape)
        self.h, self.w = ref.shape
        self.center = np.asarray(center_px, np.float64)
        self.img_margin_px = img_margin_px  # pixels this close to a border are left out (their low-pass is padded)
        ys, xs = np.arange(self.h) + 0.5, np.arange(self.w) + 0.5
        self.ref_valid = torch.from_numpy(
            ((ys[:, None] >= ref_margin_px) & (ys[:, None] <= self.h - ref_margin_px)
             & (xs[None] >= ref_margin_px) & (xs[None] <= self.w - ref_margin_px)).ravel())  # [N]
        self.ref = torch.from_numpy(np.ascontiguousarray(ref, np.float32)).reshape(-1)  # [N]
        gy, gx = np.gradient(img.astype(np.float32))
        self.stack = torch.from_numpy(np.stack([img, gx, gy]).astype(np.float32))[None]  # [1, 3, H, W]
        dy, dx = np.meshgrid(np.arange(self.h) + 0.5 - self.center[1], np.arange(self.w) + 0.5 - self.center[0],
                             indexing="ij")
        self.d = torch.from_numpy(np.stack([dx.ravel(), dy.ravel()], -1).astype(np.float32))  # [N, 2]
        self.ones = torch.ones(self.h * self.w)

    def residual(self, p: np.ndarray, gain: float, offset: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Residual ``[N]``, validity ``[N]``, sampled gradients ``[N, 2]`` and ``s R (x_ref - c)`` ``[N, 2]``."""
        s, a = np.exp(p[0]), p[1]
        rot = torch.tensor([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]], dtype=torch.float32) * float(s)
        v = self.d @ rot.T  # [N, 2]
        xy = v + torch.tensor(self.center + p[2:], dtype=torch.float32)
        smp = _sample_px(self.stack, xy.reshape(1, 1, -1, 2))[0, :, 0]  # [3, N]
        m = self.img_margin_px
        valid = (self.ref_valid & (xy[:, 0] >= m) & (xy[:, 0] <= self.w - m) & (xy[:, 1] >= m)
                 & (xy[:, 1] <= self.h - m))
        res = smp[0] - float(gain) * self.ref - float(offset)
        return res, valid, smp[1:].T, v

    @staticmethod
    def weights(res: Tensor, valid: Tensor) -> tuple[Tensor, float]:
        """Huber IRLS weights ``[N]`` (zero where invalid) and the robust residual scale."""
        r = res[valid].abs()
        if r.numel() < 16:
            return valid.float(), float("inf")
        step = max(1, r.numel() // 65536)
        sigma = max(1.4826 * float(r[::step].median()), 1e-6)
        k = _HUBER_K * sigma
        return torch.where(valid, torch.clamp(k / res.abs().clamp_min(1e-12), max=1.0), 0.0), sigma

    def run(self, p: np.ndarray, gain: float, offset: float, n_iter: int, lo: np.ndarray,
            hi: np.ndarray) -> tuple[np.ndarray, float, float, float]:
        """Up to ``n_iter`` Gauss-Newton steps from ``(p, gain, offset)``; returns them and the robust RMS residual."""
        p = np.clip(np.asarray(p, np.float64), lo, hi)
        for _ in range(n_iter):
            res, valid, grad, v = self.residual(p, gain, offset)
            w, _ = self.weights(res, valid)
            jac = torch.stack([grad[:, 0] * v[:, 0] + grad[:, 1] * v[:, 1],  # d/d log_scale
                               grad[:, 1] * v[:, 0] - grad[:, 0] * v[:, 1],  # d/d angle
                               grad[:, 0], grad[:, 1], -self.ref, -self.ones], 1)  # [N, 6]
            hess = ((jac * w[:, None]).T @ jac).double().numpy()
            rhs = ((jac * w[:, None]).T @ res).double().numpy()
            norm = np.sqrt(np.maximum(np.diag(hess), 1e-12))
            hess_n = hess / norm[:, None] / norm[None, :] + 1e-6 * np.eye(6)
            step = -np.linalg.solve(hess_n, rhs / norm) / norm
            p_new = np.clip(p + step[:4], lo, hi)
            gain, offset = float(np.clip(gain + step[4], *_GAIN_RANGE)), offset + step[5]
            moved = _corner_motion_px(p_new - p, self.h, self.w, self.center)
            p = p_new
            if moved < _STOP_PX:
                break
        res, valid, _, _ = self.residual(p, gain, offset)
        w, _ = self.weights(res, valid)
        rms = float(torch.sqrt((w * res**2).sum() / w.sum().clamp_min(1e-12)))
        return p, float(gain), float(offset), rms


def _blur_sigmas_px(dvar_px2: float) -> tuple[float, float]:
    """Low-pass sigmas (px) of ref and img: ``_LEVEL_SIGMA_PX``, and the sharper one further by the variance
    difference ``dvar_px2`` (> 0: ``img`` is the blurrier, so ``ref`` is blurred)."""
    return (float(np.sqrt(_LEVEL_SIGMA_PX**2 + max(dvar_px2, 0.0))),
            float(np.sqrt(_LEVEL_SIGMA_PX**2 + max(-dvar_px2, 0.0))))


def _blurred_pair(ref: np.ndarray, img: np.ndarray, dvar_px2: float) -> tuple[np.ndarray, np.ndarray]:
    """``ref`` and ``img`` low-passed by :func:`_blur_sigmas_px`."""
    sigma_ref_px, sigma_img_px = _blur_sigmas_px(dvar_px2)
    return _lowpass(ref, sigma_ref_px), _lowpass(img, sigma_img_px)


def _level_fit(ref: np.ndarray, img: np.ndarray, center_px: np.ndarray, dvar_px2: float) -> _LevelFit:
    """A :class:`_LevelFit` of the blur-matched pair; pixels within 2 sigma of a border are left out."""
    sigma_ref_px, sigma_img_px = _blur_sigmas_px(dvar_px2)
    return _LevelFit(_lowpass(ref, sigma_ref_px), _lowpass(img, sigma_img_px), center_px,
                     0.5 + 2 * sigma_ref_px, 0.5 + 2 * sigma_img_px)


def _blur_difference_px2(ref: np.ndarray, img: np.ndarray, center_px: np.ndarray, p: np.ndarray,
                         guess_px2: float) -> float:
    """Signed variance (level px^2) of the Gaussian that, added to the sharper image, best matches the other
    (least-squares residual after a gain and offset, at the warp ``p``); > 0 where ``img`` is the blurrier.

    Measured on a central window of ``img`` warped into the reference's grid (bilinear, as the Gauss-Newton
    samples it), searched around ``guess_px2``."""
    from scipy.optimize import minimize_scalar

    h, w = ref.shape
    u_max = max(_BLUR_SEARCH_MAX_FRAC * max(h, w), _BLUR_SEARCH_MIN_PX)
    u0 = float(np.clip(np.sign(guess_px2) * np.sqrt(abs(guess_px2)), -u_max, u_max))  # a signed sigma, px
    margin = int(np.ceil(3 * np.sqrt(_LEVEL_SIGMA_PX**2 + (abs(u0) + 1.5) ** 2)))
    y0, x0 = max(0, (h - _BLUR_WINDOW_PX) // 2 - margin), max(0, (w - _BLUR_WINDOW_PX) // 2 - margin)
    y1, x1 = min(h, y0 + _BLUR_WINDOW_PX + 2 * margin), min(w, x0 + _BLUR_WINDOW_PX + 2 * margin)
    xy = _frame_coords_px(torch.tensor(p[None], dtype=torch.float32), tuple(center_px), h, w)[0, y0:y1, x0:x1]
    valid = (xy[..., 0] >= 0.5) & (xy[..., 0] <= w - 0.5) & (xy[..., 1] >= 0.5) & (xy[..., 1] <= h - 0.5)
    valid = valid.numpy()
    valid[:margin], valid[-margin:], valid[:, :margin], valid[:, -margin:] = False, False, False, False
    if valid.sum() < 64:
        return guess_px2
    img_w = _sample_px(torch.from_numpy(np.ascontiguousarray(img, np.float32))[None, None], xy[None])[0, 0].numpy()
    ref_w = ref[y0:y1, x0:x1]

    def cost(u: float) -> float:
        a, b = _blurred_pair(ref_w, img_w, u * abs(u))
        x, y = a[valid].astype(np.float64), b[valid].astype(np.float64)
        x, y = x - x.mean(), y - y.mean()
        return float(np.mean((y - x * (x @ y) / max(x @ x, 1e-12)) ** 2))

    bounds = (max(u0 - 1.5, -u_max), min(u0 + 1.5, u_max))
    u = minimize_scalar(cost, bounds=bounds, method="bounded", options={"xatol": 0.03}).x
    return float(u * abs(u))


def _estimate_on_pyramids(ref_pyr: list[np.ndarray], img_pyr: list[np.ndarray], center_px: np.ndarray,
                          max_shift_px: float, max_log_scale: float, max_angle_rad: float
                          ) -> tuple[np.ndarray, float, float, float]:
    """Coarse to fine over two pyramids (finest first, same shapes); params in finest-level px."""
    n = len(ref_pyr)
    init = next(k for k in range(n) if max(ref_pyr[k].shape) <= _INIT_MAX_PX or k == n - 1)
    dx, dy = estimate_shift_px(ref_pyr[init], img_pyr[init], max_shift_px / 2**init + 1.0)
    p = np.array([0.0, 0.0, dx * 2**init, dy * 2**init])
    gain = float(np.std(img_pyr[-1]) / max(np.std(ref_pyr[-1]), 1e-6))
    offset = float(np.mean(img_pyr[-1]) - gain * np.mean(ref_pyr[-1]))
    rms, dvar_px2 = float("inf"), 0.0  # dvar_px2: blur variance difference in finest-level px^2
    for k in range(n - 1, -1, -1):
        f = 2.0**k
        lo = np.array([-max_log_scale, -max_angle_rad, -max_shift_px / f, -max_shift_px / f])
        n_iter = int(round(_ITERS_FINE * (_ITERS_COARSE / _ITERS_FINE) ** (k / max(n - 1, 1))))
        center_k = center_px / f
        if k == n - 1:  # coarsest: only the translation is known yet; register before measuring the blur
            fit = _level_fit(ref_pyr[k], img_pyr[k], center_k, 0.0)
            pk, gain, offset, rms = fit.run(p / [1, 1, f, f], gain, offset, n_iter, lo, -lo)
            p = pk * [1, 1, f, f]
        dvar_px2 = _blur_difference_px2(ref_pyr[k], img_pyr[k], center_k, p / [1, 1, f, f], dvar_px2 / f**2) * f**2
        fit = _level_fit(ref_pyr[k], img_pyr[k], center_k, dvar_px2 / f**2)
        pk, gain, offset, rms = fit.run(p / [1, 1, f, f], gain, offset, n_iter, lo, -lo)
        p = pk * [1, 1, f, f]
    return p, gain, offset, rms


def estimate_similarity(ref: np.ndarray, img: np.ndarray, center: tuple[float, float], max_shift_px: float = 32.0,
                        max_log_scale: float = 0.15, max_angle_rad: float = 0.1) -> tuple[np.ndarray, float, float]:
    """Similarity of ``img`` to ``ref`` (``[H, W]`` or ``[H, W, C]``, same shape): ``(params [4], gain,
    residual)`` with ``img(x_frame) ~ gain * ref(x_ref) + offset`` and ``residual`` the robust RMS of that
    (grey levels, at the registration's resolution). Each of ``tx, ty``, ``log_scale``, ``angle`` is clamped
    to its range."""
    a, k = _work_gray(ref)
    b, kb = _work_gray(img)
    assert a.shape == b.shape and k == kb, (np.shape(ref), np.shape(img))
    c = np.asarray(center, np.float64).reshape(2) / k
    p, gain, _, rms = _estimate_on_pyramids(_pyramid(a), _pyramid(b), c, max_shift_px / k, max_log_scale,
                                            max_angle_rad)
    return p * [1, 1, k, k], gain, rms


def register_stack(frames: np.ndarray | Tensor, center: tuple[float, float], movable: list[bool],
                   max_shift_px: float = 32.0) -> np.ndarray:
    """``[F, 4]`` similarity of each of ``[F, H, W, C]`` frames (floats in [0, 1]) to frame 0; row 0 and the
    rows whose ``movable`` is False are zero.

    Chained (see the module docstring): frame ``i`` is registered against the nearest earlier frame that is
    movable or frame 0, and the two transforms are composed: ``M_i0 = M_ij @ M_j0``. A frame that is not
    movable breaks the chain and is not used as an anchor.
    """
    frames = frames.detach().cpu().numpy() if isinstance(frames, Tensor) else np.asarray(frames)
    assert frames.ndim in (3, 4), frames.shape
    n = frames.shape[0]
    assert len(movable) == n, (len(movable), n)
    out = np.zeros((n, 4), np.float64)
    pyramids: dict[int, list[np.ndarray]] = {}

    def pyramid(i: int) -> list[np.ndarray]:
        if i not in pyramids:
            pyramids[i] = _pyramid(_work_gray(frames[i])[0])
        return pyramids[i]

    k = int(np.ceil(max(frames.shape[1:3]) / _WORK_MAX_PX))  # as in _work_gray
    c = np.asarray(center, np.float64).reshape(2)
    anchor, m_anchor = 0, np.eye(3)  # the last frame registered (or frame 0) and its ref -> frame matrix
    for i in range(1, n):
        if not movable[i]:
            continue
        p, _, _, _ = _estimate_on_pyramids(pyramid(anchor), pyramid(i), c / k, max_shift_px / k, 0.15, 0.1)
        m_i = similarity_matrix(p * [1, 1, k, k], c) @ m_anchor
        out[i] = params_from_matrix(m_i, c)
        pyramids.pop(anchor, None)  # frames are visited in order: an anchor is not needed again
        anchor, m_anchor = i, m_i
    return out
