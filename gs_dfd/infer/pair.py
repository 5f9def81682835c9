"""Depth from the CoC maps of two frames of one view (the siamese pair at inference).

One unsigned CoC ``c = K |1 - s q|`` (``q`` inverse depth) allows two inverse
depths, ``(1 -+ c/K) / s``. A second frame with another focus distance or
aperture allows two more; where one candidate of each frame agrees, that
agreement is the thin-lens answer, and the near/far ambiguity is gone. Where
no pair of candidates agrees (textureless regions, where CoC is unreliable)
or the agreed depth is far from the networks' own depths, the geometric mean
of the two DepthNet branches stays.
"""

from __future__ import annotations

import numpy as np

from gs_dfd.optics.thin_lens import ThinLens


def coc_scale_px(lens: ThinLens) -> float:
    """``K``: the CoC in pixels of a point at infinity."""
    return lens.aperture_m * lens.focal_length_m / ((lens.focus_distance_m - lens.focal_length_m) * lens.pixel_pitch_m)


def fuse_pair(depth_a: np.ndarray, coc_a: np.ndarray, lens_a: ThinLens, depth_b: np.ndarray, coc_b: np.ndarray,
              lens_b: ThinLens, max_disagreement: float = 0.15, max_log_change: float = 0.5) -> np.ndarray:
    """All maps ``[H, W]``; returns depth ``[H, W]`` float32 (metres).

    ``max_disagreement``: largest relative difference of the two frames' inverse depths to count as agreement;
    ``max_log_change``: largest |log| ratio between the thin-lens answer and the networks' depth to accept it.
    """
    assert depth_a.shape == coc_a.shape == depth_b.shape == coc_b.shape, (depth_a.shape, coc_b.shape)
    prior_q = 1.0 / np.sqrt(depth_a * depth_b)
    cands = []
    for coc, lens in ((coc_a, lens_a), (coc_b, lens_b)):
        ratio = coc / coc_scale_px(lens)
        cands.append([(1.0 - ratio) / lens.focus_distance_m, (1.0 + ratio) / lens.focus_distance_m])
    best_err = np.full(depth_a.shape, np.inf)
    best_q = prior_q.copy()
    for qa in cands[0]:
        for qb in cands[1]:
            q = 0.5 * (qa + qb)
            ok = (qa > 0) & (qb > 0)
            err = np.where(ok, np.abs(qa - qb) / np.maximum(q, 1e-6), np.inf)
            better = err < best_err
            best_err = np.where(better, err, best_err)
            best_q = np.where(better, q, best_q)
    accept = (best_err < max_disagreement) & (np.abs(np.log(np.maximum(best_q, 1e-6) / prior_q)) < max_log_change)
    return (1.0 / np.where(accept, best_q, prior_q)).astype(np.float32)
