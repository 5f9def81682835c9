"""Thin-lens circle of confusion (CoC): the one place the optics live.

Notation (SI units, metres): focal length ``f``, f-number ``N`` (aperture
diameter ``A = f / N``), focus distance ``s``, object depth ``d``, sensor pixel
pitch ``p``.

    CoC diameter on the sensor   c(d)      = A f |d - s| / (d (s - f))
    signed form                  c_signed  = A f / (s - f) * (1 - s / d)
    in pixels                    c_px      = c / p

``c_signed`` is negative in front of the focus plane and positive behind it;
it is affine in inverse depth, so depth is recovered from it exactly. The
unsigned CoC has a near/far ambiguity around ``s`` that a second focus
distance (or a prior) resolves.

Every function accepts Python floats, NumPy arrays or torch tensors for the
depth / CoC argument (the lens values may be floats or broadcastable arrays)
and keeps the type it was given, so the same code serves data synthesis
(NumPy), rendering (torch, differentiable) and the CLI.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

try:  # torch is a hard dependency of the package; keep this module importable without it.
    import torch
except ImportError:  # pragma: no cover
    torch = None  # type: ignore[assignment]

# Ratio sigma / CoC-diameter of the Gaussian whose second moment matches a
# uniform disk: a disk of radius R has per-axis variance R^2 / 4, so
# sigma = R / 2 = c / 4. D3Net used 0.3 instead; keep it a parameter.
DISK_SIGMA_PER_COC: float = 0.25

# The Gaussian closest in L2 to a disk blur of natural images is wider than the
# moment match: sigma / c = 0.275-0.29 for CoCs of 3 px and more (1/f noise and
# the nyu / cones all-in-focus images; tests/test_optics.py). What gs-dfd fit
# uses, since it matches renders to disk-blurred frames by a photometric loss.
LSQ_DISK_SIGMA_PER_COC: float = 0.275


class LensError(ValueError):
    """A lens value is outside the range where the thin-lens model holds."""


def _is_tensor(x: Any) -> bool:
    return torch is not None and isinstance(x, torch.Tensor)


def _check_positive(name: str, value: Any) -> None:
    v = value.detach().cpu().numpy() if _is_tensor(value) else np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise LensError(f"{name} must be finite and > 0 (got {_fmt(v)})")


def _fmt(v: np.ndarray) -> str:
    v = np.asarray(v)
    return f"{float(v):g}" if v.size == 1 else f"values in [{np.nanmin(v):g}, {np.nanmax(v):g}]"


def check_lens(focal_length_m: Any, f_number: Any, focus_distance_m: Any, pixel_pitch_m: Any = 1.0) -> None:
    """Refuse lens values where the thin-lens formulas are meaningless."""
    _check_positive("focal_length_m", focal_length_m)
    _check_positive("f_number", f_number)
    _check_positive("pixel_pitch_m", pixel_pitch_m)
    _check_positive("focus_distance_m", focus_distance_m)
    f = np.asarray(focal_length_m.detach().cpu() if _is_tensor(focal_length_m) else focal_length_m, dtype=np.float64)
    s = np.asarray(focus_distance_m.detach().cpu() if _is_tensor(focus_distance_m) else focus_distance_m, dtype=np.float64)
    if np.any(s <= f):
        raise LensError(
            f"focus_distance_m must be greater than focal_length_m (got s = {_fmt(s)} m, f = {_fmt(f)} m)"
        )


def _check_depth(depth_m: Any) -> None:
    if _is_tensor(depth_m):
        bad = bool((~(depth_m > 0)).any())  # also catches NaN
    else:
        bad = bool(np.any(~(np.asarray(depth_m, dtype=np.float64) > 0)))
    if bad:
        raise LensError("depth_m must be > 0 everywhere (NaN, zero or negative depth given)")


def coc_scale_m(focal_length_m: Any, f_number: Any, focus_distance_m: Any) -> Any:
    """``A f / (s - f)``: the CoC diameter (metres) of a point at infinite depth."""
    aperture_m = focal_length_m / f_number
    return aperture_m * focal_length_m / (focus_distance_m - focal_length_m)


def signed_coc_m(depth_m: Any, focal_length_m: Any, f_number: Any, focus_distance_m: Any, validate: bool = True) -> Any:
    """Signed CoC diameter on the sensor in metres: < 0 in front of focus, > 0 behind."""
    if validate:
        check_lens(focal_length_m, f_number, focus_distance_m)
        _check_depth(depth_m)
    return coc_scale_m(focal_length_m, f_number, focus_distance_m) * (1.0 - focus_distance_m / depth_m)


def coc_m(depth_m: Any, focal_length_m: Any, f_number: Any, focus_distance_m: Any, validate: bool = True) -> Any:
    """Unsigned CoC diameter on the sensor in metres."""
    return abs(signed_coc_m(depth_m, focal_length_m, f_number, focus_distance_m, validate))


def signed_coc_px(
    depth_m: Any, focal_length_m: Any, f_number: Any, focus_distance_m: Any, pixel_pitch_m: Any, validate: bool = True
) -> Any:
    """Signed CoC diameter in pixels of the stored image."""
    if validate:
        _check_positive("pixel_pitch_m", pixel_pitch_m)
    return signed_coc_m(depth_m, focal_length_m, f_number, focus_distance_m, validate) / pixel_pitch_m


def coc_px(
    depth_m: Any, focal_length_m: Any, f_number: Any, focus_distance_m: Any, pixel_pitch_m: Any, validate: bool = True
) -> Any:
    """Unsigned CoC diameter in pixels of the stored image."""
    return abs(signed_coc_px(depth_m, focal_length_m, f_number, focus_distance_m, pixel_pitch_m, validate))


def depth_from_signed_coc_m(
    coc_signed_m: Any, focal_length_m: Any, f_number: Any, focus_distance_m: Any, validate: bool = True
) -> Any:
    """Invert :func:`signed_coc_m`: ``d = s / (1 - c / (A f / (s - f)))``.

    Signed CoCs at or above the infinity CoC ``A f / (s - f)`` have no finite
    depth; they map to ``inf`` (NumPy) or raise nothing and give ``inf`` (torch).
    """
    if validate:
        check_lens(focal_length_m, f_number, focus_distance_m)
    inverse_depth = (1.0 - coc_signed_m / coc_scale_m(focal_length_m, f_number, focus_distance_m)) / focus_distance_m
    if _is_tensor(inverse_depth):
        return torch.where(inverse_depth > 0, 1.0 / inverse_depth.clamp_min(1e-30), torch.full_like(inverse_depth, math.inf))
    inverse_depth = np.asarray(inverse_depth, dtype=np.float64)
    with np.errstate(divide="ignore"):
        out = np.where(inverse_depth > 0, 1.0 / np.where(inverse_depth > 0, inverse_depth, 1.0), np.inf)
    return out if out.ndim else float(out)


def depth_from_signed_coc_px(
    coc_signed_px: Any, focal_length_m: Any, f_number: Any, focus_distance_m: Any, pixel_pitch_m: Any,
    validate: bool = True,
) -> Any:
    """Invert :func:`signed_coc_px`."""
    if validate:
        _check_positive("pixel_pitch_m", pixel_pitch_m)
    return depth_from_signed_coc_m(coc_signed_px * pixel_pitch_m, focal_length_m, f_number, focus_distance_m, validate)


def blur_sigma_px(coc_diameter_px: Any, sigma_per_coc: float = DISK_SIGMA_PER_COC) -> Any:
    """Standard deviation of the Gaussian matching a disk PSF of this diameter.

    ``sigma = sigma_per_coc * |c_px|``; the default 1/4 matches the disk's
    second moment (D3Net used 0.3).
    """
    if not sigma_per_coc > 0:
        raise LensError(f"sigma_per_coc must be > 0 (got {sigma_per_coc})")
    return sigma_per_coc * abs(coc_diameter_px)


@dataclass(frozen=True)
class ThinLens:
    """A thin lens focused at ``focus_distance_m`` in front of a pixel sensor."""

    focal_length_m: float
    f_number: float
    focus_distance_m: float
    pixel_pitch_m: float

    def __post_init__(self) -> None:
        check_lens(self.focal_length_m, self.f_number, self.focus_distance_m, self.pixel_pitch_m)

    @property
    def aperture_m(self) -> float:
        return self.focal_length_m / self.f_number

    def with_focus(self, focus_distance_m: float) -> "ThinLens":
        return replace(self, focus_distance_m=focus_distance_m)

    def signed_coc_px(self, depth_m: Any) -> Any:
        return signed_coc_px(depth_m, self.focal_length_m, self.f_number, self.focus_distance_m, self.pixel_pitch_m)

    def coc_px(self, depth_m: Any) -> Any:
        return abs(self.signed_coc_px(depth_m))

    def depth_from_signed_coc_px(self, coc_signed_px: Any) -> Any:
        return depth_from_signed_coc_px(
            coc_signed_px, self.focal_length_m, self.f_number, self.focus_distance_m, self.pixel_pitch_m
        )

    def coc_px_per_inverse_metre(self) -> float:
        """d c_signed_px / d(1/d): how many pixels of CoC one dioptre of depth change gives."""
        return coc_scale_m(self.focal_length_m, self.f_number, self.focus_distance_m) * self.focus_distance_m / self.pixel_pitch_m

    def coc_px_range(self, min_depth_m: float, max_depth_m: float) -> tuple[float, float]:
        """Smallest and largest unsigned CoC (pixels) over depths in [min, max]."""
        if not 0 < min_depth_m <= max_depth_m:
            raise LensError(f"need 0 < min_depth_m <= max_depth_m (got {min_depth_m}, {max_depth_m})")
        ends = [abs(float(self.signed_coc_px(d))) for d in (min_depth_m, max_depth_m)]
        lo = 0.0 if min_depth_m <= self.focus_distance_m <= max_depth_m else min(ends)
        return lo, max(ends)
