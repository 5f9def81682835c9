"""Learnable corrections of the nominal lens: per-frame focus distance and one aperture scale.

Real cameras' nominal values are off (autofocus, focus breathing, f-number
rounding). The fit can refine ``s_i = s_i_nominal * exp(delta_i)`` and
``A = A_nominal * exp(a)`` jointly with the Gaussians. Note what is
identifiable: with frames that share one focus distance (an aperture pair)
depth and focus distance trade off exactly (both scale together), so only
their ratio is observable; the focus correction is then held at zero.

The corrected lenses are a :class:`~gs_dfd.optics.LensBatch` (the CoC
formulas live there), rebuilt from the parameters at every call so
gradients reach them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gs_dfd.data.scene import Scene
from gs_dfd.optics.thin_lens import LensBatch, ThinLens


class LensModel(nn.Module):
    """Per-frame thin lenses with optional learnable corrections."""

    def __init__(self, lenses: list[ThinLens], calibrate: bool = False):
        super().__init__()
        self.lenses = list(lenses)  # nominal
        self.calibrate = calibrate
        f = len(lenses)
        self.log_focus_scale = nn.Parameter(torch.zeros(f), requires_grad=calibrate)
        self.log_aperture_scale = nn.Parameter(torch.zeros(()), requires_grad=calibrate)
        self.register_buffer("nominal", LensBatch.from_lenses(self.lenses).as_rows(), persistent=False)  # [F, 4]
        distinct = len({round(lens.focus_distance_m, 9) for lens in lenses})
        # Focus and depth only separate when at least two focus distances differ.
        self.focus_identifiable = calibrate and distinct >= 2
        self.log_focus_scale.requires_grad_(self.focus_identifiable)

    @classmethod
    def from_scene(cls, scene: Scene, calibrate: bool = False) -> "LensModel":
        return cls([scene.lens(i) for i in range(len(scene.frames))], calibrate)

    def lens_batch(self, frame_ids: list[int] | None = None) -> LensBatch:
        """The corrected lenses of the listed frames (all: None), differentiable w.r.t. the corrections."""
        ids = list(range(len(self.lenses))) if frame_ids is None else list(frame_ids)
        nominal = LensBatch.from_rows(self.nominal[ids])  # [F']
        f = nominal.focal_length_m
        # Keep s > f whatever the optimiser does: the thin lens has no image inside the focal length.
        focus = (nominal.focus_distance_m * torch.exp(self.log_focus_scale[ids])).clamp_min(f * 1.001)
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
                "calibrated": self.calibrate,
                "focus_calibrated": self.focus_identifiable,
                "aperture_scale": float(torch.exp(self.log_aperture_scale)),
                "frames": [{"focus_distance_m_nominal": lens.focus_distance_m,
                            "focus_distance_m": float(refined.focus_distance_m[i]),
                            "f_number_nominal": lens.f_number, "f_number": float(refined.f_number[i])}
                           for i, lens in enumerate(self.lenses)],
            }
