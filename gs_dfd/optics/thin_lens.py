"""The thin lens: the one place the circle of confusion (CoC) is derived.

Notation (SI units, metres): focal length ``f``, f-number ``N`` (aperture
diameter ``A = f / N``), focus distance ``s``, object depth ``d``, sensor pixel
pitch ``p``. Everything follows from one constant per lens,

    K = A f / ((s - f) p)          the CoC (px) of a point at infinity
    c_signed(d) = K (1 - s / d)    signed CoC diameter (px): < 0 in front of focus, > 0 behind
    c(d) = |c_signed(d)|           unsigned CoC diameter (px)

``c_signed`` is affine in inverse depth ``q = 1 / d`` (slope ``-K s`` px per
dioptre), so depth is recovered from it exactly: ``q = (1 - c / K) / s``. The
unsigned CoC allows two depths, one on either side of the focus plane; a
second frame (or a prior) picks one.

Two forms, same field names and the same formulas (the private functions
below): :class:`ThinLens` is one lens of Python floats (scene files, the CLI,
NumPy synthesis), :class:`LensBatch` is ``B`` lenses as ``[B]`` tensors
(networks, the renderer, the fit's learnable lens). This module imports
nothing else of the project.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from torch import Tensor

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


# --------------------------------------------------------------------------- validation


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _fmt(v: np.ndarray) -> str:
    v = np.asarray(v)
    return f"{v.item():g}" if v.size == 1 else f"values in [{np.nanmin(v):g}, {np.nanmax(v):g}]"


def _check_positive(name: str, value: Any) -> None:
    v = _as_numpy(value)
    if not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise LensError(f"{name} must be finite and > 0 (got {_fmt(v)})")


def check_lens(focal_length_m: Any, f_number: Any, focus_distance_m: Any, pixel_pitch_m: Any = 1.0) -> None:
    """Refuse lens values where the thin-lens formulas are meaningless (floats, arrays or tensors)."""
    _check_positive("focal_length_m", focal_length_m)
    _check_positive("f_number", f_number)
    _check_positive("pixel_pitch_m", pixel_pitch_m)
    _check_positive("focus_distance_m", focus_distance_m)
    f, s = _as_numpy(focal_length_m), _as_numpy(focus_distance_m)
    if np.any(s <= f):
        raise LensError(
            f"focus_distance_m must be greater than focal_length_m (got s = {_fmt(s)} m, f = {_fmt(f)} m)"
        )


def _check_depth(depth_m: Any) -> None:
    if isinstance(depth_m, Tensor):
        bad = bool((~(depth_m > 0)).any())  # also catches NaN
    else:
        bad = bool(np.any(~(np.asarray(depth_m, dtype=np.float64) > 0)))
    if bad:
        raise LensError("depth_m must be > 0 everywhere (NaN, zero or negative depth given)")


# --------------------------------------------------------------------------- the formulas (floats, arrays, tensors)


def _coc_scale_px(focal_length_m: Any, f_number: Any, focus_distance_m: Any, pixel_pitch_m: Any) -> Any:
    """``K = A f / ((s - f) p)``, ``A = f / N``."""
    f = focal_length_m
    return (f / f_number) * f / ((focus_distance_m - f) * pixel_pitch_m)


def _signed_coc_px(depth_m: Any, k_px: Any, focus_distance_m: Any) -> Any:
    """``K (1 - s / d)``."""
    return k_px * (1.0 - focus_distance_m / depth_m)


def _inverse_depth_from_signed_coc_px(coc_signed_px: Any, k_px: Any, focus_distance_m: Any) -> Any:
    """``q = (1 - c / K) / s``: exact, and <= 0 where no finite depth gives that CoC."""
    return (1.0 - coc_signed_px / k_px) / focus_distance_m


def _depth_from_inverse_depth(inverse_depth: Any) -> Any:
    """``1 / q``, ``inf`` where ``q <= 0`` (a CoC at or beyond the infinity CoC)."""
    if isinstance(inverse_depth, Tensor):
        return torch.where(inverse_depth > 0, 1.0 / inverse_depth.clamp_min(1e-30),
                           torch.full_like(inverse_depth, math.inf))
    q = np.asarray(inverse_depth, dtype=np.float64)
    with np.errstate(divide="ignore"):
        out = np.where(q > 0, 1.0 / np.where(q > 0, q, 1.0), np.inf)
    return out if out.ndim else float(out)


def blur_sigma_px(coc_diameter_px: Any, sigma_per_coc: float = DISK_SIGMA_PER_COC) -> Any:
    """Standard deviation of the Gaussian matching a disk PSF of this diameter.

    ``sigma = sigma_per_coc * |c_px|``; the default 1/4 matches the disk's
    second moment (D3Net used 0.3).
    """
    if not sigma_per_coc > 0:
        raise LensError(f"sigma_per_coc must be > 0 (got {sigma_per_coc})")
    return sigma_per_coc * abs(coc_diameter_px)


# --------------------------------------------------------------------------- one lens


@dataclass(frozen=True)
class ThinLens:
    """A thin lens focused at ``focus_distance_m`` in front of a pixel sensor; validated on creation.

    The CoC methods take a float, a NumPy array or a torch tensor of depths
    (any shape) and return the same type, so one lens serves synthesis
    (NumPy), the CLI and tests; depths must be > 0 (``LensError`` otherwise).
    """

    focal_length_m: float
    f_number: float
    focus_distance_m: float
    pixel_pitch_m: float

    def __post_init__(self) -> None:
        check_lens(self.focal_length_m, self.f_number, self.focus_distance_m, self.pixel_pitch_m)

    @property
    def aperture_m(self) -> float:
        """Aperture diameter ``A = f / N``."""
        return self.focal_length_m / self.f_number

    @property
    def coc_scale_px(self) -> float:
        """``K = A f / ((s - f) p)``: the CoC (px) of a point at infinity; ``c_signed = K (1 - s / d)``."""
        return _coc_scale_px(self.focal_length_m, self.f_number, self.focus_distance_m, self.pixel_pitch_m)

    @property
    def coc_px_per_dioptre(self) -> float:
        """``K s = -d c_signed / d(1/d)``: pixels of CoC per dioptre of inverse-depth change."""
        return self.coc_scale_px * self.focus_distance_m

    def with_focus(self, focus_distance_m: float) -> "ThinLens":
        return replace(self, focus_distance_m=focus_distance_m)

    def signed_coc_px(self, depth_m: Any) -> Any:
        """Signed CoC diameter (px): < 0 in front of the focus plane, > 0 behind it."""
        _check_depth(depth_m)
        return _signed_coc_px(depth_m, self.coc_scale_px, self.focus_distance_m)

    def coc_px(self, depth_m: Any) -> Any:
        """Unsigned CoC diameter (px)."""
        return abs(self.signed_coc_px(depth_m))

    def inverse_depth_from_signed_coc_px(self, coc_signed_px: Any) -> Any:
        """Inverse depth (1/m) of a signed CoC; <= 0 beyond the infinity CoC ``K``."""
        return _inverse_depth_from_signed_coc_px(coc_signed_px, self.coc_scale_px, self.focus_distance_m)

    def depth_from_signed_coc_px(self, coc_signed_px: Any) -> Any:
        """Invert :meth:`signed_coc_px`; signed CoCs at or beyond ``K`` have no finite depth and give ``inf``."""
        return _depth_from_inverse_depth(self.inverse_depth_from_signed_coc_px(coc_signed_px))

    def depths_from_coc_px(self, coc_px: Any) -> tuple[Any, Any]:
        """The two depths ``(near, far)`` of an unsigned CoC, in front of and behind the focus plane (far may be
        ``inf``)."""
        return self.depth_from_signed_coc_px(-coc_px), self.depth_from_signed_coc_px(coc_px)

    def coc_px_range(self, min_depth_m: float, max_depth_m: float) -> tuple[float, float]:
        """Smallest and largest unsigned CoC (pixels) over depths in [min, max]."""
        if not 0 < min_depth_m <= max_depth_m:
            raise LensError(f"need 0 < min_depth_m <= max_depth_m (got {min_depth_m}, {max_depth_m})")
        ends = [abs(float(self.signed_coc_px(d))) for d in (min_depth_m, max_depth_m)]
        lo = 0.0 if min_depth_m <= self.focus_distance_m <= max_depth_m else min(ends)
        return lo, max(ends)


# --------------------------------------------------------------------------- a batch of lenses


def _per_item(x: Tensor, like: Tensor) -> Tensor:
    """``[B]`` -> ``[B, 1, ..., 1]`` broadcasting against ``like`` ``[B, ...]``."""
    assert like.dim() >= 1 and like.shape[0] == x.shape[0], (x.shape, like.shape)
    return x.view((x.shape[0],) + (1,) * (like.dim() - 1))


@dataclass(frozen=True, eq=False)
class LensBatch:
    """``B`` thin lenses as ``[B]`` tensors (differentiable), the fields and formulas of :class:`ThinLens`.

    Per-lens maps are ``[B, ...]``: item ``b`` of a depth or CoC map goes
    through lens ``b``. Values are not validated on creation (the batch may
    hold a learnable lens inside an optimisation); :meth:`check` does it.
    """

    focal_length_m: Tensor  # [B]
    f_number: Tensor  # [B]
    focus_distance_m: Tensor  # [B]
    pixel_pitch_m: Tensor  # [B]

    # The column order of :meth:`as_rows`: the field order.
    ROW_FIELDS: ClassVar[tuple[str, ...]] = ("focal_length_m", "f_number", "focus_distance_m", "pixel_pitch_m")

    def __post_init__(self) -> None:
        ref = self.focal_length_m
        assert isinstance(ref, Tensor) and ref.dim() == 1, f"LensBatch fields are [B] tensors (got {ref!r})"
        for name in self.ROW_FIELDS:
            v = getattr(self, name)
            assert isinstance(v, Tensor) and v.shape == ref.shape, (name, getattr(v, "shape", type(v)), ref.shape)
            assert v.dtype == ref.dtype and v.device == ref.device, (name, v.dtype, v.device, ref.dtype, ref.device)

    # ---- building

    @classmethod
    def from_lenses(cls, lenses: Sequence[ThinLens], device: torch.device | str | None = None,
                    dtype: torch.dtype = torch.float32) -> "LensBatch":
        lenses = list(lenses)
        assert lenses and all(isinstance(lens, ThinLens) for lens in lenses), \
            f"need one or more ThinLens (got {[type(lens).__name__ for lens in lenses]})"
        return cls(*(torch.tensor([getattr(lens, k) for lens in lenses], dtype=dtype, device=device)
                     for k in cls.ROW_FIELDS))

    @classmethod
    def from_rows(cls, rows: Tensor) -> "LensBatch":
        """The inverse of :meth:`as_rows`: ``[B, 4]`` -> a batch (views of the columns, gradients flow)."""
        assert rows.dim() == 2 and rows.shape[1] == len(cls.ROW_FIELDS), rows.shape
        return cls(*rows.unbind(1))

    def as_rows(self) -> Tensor:  # [B, 4]
        """One ``[B, 4]`` tensor, columns in :attr:`ROW_FIELDS` order: how the networks take lenses as input."""
        return torch.stack([getattr(self, k) for k in self.ROW_FIELDS], 1)

    @classmethod
    def cat(cls, batches: Sequence["LensBatch"]) -> "LensBatch":
        """Concatenate batches along ``B``."""
        batches = list(batches)
        assert batches, "need at least one LensBatch"
        return cls(*(torch.cat([getattr(b, k) for b in batches]) for k in cls.ROW_FIELDS))

    def index(self, idx: Any) -> "LensBatch":
        """The lenses ``idx`` selects (slice, index list or tensor, bool mask); an int gives a batch of one."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1 if idx != -1 else None)
        return LensBatch(*(getattr(self, k)[idx] for k in self.ROW_FIELDS))

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "LensBatch":
        return LensBatch(*(getattr(self, k).to(device=device, dtype=dtype) for k in self.ROW_FIELDS))

    def lens(self, i: int) -> ThinLens:
        """Lens ``i`` as floats (validated)."""
        return ThinLens(*(float(getattr(self, k)[i]) for k in self.ROW_FIELDS))

    def lenses(self) -> list[ThinLens]:
        return [self.lens(i) for i in range(len(self))]

    def check(self) -> "LensBatch":
        """Raise :class:`LensError` unless every lens is valid (syncs with the device); returns ``self``."""
        check_lens(self.focal_length_m, self.f_number, self.focus_distance_m, self.pixel_pitch_m)
        return self

    def __len__(self) -> int:
        return int(self.focal_length_m.shape[0])

    @property
    def device(self) -> torch.device:
        return self.focal_length_m.device

    @property
    def dtype(self) -> torch.dtype:
        return self.focal_length_m.dtype

    # ---- optics: ThinLens's formulas per item

    @property
    def aperture_m(self) -> Tensor:  # [B]
        return self.focal_length_m / self.f_number

    @property
    def coc_scale_px(self) -> Tensor:  # [B]
        """``K`` of each lens (see :attr:`ThinLens.coc_scale_px`)."""
        return _coc_scale_px(self.focal_length_m, self.f_number, self.focus_distance_m, self.pixel_pitch_m)

    @property
    def coc_px_per_dioptre(self) -> Tensor:  # [B]
        return self.coc_scale_px * self.focus_distance_m

    def signed_coc_px(self, depth_m: Tensor) -> Tensor:
        """depth_m ``[B, ...]`` (> 0; not checked) -> signed CoC (px) ``[B, ...]``."""
        return _signed_coc_px(depth_m, _per_item(self.coc_scale_px, depth_m), _per_item(self.focus_distance_m, depth_m))

    def coc_px(self, depth_m: Tensor) -> Tensor:
        """depth_m ``[B, ...]`` -> unsigned CoC (px) ``[B, ...]``."""
        return self.signed_coc_px(depth_m).abs()

    def inverse_depth_from_signed_coc_px(self, coc_signed_px: Tensor) -> Tensor:
        """coc ``[B, ...]`` -> inverse depth (1/m) ``[B, ...]``, <= 0 beyond ``K``."""
        return _inverse_depth_from_signed_coc_px(coc_signed_px, _per_item(self.coc_scale_px, coc_signed_px),
                                                 _per_item(self.focus_distance_m, coc_signed_px))

    def depth_from_signed_coc_px(self, coc_signed_px: Tensor) -> Tensor:
        """coc ``[B, ...]`` -> depth (m) ``[B, ...]``, ``inf`` beyond ``K``."""
        return _depth_from_inverse_depth(self.inverse_depth_from_signed_coc_px(coc_signed_px))

    def depths_from_coc_px(self, coc_px: Tensor) -> tuple[Tensor, Tensor]:
        """Unsigned coc ``[B, ...]`` -> its two depths ``(near, far)``, each ``[B, ...]``."""
        return self.depth_from_signed_coc_px(-coc_px), self.depth_from_signed_coc_px(coc_px)


assert tuple(f.name for f in fields(ThinLens)) == LensBatch.ROW_FIELDS == tuple(f.name for f in fields(LensBatch))
