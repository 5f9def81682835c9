"""The per-scene Gaussian fit a training scene needs, computed once and cached.

A cache entry is the output folder of ``gs-dfd fit`` run with
``--no-evaluate`` (no ground truth read): ``gaussians.ply`` (the 3D model),
``depth.npy`` and ``confidence.npy`` (the anchor). An entry is reused when
its ``config.json`` records the same scene, iteration count, ``--propagate`` and
``--sigma-per-coc`` (entries from before those options existed were fitted
without propagation and with sigma = 0.25 c).
"""

from __future__ import annotations

import json
from pathlib import Path

from gs_dfd.console import console
from gs_dfd.optics.thin_lens import DISK_SIGMA_PER_COC, LSQ_DISK_SIGMA_PER_COC

CACHE_FILES = ("gaussians.ply", "depth.npy", "confidence.npy", "config.json")


def cache_dir_for(scene_dir: Path, cache_root: Path) -> Path:
    return cache_root / scene_dir.name


def is_cached(scene_dir: Path, cache_root: Path, iterations: int, propagate: str = "auto",
              sigma_per_coc: float = LSQ_DISK_SIGMA_PER_COC) -> bool:
    entry = cache_dir_for(scene_dir, cache_root)
    if not all((entry / f).is_file() for f in CACHE_FILES):
        return False
    try:
        cfg = json.loads((entry / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return (int(cfg.get("iterations", -1)) == iterations and Path(cfg.get("scene", "")).name == scene_dir.name
            and cfg.get("propagate", "off") == propagate
            and abs(float(cfg.get("sigma_per_coc", DISK_SIGMA_PER_COC)) - sigma_per_coc) < 1e-9)


def ensure_fits(scene_dirs: list[Path], cache_root: Path, iterations: int, backend: str = "auto",
                progress: bool = True, propagate: str = "auto",
                sigma_per_coc: float = LSQ_DISK_SIGMA_PER_COC) -> list[Path]:
    """Fit every scene that has no valid cache entry; returns the entries in ``scene_dirs``' order."""
    from gs_dfd.commands.fit import FitConfig, run as run_fit

    todo = [s for s in scene_dirs if not is_cached(s, cache_root, iterations, propagate, sigma_per_coc)]
    if todo:
        console.print(f"fitting {len(todo)} of {len(scene_dirs)} training scenes once ({iterations} steps each) "
                      f"into the cache {cache_root}")
    for scene in console.progress(todo, "fit cache", enabled=progress and bool(todo)):
        run_fit(FitConfig(scene=scene, out=cache_dir_for(scene, cache_root), iterations=iterations, evaluate=False,
                          backend=backend, overwrite=True, progress=False, propagate=propagate,
                          sigma_per_coc=sigma_per_coc))
    return [cache_dir_for(s, cache_root) for s in scene_dirs]
