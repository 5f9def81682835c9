"""Learnable corrections of the nominal lens: per-frame focus distance and one aperture scale.

Real cameras' nominal values are off (autofocus, focus breathing, f-number
rounding). The fit can refine ``s_i = s_i_nominal * exp(delta_i)`` and
``A = A_nominal * exp(a)`` jointly with the Gaussians. Note what is
identifiable: with frames that share one focus distance (an aperture pair)
depth and focus distance trade off exactly (both scale together), so only
their ratio is observable; the focus correction is then held at zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gs_dfd.data.scene import Scene
from gs_dfd.optics.thin_lens import signed_coc_px


@dataclass
class FrameLens:
    focal_length_m: float
    f_number: float
    focus_distance_m: float
    pixel_pitch_m: float


class LensModel(nn.Module):
    """Per-frame thin lenses with optional learnable corrections."""

    def __init__(self, lenses: list[FrameLens], calibrate: bool = False):
        super().__init__()
        self.lenses = lenses
        self.calibrate = calibrate
        f = len(lenses)
        self.log_focus_scale = nn.Parameter(torch.zeros(f), requires_grad=calibrate)
        self.log_aperture_scale = nn.Parameter(torch.zeros(()), requires_grad=calibrate)
        distinct = len({round(lens.focus_distance_m, 9) for lens in lenses})
        # Focus and depth only separate when at least two focus distances differ.
        self.focus_identifiable = calibrate and distinct >= 2
        self.log_focus_scale.requires_grad_(self.focus_identifiable)

    @classmethod
    def from_scene(cls, scene: Scene, calibrate: bool = False) -> "LensModel":
        return cls([FrameLens(scene.camera.focal_length_m, scene.f_number(i), fr.focus_distance_m,
                              scene.camera.pixel_pitch_m) for i, fr in enumerate(scene.frames)], calibrate)

    def focus_distance_m(self, i: int) -> Tensor:
        return self.lenses[i].focus_distance_m * torch.exp(self.log_focus_scale[i])

    def f_number(self, i: int) -> Tensor:
        return self.lenses[i].f_number * torch.exp(-self.log_aperture_scale)

    def coc_px(self, depth_m: Tensor, frame_ids: list[int]) -> Tensor:
        """Unsigned CoC (px) of depths ``[N]`` in each listed frame: ``[len(frame_ids), N]``."""
        out = []
        for i in frame_ids:
            lens = self.lenses[i]
            s = self.focus_distance_m(i).clamp_min(lens.focal_length_m * 1.001)
            c = signed_coc_px(depth_m, lens.focal_length_m, self.f_number(i), s, lens.pixel_pitch_m, validate=False)
            out.append(c.abs())
        return torch.stack(out)

    def report(self) -> dict:
        """The lens values in use (nominal and, when calibrated, refined)."""
        with torch.no_grad():
            return {
                "calibrated": self.calibrate,
                "focus_calibrated": self.focus_identifiable,
                "aperture_scale": float(torch.exp(self.log_aperture_scale)),
                "frames": [{"focus_distance_m_nominal": lens.focus_distance_m,
                            "focus_distance_m": float(self.focus_distance_m(i)),
                            "f_number_nominal": lens.f_number, "f_number": float(self.f_number(i))}
                           for i, lens in enumerate(self.lenses)],
            }
