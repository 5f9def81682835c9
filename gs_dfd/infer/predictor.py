"""Run a trained network on single images; the checkpoint's method decides which, and its registered head
(:mod:`gs_dfd.models.registry`) what is done with the network's output:

- ``gs-siamese`` / ``dered``: DefocusNet -> CoC map -> DepthNet (with the lens) -> depth;
- ``d3net``: depth from the image alone, Monte-Carlo dropout: the mean of N passes with dropout on, and their
  per-pixel standard deviation as the uncertainty (Carvalho et al. 2018);
- ``mddnet``: one encoder, a depth decoder and a defocus (CoC) decoder (He et al. 2022).

Every method returns a depth and a CoC map; where a network predicts no CoC (d3net) it is the thin-lens CoC
of the predicted depth under the input's lens, and ``coc_source`` says so. Likewise the near/far gate is a
network output only for the siamese methods; the baselines' is the side of the focus plane their depth is on.

With no checkpoint given, the weights that ship in the package (``gs_dfd/weights/``) are used; nothing is
ever downloaded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gs_dfd.errors import InputError
from gs_dfd.infer.pair import fuse_pair
from gs_dfd.models.checkpoint_io import model_from_checkpoint
from gs_dfd.models.registry import get_method, method_of
from gs_dfd.models.unet import use_channels_last
from gs_dfd.optics.thin_lens import LensBatch, ThinLens

SHIPPED_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "gs_siamese_nyu.pt"


@dataclass
class Prediction:
    depth_m: np.ndarray  # [H, W] float32
    coc_px: np.ndarray  # [H, W] float32, unsigned
    far_gate: np.ndarray  # [H, W] in [-1, 1]: +1 behind the focus plane, -1 in front
    model_seconds: float
    uncertainty_m: np.ndarray | None = None  # [H, W] float32: std of depth over MC-dropout passes (d3net)
    coc_source: str = "network"  # or "thin lens of the predicted depth"
    mc_samples: int = 1


class Predictor:
    def __init__(self, checkpoint: Path | None = None, channels_last: bool = True, field: str = "--checkpoint") -> None:
        """``channels_last``: run the U-Nets in the NHWC layout, faster on CPU
        (:func:`gs_dfd.models.unet.use_channels_last`); False keeps training's NCHW, for comparisons. ``field``:
        the flag that named the checkpoint, for error messages."""
        path = checkpoint or SHIPPED_WEIGHTS
        if checkpoint is None and not path.is_file():
            raise InputError(path, "the package ships no trained weights (train one with gs-dfd train and pass "
                                   "--checkpoint RUN/model.pt)", field)
        t0 = time.perf_counter()
        self.model: torch.nn.Module
        self.model, ck = model_from_checkpoint(path, field)
        if channels_last:
            use_channels_last(self.model)
        self.load_seconds = time.perf_counter() - t0
        self.path = path
        self.meta = ck.get("meta", {})
        self.method = method_of(ck)
        self.spec = get_method(self.method)

    @property
    def uses_dropout(self) -> bool:
        """Whether ``mc_samples`` means anything for this model (Monte-Carlo dropout)."""
        return self.spec.uses_mc_dropout(self.model)

    @torch.inference_mode()
    def predict(self, image: np.ndarray, lens: ThinLens, mc_samples: int | None = None) -> Prediction:
        """image ``[H, W, C]`` in [0, 1] (gray is repeated to RGB). ``mc_samples``: MC-dropout passes (d3net;
        None: the method's default, 1 = dropout off); ignored by methods without dropout."""
        assert image.ndim == 3, image.shape
        assert mc_samples is None or mc_samples >= 1, mc_samples
        rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[..., :3]
        x = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None]
        lenses = LensBatch.from_lenses([lens]).as_rows()  # [1, 4]
        t0 = time.perf_counter()
        out = self.spec.predict(self.model, x, lenses, mc_samples)
        seconds = time.perf_counter() - t0
        depth, coc, gate, uncertainty = out.depth, out.coc, out.gate, out.uncertainty
        if gate is None:  # the baselines' depth itself says which side of the focus plane it is on
            gate = torch.sign(depth - lens.focus_distance_m)
        f32 = lambda t: t[0, 0].numpy().astype(np.float32)  # noqa: E731
        return Prediction(depth_m=f32(depth), coc_px=f32(coc), far_gate=f32(gate), model_seconds=seconds,
                          uncertainty_m=None if uncertainty is None else f32(uncertainty), coc_source=out.coc_source,
                          mc_samples=out.mc_samples)

    def predict_pair(self, images: tuple[np.ndarray, np.ndarray], lenses: tuple[ThinLens, ThinLens],
                     mc_samples: int | None = None) -> Prediction:
        """Two frames of one view (the siamese pair: two focus distances or apertures), each ``[H, W, C]``:
        depth = the thin-lens agreement of both CoC maps where they agree, else the geometric mean of both
        branches' depths, each weighted by its frame's CoC precision (:mod:`gs_dfd.infer.pair`); for the
        baselines, whose CoC is derived from their depth, the plain geometric mean. CoC and gate are the first
        frame's (its lens is the one reported); model time is both passes'. MC-dropout std (d3net) propagates to
        the geometric mean as ``d * sqrt((s_a/d_a)^2 + (s_b/d_b)^2) / 2`` (independent passes)."""
        assert len(images) == len(lenses) == 2, (len(images), len(lenses))
        a = self.predict(images[0], lenses[0], mc_samples)
        b = self.predict(images[1], lenses[1], mc_samples)
        assert a.depth_m.shape == b.depth_m.shape, (a.depth_m.shape, b.depth_m.shape)
        if a.coc_source == "network" and b.coc_source == "network":  # two measured CoC maps: the thin lens decides
            depth = fuse_pair(a.depth_m, a.coc_px, lenses[0], b.depth_m, b.coc_px, lenses[1])
        else:  # a CoC derived from the depth itself carries no second opinion
            depth = np.sqrt(a.depth_m * b.depth_m).astype(np.float32)
        unc = None
        if a.uncertainty_m is not None and b.uncertainty_m is not None:
            rel = np.sqrt((a.uncertainty_m / a.depth_m) ** 2 + (b.uncertainty_m / b.depth_m) ** 2) / 2
            unc = (depth * rel).astype(np.float32)
        return Prediction(depth_m=depth, coc_px=a.coc_px, far_gate=a.far_gate,
                          model_seconds=a.model_seconds + b.model_seconds, uncertainty_m=unc, coc_source=a.coc_source,
                          mc_samples=a.mc_samples)
