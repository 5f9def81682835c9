"""Thin-lens optics: the lens (:class:`ThinLens`, batched :class:`LensBatch`), CoC <-> depth, camera presets."""

from gs_dfd.optics.presets import PRESETS, CameraPreset, get_preset
from gs_dfd.optics.thin_lens import (
    DISK_SIGMA_PER_COC,
    LSQ_DISK_SIGMA_PER_COC,
    LensBatch,
    LensError,
    ThinLens,
    blur_sigma_px,
    check_lens,
)

__all__ = [
    "PRESETS", "CameraPreset", "get_preset", "DISK_SIGMA_PER_COC", "LSQ_DISK_SIGMA_PER_COC", "LensBatch", "LensError",
    "ThinLens", "blur_sigma_px", "check_lens",
]
