"""The per-scene Gaussian fit a training scene needs, computed once and cached.

A cache entry is the output folder of a fit (:func:`gs_dfd.fit.pipeline.fit_scene`, what ``gs-dfd fit`` runs)
with ``evaluate=False`` (no ground truth read): ``gaussians.ply`` (the 3D model),
``depth.npy`` and ``confidence.npy`` (the anchor). An entry is reused when
its ``config.json`` records the same scene, iteration count, ``--propagate`` and
``--sigma-per-coc`` (entries from before those options existed were fitted
without propagation and with sigma = 0.25 c), and its ``stack.json`` the same
focal stack: a scene rebuilt with other focus distances under the same name is
fitted again, not silently served the old stack's fit.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from gs_dfd.console import console
from gs_dfd.errors import Interrupted
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


def ensure_fits(scene_dirs: list[Path], cache_root: Path, iterations: int, backend: str = "auto",
                progress: bool = True, propagate: str = "auto",
                sigma_per_coc: float = LSQ_DISK_SIGMA_PER_COC) -> list[Path]:
    """Fit every scene that has no valid cache entry; returns the entries in ``scene_dirs``' order."""
    todo = [s for s in scene_dirs if not is_cached(s, cache_root, iterations, propagate, sigma_per_coc)]
    if todo:
        console.print(f"fitting {len(todo)} of {len(scene_dirs)} training scenes once ({iterations} steps each) "
                      f"into the cache {cache_root}")
    for scene in console.progress(todo, "fit cache", enabled=progress and bool(todo)):
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
    return [cache_dir_for(s, cache_root) for s in scene_dirs]
