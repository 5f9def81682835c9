"""The per-scene Gaussian fit a training scene needs, computed once and cached.

A cache entry is the output folder of a fit (:func:`gs_dfd.fit.pipeline.fit_scene`, what ``gs-dfd fit`` runs)
with ``evaluate=False`` (no ground truth read): ``gaussians.ply`` (the 3D model),
``depth.npy`` and ``confidence.npy`` (the anchor). An entry is reused when
its ``config.json`` records the same scene, iteration count, ``--propagate`` and
``--sigma-per-coc`` (entries from before those options existed were fitted
without propagation and with sigma = 0.25 c), and its ``stack.json`` the same
focal stack: a scene rebuilt with other focus distances under the same name is
fitted again, not silently served the old stack's fit.

Under ``torchrun`` every process fits its share of the uncached scenes (:func:`ensure_fits` with ``rank`` and
``world``): all list the uncached scenes before any writes, each fits every ``world``-th of them from its
``rank`` on, and after a barrier each checks that every entry is now there, so a fit another process lost is
one line naming its scene, not a crash later in training.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

from gs_dfd.console import console
from gs_dfd.errors import GsDfdError, Interrupted
from gs_dfd.fit.gaussian_fit import GaussianFitSettings
from gs_dfd.fit.pipeline import FitSceneConfig, fit_scene
from gs_dfd.optics.thin_lens import DISK_SIGMA_PER_COC, LSQ_DISK_SIGMA_PER_COC
from gs_dfd.utils.atomic import write_json_atomic
from gs_dfd.utils.outputs import partial_dir

CACHE_FILES = ("gaussians.ply", "depth.npy", "confidence.npy", "config.json")
STACK_FILE = "stack.json"


def stack_sha256(scene_dir: Path) -> str:
    """A digest of what a fit reads from a scene: the camera, each frame's settings and its image bytes."""
    spec = json.loads((scene_dir / "scene.json").read_text())
    digest = hashlib.sha256(json.dumps({"camera": spec.get("camera"), "frames": spec.get("frames")},
                                       sort_keys=True).encode())
    for frame in spec.get("frames", []):
        digest.update((scene_dir / frame["image"]).read_bytes())
    return digest.hexdigest()


def cache_dir_for(scene_dir: Path, cache_root: Path) -> Path:
    return cache_root / scene_dir.name


def record_stack(scene_dir: Path, cache_root: Path) -> None:
    """Write the stack digest into an entry (after its fit, or by hand for an entry known to match)."""
    write_json_atomic(cache_dir_for(scene_dir, cache_root) / STACK_FILE, {"stack_sha256": stack_sha256(scene_dir)})


def is_cached(scene_dir: Path, cache_root: Path, iterations: int, propagate: str = "auto",
              sigma_per_coc: float = LSQ_DISK_SIGMA_PER_COC) -> bool:
    entry = cache_dir_for(scene_dir, cache_root)
    if not all((entry / f).is_file() for f in (*CACHE_FILES, STACK_FILE)):
        return False
    try:
        cfg = json.loads((entry / "config.json").read_text())
        recorded = json.loads((entry / STACK_FILE).read_text()).get("stack_sha256")
    except (OSError, ValueError, AttributeError):
        return False
    if not (int(cfg.get("iterations", -1)) == iterations and Path(cfg.get("scene", "")).name == scene_dir.name
            and cfg.get("propagate", "off") == propagate
            and abs(float(cfg.get("sigma_per_coc", DISK_SIGMA_PER_COC)) - sigma_per_coc) < 1e-9):
        return False
    try:
        return recorded == stack_sha256(scene_dir)
    except (OSError, ValueError, KeyError, TypeError):  # a broken scene: its fit reports it in one line
        return False


def _no_barrier() -> None:
    pass


def uncached_scenes(scene_dirs: list[Path], cache_root: Path, iterations: int, propagate: str = "auto",
                    sigma_per_coc: float = LSQ_DISK_SIGMA_PER_COC) -> list[Path]:
    """The scenes without a valid cache entry, sorted by name: every process lists the same ones in the same
    order, so each can take its share by index."""
    return sorted((s for s in scene_dirs if not is_cached(s, cache_root, iterations, propagate, sigma_per_coc)),
                  key=lambda s: s.name)


def share_of(todo: list[Path], rank: int, world: int) -> list[Path]:
    """Process ``rank``'s share of ``todo``: the entries whose index i has i % world == rank."""
    assert world >= 1 and 0 <= rank < world, (rank, world)
    return [s for i, s in enumerate(todo) if i % world == rank]


def _fit_one(scene: Path, cache_root: Path, iterations: int, backend: str, propagate: str,
             sigma_per_coc: float) -> None:
    entry = cache_dir_for(scene, cache_root)
    try:  # a fit that an earlier Ctrl-C interrupted continues from its checkpoint
        fit_scene(FitSceneConfig(scene=scene, out=entry, evaluate=False, overwrite=True,
                                 resume=partial_dir(entry).is_dir(), progress=False, propagate=propagate,
                                 fit=GaussianFitSettings(iterations=iterations, backend=backend,
                                                         sigma_per_coc=sigma_per_coc)))
    except (KeyboardInterrupt, Interrupted):
        raise Interrupted(f"interrupted while fitting training scene {scene.name} into the cache {cache_root}; "
                          f"its checkpoint is kept: run the same command with --resume to continue") from None
    record_stack(scene, cache_root)


def ensure_fits(scene_dirs: list[Path], cache_root: Path, iterations: int, backend: str = "auto",
                progress: bool = True, propagate: str = "auto", sigma_per_coc: float = LSQ_DISK_SIGMA_PER_COC,
                rank: int = 0, world: int = 1, barrier: Callable[[], None] = _no_barrier) -> list[Path]:
    """Fit every scene that has no valid cache entry; returns the entries in ``scene_dirs``' order.

    With ``world`` processes (``rank`` this one; each calls this with its ``barrier``), this process fits only
    its share (:func:`share_of`) of the uncached scenes. The list is made before the first barrier, so no
    process sees another's entries appear while listing; after the second, every process checks each entry of
    the list and raises a one-line :class:`GsDfdError` naming a scene whose entry is still missing."""
    todo = uncached_scenes(scene_dirs, cache_root, iterations, propagate, sigma_per_coc)
    barrier()  # every process has listed before any writes
    mine = share_of(todo, rank, world)
    if todo and rank == 0:
        shared = f" over {world} processes (at most {len(share_of(todo, 0, world))} each)" if world > 1 else ""
        console.print(f"fitting {len(todo)} of {len(scene_dirs)} training scenes once ({iterations} steps each) "
                      f"into the cache {cache_root}{shared}")
    for scene in console.progress(mine, "fit cache", enabled=progress and rank == 0 and bool(mine)):
        _fit_one(scene, cache_root, iterations, backend, propagate, sigma_per_coc)
    barrier()  # every share is done
    for i, scene in enumerate(todo):
        if not is_cached(scene, cache_root, iterations, propagate, sigma_per_coc):
            who = f" (process {i % world} of {world} was to fit it)" if world > 1 else ""
            raise GsDfdError(f"no valid fit cache entry for training scene {scene.name} in {cache_root} after "
                             f"fitting{who}")
    return [cache_dir_for(s, cache_root) for s in scene_dirs]
