"""Depth from the CoC maps of two frames of one view (the siamese pair at inference).

One unsigned CoC ``c = K |1 - s q|`` (``q`` inverse depth) allows two inverse
depths, ``(1 -+ c/K) / s``. A second frame with another focus distance or
aperture allows two more; where one candidate of each frame agrees, that
agreement is the thin-lens answer, and the near/far ambiguity is gone. Where
no pair of candidates agrees (textureless regions, where CoC is unreliable)
or the agreed depth is far from the networks' own depths, the networks'
depths, averaged, stay.

Both averages weight each frame by its precision: a CoC error of one pixel
moves ``q`` by ``1 / (K s)``, so a frame weighs ``(K s)^2``. For an aperture
pair (f/2.8 + f/8, one focus distance) the wide-open frame then counts eight
times as much as the other; with equal weights its noisy small CoC made the
pair worse than the f/2.8 frame alone (README, "Depth from one defocused image").
"""

from __future__ import annotations

import numpy as np

from gs_dfd.optics.thin_lens import ThinLens


def fuse_pair(depth_a: np.ndarray, coc_a: np.ndarray, lens_a: ThinLens, depth_b: np.ndarray, coc_b: np.ndarray,
              lens_b: ThinLens, max_disagreement_px: float = 1.5, max_log_change: float = 0.5) -> np.ndarray:
    """All maps ``[H, W]``; returns depth ``[H, W]`` float32 (metres).

    ``max_disagreement_px``: largest difference of the two frames' inverse depths to count as agreement, in
    units of the change one pixel of CoC error makes (both frames' together);
    ``max_log_change``: largest |log| ratio between the thin-lens answer and the networks' depth to accept it.
    """
    assert depth_a.shape == coc_a.shape == depth_b.shape == coc_b.shape, (depth_a.shape, coc_b.shape)
    lenses = (lens_a, lens_b)
    q_per_px = [1.0 / lens.coc_px_per_dioptre for lens in lenses]
    w_a = q_per_px[1] ** 2 / (q_per_px[0] ** 2 + q_per_px[1] ** 2)  # precision weight of frame a
    w_b = 1.0 - w_a
    prior_q = np.exp(-(w_a * np.log(depth_a) + w_b * np.log(depth_b)))
    q_noise = float(np.hypot(*q_per_px))
    # Each frame's two inverse depths: behind the focus plane (signed CoC +c), in front (-c).
    cands = [[lens.inverse_depth_from_signed_coc_px(coc), lens.inverse_depth_from_signed_coc_px(-coc)]
             for coc, lens in zip((coc_a, coc_b), lenses)]
    # Of the candidate pairs that agree and stay near the networks' depth, the one that agrees best. An aperture
    # pair's near and far candidates agree exactly equally well; the tie-break term (at most 0.0005 px) lets
    # the networks' side decide there.
    best_score = np.full(depth_a.shape, np.inf)
    best_q = prior_q.copy()
    for qa in cands[0]:
        for qb in cands[1]:
            q = w_a * qa + w_b * qb
            change = np.abs(np.log(np.maximum(q, 1e-12) / prior_q))
            disagreement_px = np.abs(qa - qb) / q_noise
            valid = (qa > 0) & (qb > 0) & (disagreement_px < max_disagreement_px) & (change < max_log_change)
            score = np.where(valid, disagreement_px + 1e-3 * change, np.inf)
            better = score < best_score
            best_score = np.where(better, score, best_score)
            best_q = np.where(better, q, best_q)
    return (1.0 / best_q).astype(np.float32)
