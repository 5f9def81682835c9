"""Edge-aware propagation of inverse depth from where defocus measures it into where it cannot.

Depth from defocus is only observed where moving a surface changes the images
(texture, edges). A local smoothness term inside the gradient-descent fit
moves information a few pixels per step, so large textureless regions (walls,
floors) keep whatever depth they started with. Here one global linear solve
fills them (the colourisation-by-optimisation energy of Levin, Lischinski and
Weiss, SIGGRAPH 2004, with per-pixel data weights as in Barron and Poole's
bilateral solver, ECCV 2016):

    min_x  sum_p c_p (x_p - q_p)^2  +  lambda sum_{p~q} w_pq (x_p - x_q)^2,
    w_pq = exp(-|g_p - g_q|^2 / (2 sigma^2)),

on the 4-neighbour grid: ``q`` the fitted inverse depth, ``c`` how strongly
the frames pin it (the fit uses the photometric loss's curvature), ``g`` the
all-in-focus colour, so depth flows along surfaces of one colour and stops at
colour edges. Inverse depth, because the CoC is affine in it.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.sparse.linalg import spsolve


def grid_edges(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs ``(a, b)`` of the horizontal then vertical 4-neighbour edges of an ``h x w`` grid."""
    idx = np.arange(h * w).reshape(h, w)
    a = np.concatenate([idx[:, :-1].ravel(), idx[:-1, :].ravel()])
    b = np.concatenate([idx[:, 1:].ravel(), idx[1:, :].ravel()])
    return a, b


def propagate_inverse_depth(inv_depth: np.ndarray, weight: np.ndarray, guide: np.ndarray,
                            smoothness: float, colour_sigma: float, floor: float = 1e-4) -> np.ndarray:
    """inv_depth/weight ``[H, W]`` (weight >= 0: the data term ``c``), guide ``[H, W, C]`` in [0, 1] -> ``[H, W]``
    inverse depth.

    ``floor``: every pixel keeps this much weight on its own value, so a region that no edge connects to any
    measured pixel stays as it was instead of being undetermined.
    """
    h, w = inv_depth.shape
    assert weight.shape == (h, w) and guide.shape[:2] == (h, w), (inv_depth.shape, weight.shape, guide.shape)
    n = h * w
    g = guide.reshape(n, -1).astype(np.float64)
    a, b = grid_edges(h, w)
    wt = smoothness * np.exp(-((g[a] - g[b]) ** 2).sum(1) / (2.0 * colour_sigma ** 2))
    data = np.clip(weight.ravel().astype(np.float64), 0.0, None) + floor
    laplacian = sparse.coo_matrix((np.concatenate([-wt, -wt]), (np.concatenate([a, b]), np.concatenate([b, a]))),
                                  shape=(n, n)).tocsr()
    degree = np.bincount(a, wt, n) + np.bincount(b, wt, n)
    system = (laplacian + sparse.diags(degree + data)).tocsc()
    x = spsolve(system, data * inv_depth.ravel().astype(np.float64))
    return x.reshape(h, w).astype(np.float32)
