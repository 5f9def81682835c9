"""Thin-lens optics: CoC <-> depth and camera presets."""

from gs_dfd.optics.presets import PRESETS, CameraPreset, get_preset
from gs_dfd.optics.thin_lens import (
    DISK_SIGMA_PER_COC,
    LSQ_DISK_SIGMA_PER_COC,
    LensError,
    ThinLens,
    blur_sigma_px,
    check_lens,
    coc_m,
    coc_px,
    coc_scale_m,
    depth_from_signed_coc_m,
    depth_from_signed_coc_px,
    signed_coc_m,
    signed_coc_px,
)

__all__ = [
    "PRESETS", "CameraPreset", "get_preset", "DISK_SIGMA_PER_COC", "LSQ_DISK_SIGMA_PER_COC", "LensError", "ThinLens",
    "blur_sigma_px", "check_lens", "coc_m", "coc_px", "coc_scale_m", "depth_from_signed_coc_m",
    "depth_from_signed_coc_px", "signed_coc_m", "signed_coc_px",
]
