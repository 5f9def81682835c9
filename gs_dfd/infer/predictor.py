"""Run a trained DefocusNet + DepthNet on single images.

With no checkpoint given, the weights that ship in the package
(``gs_dfd/weights/``) are used; nothing is ever downloaded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gs_dfd.errors import InputError
from gs_dfd.models.lens_code import lens_row
from gs_dfd.optics.thin_lens import ThinLens
from gs_dfd.train.checkpoint import SiameseDepthModel, model_from_checkpoint

SHIPPED_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "gs_siamese_nyu.pt"


@dataclass
class Prediction:
    depth_m: np.ndarray  # [H, W] float32
    coc_px: np.ndarray  # [H, W] float32, unsigned
    far_gate: np.ndarray  # [H, W] in [-1, 1]: +1 behind the focus plane, -1 in front
    model_seconds: float


class Predictor:
    def __init__(self, checkpoint: Path | None = None) -> None:
        path = checkpoint or SHIPPED_WEIGHTS
        if checkpoint is None and not path.is_file():
            raise InputError(path, "the package ships no trained weights (train one with gs-dfd train and pass "
                                   "--checkpoint RUN/model.pt)", "--checkpoint")
        t0 = time.perf_counter()
        self.model: SiameseDepthModel
        self.model, ck = model_from_checkpoint(path)
        self.load_seconds = time.perf_counter() - t0
        self.path = path
        self.meta = ck.get("meta", {})
        self.method = ck.get("method", "gs-siamese")

    @torch.inference_mode()
    def predict(self, image: np.ndarray, lens: ThinLens) -> Prediction:
        """image ``[H, W, C]`` in [0, 1] (gray is repeated to RGB)."""
        assert image.ndim == 3, image.shape
        rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[..., :3]
        x = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None]
        t0 = time.perf_counter()
        out = self.model(x, lens_row(lens)[None])
        seconds = time.perf_counter() - t0
        return Prediction(depth_m=out["depth"][0, 0].numpy().astype(np.float32),
                          coc_px=out["coc"][0, 0].numpy().astype(np.float32),
                          far_gate=out["gate"][0, 0].numpy().astype(np.float32), model_seconds=seconds)
