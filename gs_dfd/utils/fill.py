"""Nearest-valid-pixel filling of maps with holes (depth inputs, renders with uncovered pixels)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def fill_nearest(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``[H, W]`` map with every invalid pixel replaced by its nearest valid pixel's value."""
    assert values.shape == valid.shape, (values.shape, valid.shape)
    if not valid.any():
        raise ValueError("map has no valid pixel to fill from")
    if valid.all():
        return values
    idx = ndimage.distance_transform_edt(~valid, return_distances=False, return_indices=True)
    return values[tuple(idx)]
