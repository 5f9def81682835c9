"""Training scenes and random crops of frame pairs.

Self-supervised means it: :func:`load_train_scene` reads the frames, the
lens of every frame and the cached Gaussian fit (its ``aif.png`` too, for
the ``dered`` ablation: the fit's estimate), and only in ``supervised=True``
mode (a comparison switch, and the supervised baselines ``d3net`` and
``mddnet``, which need no fit at all) the ground-truth depth. It never reads
the scene's ``all_in_focus``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from gs_dfd.data.images import read_image
from gs_dfd.data.maps import load_npy
from gs_dfd.data.scene import Scene, load_scene
from gs_dfd.errors import InputError
from gs_dfd.export.gaussian_ply import GaussianCloud, read_gaussian_ply
from gs_dfd.optics.thin_lens import LensBatch


@dataclass
class TrainScene:
    name: str
    scene: Scene
    frames: Tensor  # [F, H, W, 3] in [0, 1]
    lenses: Tensor  # [F, 4] every frame's lens as a row (LensBatch.as_rows), the networks' lens input
    means: Tensor  # [N, 3] world, metres (the cached fit)
    quats: Tensor  # [N, 4]
    scales: Tensor  # [N, 3]
    opacities: Tensor  # [N]
    colors: Tensor  # [N, 3]
    fit_depth: Tensor  # [H, W] metres
    fit_confidence: Tensor  # [H, W] in [0, 1]
    depth_gt: Tensor | None = None  # [H, W]; only in supervised mode, 0 = invalid
    fit_aif: Tensor | None = None  # [H, W, 3] the fit's all-in-focus estimate (dered only)

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.frames.shape[1]), int(self.frames.shape[2])


def find_scenes(roots: list[Path] | tuple[Path, ...]) -> list[Path]:
    """Scene folders: each root is a scene (has scene.json) or a folder of scenes."""
    found: list[Path] = []
    for root in roots:
        root = Path(root)
        if (root / "scene.json").is_file():
            found.append(root)
        elif root.is_dir():
            found.extend(sorted(p for p in root.iterdir() if (p / "scene.json").is_file()))
        else:
            raise InputError(root, "not a scene folder nor a folder of scenes", "scenes")
    if not found:
        raise InputError(None, "no scene folder (with scene.json) found in " + ", ".join(map(str, roots)), "scenes")
    names = [p.name for p in found]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(None, f"scene names must be unique (the fit cache is keyed by name): {', '.join(dup)}", "scenes")
    return found


def _rgb(frames: np.ndarray) -> np.ndarray:
    return np.repeat(frames, 3, axis=-1) if frames.shape[-1] == 1 else frames[..., :3]


def load_train_scene(scene_dir: Path, fit_dir: Path | None, supervised: bool = False,
                     fit_aif: bool = False) -> TrainScene:
    """``fit_dir=None`` (the supervised baselines): no Gaussians (empty tensors) and a zero-confidence anchor.
    ``fit_aif``: also read the fit's ``aif.png`` (dered), which needs frames that share frame 0's view."""
    scene = load_scene(scene_dir, check_files=False)  # frames are checked as they load; GT stays unread
    frames = _rgb(scene.load_frames())
    lenses = LensBatch.from_lenses([scene.lens(i) for i in range(len(scene.frames))]).as_rows()  # [F, 4]
    h, w = frames.shape[1:3]
    if fit_dir is None:
        assert not fit_aif, "the fit's AIF needs a fit"
        cloud = GaussianCloud(means=np.zeros((0, 3)), quats=np.zeros((0, 4)), scales=np.zeros((0, 3)),
                              opacities=np.zeros(0), colors=np.zeros((0, 3)))
        fit_depth, confidence = np.zeros((h, w)), np.zeros((h, w))
    else:
        cloud = read_gaussian_ply(fit_dir / "gaussians.ply")
        fit_depth = load_npy(fit_dir / "depth.npy", "fit_cache", "depth")
        confidence = load_npy(fit_dir / "confidence.npy", "fit_cache", "confidence")
        for arr, name in ((fit_depth, "depth.npy"), (confidence, "confidence.npy")):
            if arr.shape != (h, w):
                raise InputError(fit_dir / name, f"is {arr.shape} but the scene is {h}x{w}: stale fit cache",
                                 "fit_cache")
    aif = None
    if fit_aif:
        # The fit renders its AIF in frame 0's camera; image-space re-blurring needs every frame in that view.
        pose0 = scene.world_to_cam(0)
        moved = [i for i in range(len(scene.frames)) if not np.allclose(scene.world_to_cam(i), pose0)]
        if moved:
            raise InputError(scene.json_path, f"frame {moved[0]} has another world_to_cam than frame 0: dered "
                                              "re-blurs the AIF in image space and needs aligned frames", "world_to_cam")
        path = fit_dir / "aif.png"
        if not path.is_file():
            raise InputError(path, "the fit cache entry has no aif.png (re-fit it: delete the entry)", "fit_cache")
        aif = _rgb(read_image(path, field="aif.png"))
        if aif.shape[:2] != (h, w):
            raise InputError(path, f"is {aif.shape[1]}x{aif.shape[0]} but the scene is {w}x{h}: stale fit cache",
                             "fit_cache")
    gt = None
    if supervised:
        raw = scene.load_depth_gt()
        if raw is None:
            raise InputError(scene.json_path, "supervised training needs depth_gt", "depth_gt")
        gt = torch.from_numpy(np.where(np.isfinite(raw) & (raw > 0), raw, 0).astype(np.float32))
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    return TrainScene(name=scene_dir.name, scene=scene, frames=t(frames), lenses=lenses, means=t(cloud.means),
                      quats=t(cloud.quats), scales=t(cloud.scales), opacities=t(cloud.opacities), colors=t(cloud.colors),
                      fit_depth=t(fit_depth), fit_confidence=t(confidence), depth_gt=gt,
                      fit_aif=None if aif is None else t(aif))


@dataclass
class CropRef:
    scene: int
    frames: tuple[int, int]
    x0: int
    y0: int
    flip: bool


@dataclass
class Batch:
    """Frame pairs of B crops; the second axis is the siamese pair. ``images`` are the frames as stored, what
    the self-supervised losses compare with; ``net_images`` what the network reads: the same frames, or copies
    through random camera effects (:mod:`gs_dfd.train.augment`)."""

    images: Tensor  # [B, 2, 3, h, w] (flipped where ref.flip)
    lenses: Tensor  # [B, 2, 4]
    fit_depth: Tensor  # [B, 1, h, w]
    fit_confidence: Tensor  # [B, 1, h, w]
    depth_gt: Tensor | None  # [B, 1, h, w] (supervised mode only)
    refs: list[CropRef]
    net_images: Tensor | None = None  # [B, 2, 3, h, w] the network's input; None: images

    def __post_init__(self) -> None:
        if self.net_images is not None:
            assert self.net_images.shape == self.images.shape, (self.net_images.shape, self.images.shape)

    @property
    def network_input(self) -> Tensor:
        """``[B, 2, 3, h, w]`` the frames the network reads (``net_images``, else the stored ``images``)."""
        return self.images if self.net_images is None else self.net_images


def _flip(x: Tensor, flip: bool) -> Tensor:
    return x.flip(-1) if flip else x


def sample_batch(scenes: list[TrainScene], rng: np.random.Generator, batch_size: int, crop_hw: tuple[int, int],
                 flips: bool = True) -> Batch:
    ch, cw = crop_hw
    imgs, lenses, fd, fc, gts, refs = [], [], [], [], [], []
    for _ in range(batch_size):
        k = int(rng.integers(len(scenes)))
        sc = scenes[k]
        h, w = sc.hw
        if h < ch or w < cw:
            raise InputError(sc.scene.json_path, f"scene is {w}x{h}, smaller than the crop {cw}x{ch}", "crop_hw")
        nf = sc.frames.shape[0]
        if nf < 2:
            raise InputError(sc.scene.json_path, "siamese training needs at least two frames per scene", "frames")
        i, j = (int(v) for v in rng.choice(nf, size=2, replace=False))
        y0, x0 = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
        flip = bool(flips and rng.random() < 0.5)
        win = (slice(y0, y0 + ch), slice(x0, x0 + cw))
        imgs.append(torch.stack([_flip(sc.frames[f][win].permute(2, 0, 1), flip) for f in (i, j)]))
        lenses.append(sc.lenses[[i, j]])
        fd.append(_flip(sc.fit_depth[win][None], flip))
        fc.append(_flip(sc.fit_confidence[win][None], flip))
        if sc.depth_gt is not None:
            gts.append(_flip(sc.depth_gt[win][None], flip))
        refs.append(CropRef(scene=k, frames=(i, j), x0=x0, y0=y0, flip=flip))
    return Batch(images=torch.stack(imgs), lenses=torch.stack(lenses), fit_depth=torch.stack(fd),
                 fit_confidence=torch.stack(fc), depth_gt=torch.stack(gts) if len(gts) == batch_size else None,
                 refs=refs)
