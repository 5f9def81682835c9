"""Figure panels (matplotlib, off-screen) for a person to look at."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from gs_dfd.utils.atomic import write_file_atomic


def save_panel(path: str | Path, tiles: Sequence[np.ndarray | None], titles: Sequence[str], columns: int | None = None,
               suptitle: str | None = None, tile_width_in: float = 2.6) -> Path:
    """Lay out images (``[H, W]``, ``[H, W, 1]`` or ``[H, W, 3]``; float in [0,1] or uint8) in a titled grid.

    A ``None`` tile leaves its cell empty.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    assert len(tiles) == len(titles) and tiles, (len(tiles), len(titles))
    n = len(tiles)
    cols = columns or min(n, 4)
    rows = (n + cols - 1) // cols
    h, w = next(t for t in tiles if t is not None).shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(tile_width_in * cols, (tile_width_in * h / w + 0.35) * rows + 0.3),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, tile, title in zip(axes.ravel(), tiles, titles):
        if tile is None:
            continue
        img = tile[..., 0] if tile.ndim == 3 and tile.shape[2] == 1 else tile
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1 if img.dtype != np.uint8 else 255,
                  interpolation="nearest")
        ax.set_title(title, fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()

    def _write(p: Path) -> None:
        fig.savefig(p, dpi=110, format="png")

    try:
        return write_file_atomic(path, _write)
    finally:
        plt.close(fig)
