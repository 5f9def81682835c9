"""Learnable corrections of the nominal lens: per-frame focus or a monotone focus sweep, and one aperture scale.

Real cameras' nominal values are off (autofocus, focus breathing, f-number
rounding). The fit can refine ``s_i = s_i_nominal * exp(delta_i)`` and
``A = A_nominal * exp(a)`` jointly with the Gaussians. Note what is
identifiable: with frames that share one focus distance (an aperture pair)
depth and focus distance trade off exactly (both scale together), so only
their ratio is observable; the focus correction is then held at zero.

Sweep mode (``calibrate_sweep``) is for stacks whose focus distances are
unknown or approximate (``gs-dfd import --focus-range-m NEAR FAR`` spaces them
evenly in inverse distance). The CoC is affine in ``|1/s_i - 1/d|``, so a stack
alone fixes depth only up to an affine map of inverse depth; the user's
nearest and farthest focus distances fix that map. They stay as given, and the
interior inverse focus distances are learned as a monotone ladder between
them (Suwajanakorn et al., "Depth from Focus with Your Mobile Phone", CVPR
2015, calibrate focus jointly with depth):

    q_k = q_near - (q_near - q_far) * cumsum(p)_k,   p = m * r + (1 - m) * softmax(w + log r)

over the distinct focus distances ``k`` sorted nearest first, with ``r`` the
nominal gaps' shares of the range and ``m`` a floor that keeps every gap at
least ``m`` of its nominal share (strictly monotone even in float32 when
the logits saturate). ``w = 0`` gives the nominal ladder, computed in float64
so that the first render matches the uncalibrated one exactly.

The corrected lenses are a :class:`~gs_dfd.optics.LensBatch` (the CoC
formulas live there), rebuilt from the parameters at every call so
gradients reach them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gs_dfd.data.scene import Scene
from gs_dfd.optics.thin_lens import LensBatch, ThinLens

# Each learned gap of the sweep keeps at least this share of its nominal size.
SWEEP_MIN_GAP_SHARE: float = 0.01

_FOCUS_COL = LensBatch.ROW_FIELDS.index("focus_distance_m")


def _focus_levels(lenses: list[ThinLens]) -> tuple[list[int], list[int]]:
    """Distinct focus distances nearest first: each frame's level ``[F]`` and one frame per level ``[G]``."""
    keys = [round(lens.focus_distance_m, 9) for lens in lenses]
    distinct = sorted(set(keys))
    level_of = [distinct.index(k) for k in keys]
    return level_of, [level_of.index(g) for g in range(len(distinct))]


class LensModel(nn.Module):
    """Per-frame thin lenses with optional learnable corrections."""

    def __init__(self, lenses: list[ThinLens], calibrate: bool = False, *, calibrate_sweep: bool = False):
        super().__init__()
        self.lenses = list(lenses)  # nominal
        self.calibrate = calibrate
        f = len(lenses)
        self.log_focus_scale = nn.Parameter(torch.zeros(f), requires_grad=calibrate)
        self.log_aperture_scale = nn.Parameter(torch.zeros(()), requires_grad=calibrate)
        self.register_buffer("nominal", LensBatch.from_lenses(self.lenses).as_rows(), persistent=False)  # [F, 4]
        level_of, level_frame = _focus_levels(self.lenses)
        distinct = len(level_frame)
        # A sweep has interior focus distances to learn only with >= 3 distinct ones (two are the anchors).
        self.sweep_calibrated = calibrate_sweep and distinct >= 3
        # Focus and depth only separate when at least two focus distances differ; one focus parameterisation at a time.
        self.focus_identifiable = calibrate and distinct >= 2 and not self.sweep_calibrated
        self.log_focus_scale.requires_grad_(self.focus_identifiable)
        if self.sweep_calibrated:
            self.sweep_logits = nn.Parameter(torch.zeros(distinct - 1))  # [G - 1], one per gap; 0 = nominal
            self.register_buffer("level_of", torch.tensor(level_of), persistent=False)  # [F]
            self.register_buffer("level_frame", torch.tensor(level_frame), persistent=False)  # [G]
        else:
            # Registered as None: absent from the state dict, so pre-sweep checkpoints load strictly.
            self.register_parameter("sweep_logits", None)

    @classmethod
    def from_scene(cls, scene: Scene, calibrate: bool = False, calibrate_sweep: bool = False) -> "LensModel":
        return cls([scene.lens(i) for i in range(len(scene.frames))], calibrate, calibrate_sweep=calibrate_sweep)

    def focus_parameters(self) -> list[nn.Parameter]:
        """The learned focus parameters (sweep logits or per-frame scales; none when focus is fixed)."""
        if self.sweep_calibrated:
            return [self.sweep_logits]
        return [self.log_focus_scale] if self.focus_identifiable else []

    def aperture_parameters(self) -> list[nn.Parameter]:
        """The learned aperture scale (none unless ``calibrate``)."""
        return [self.log_aperture_scale] if self.calibrate else []

    def _sweep_focus_m(self) -> Tensor:  # [F]
        """Focus distances of the monotone sweep: anchors as given, interior from the logits (see module doc)."""
        # float64: the nominal ladder must come back bit-exact in float32 at w = 0.
        s_nom = self.nominal[self.level_frame, _FOCUS_COL].double()  # [G], nearest first
        q_nom = 1.0 / s_nom  # [G], decreasing
        gaps = q_nom[:-1] - q_nom[1:]  # [G - 1], > 0
        share = gaps / gaps.sum()  # [G - 1]
        m = SWEEP_MIN_GAP_SHARE
        p = m * share + (1.0 - m) * torch.softmax(self.sweep_logits.double() + share.log(), 0)  # [G - 1], sums to 1
        t = torch.cumsum(p, 0)[:-1]  # [G - 2], strictly increasing in (0, 1)
        q_inner = q_nom[0] - (q_nom[0] - q_nom[-1]) * t  # [G - 2]
        s_level = torch.cat([s_nom[:1], 1.0 / q_inner, s_nom[-1:]])  # [G], the anchors untouched
        s = s_level[self.level_of].to(self.nominal.dtype)  # [F]
        # Frames of the anchor levels keep their own nominal value (equal to the level's up to rounding).
        anchor = (self.level_of == 0) | (self.level_of == len(s_level) - 1)  # [F]
        return torch.where(anchor, self.nominal[:, _FOCUS_COL], s)

    def lens_batch(self, frame_ids: list[int] | None = None) -> LensBatch:
        """The corrected lenses of the listed frames (all: None), differentiable w.r.t. the corrections."""
        ids = list(range(len(self.lenses))) if frame_ids is None else list(frame_ids)
        nominal = LensBatch.from_rows(self.nominal[ids])  # [F']
        f = nominal.focal_length_m
        if self.sweep_calibrated:
            focus = self._sweep_focus_m()[ids]  # [F']
        else:
            focus = nominal.focus_distance_m * torch.exp(self.log_focus_scale[ids])  # [F']
        # Keep s > f whatever the optimiser does: the thin lens has no image inside the focal length.
        focus = focus.clamp_min(f * 1.001)
        f_number = nominal.f_number * torch.exp(-self.log_aperture_scale)
        return LensBatch(f, f_number, focus, nominal.pixel_pitch_m)

    def coc_px(self, depth_m: Tensor, frame_ids: list[int]) -> Tensor:
        """Unsigned CoC (px) of depths ``[N]`` in each listed frame: ``[len(frame_ids), N]``."""
        assert depth_m.dim() == 1, depth_m.shape
        return self.lens_batch(frame_ids).coc_px(depth_m.expand(len(frame_ids), -1))

    def report(self) -> dict:
        """The lens values in use (nominal and, when calibrated, refined)."""
        with torch.no_grad():
            refined = self.lens_batch()
            return {
                "calibrated": self.calibrate or self.sweep_calibrated,
                "focus_calibrated": self.focus_identifiable or self.sweep_calibrated,
                "sweep_calibrated": self.sweep_calibrated,
                "aperture_scale": float(torch.exp(self.log_aperture_scale)),
                "frames": [{"focus_distance_m_nominal": lens.focus_distance_m,
                            "focus_distance_m": float(refined.focus_distance_m[i]),
                            "f_number_nominal": lens.f_number, "f_number": float(refined.f_number[i])}
                           for i, lens in enumerate(self.lenses)],
            }
