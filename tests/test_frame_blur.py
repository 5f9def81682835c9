"""The per-frame blur floor (experimental, --frame-blur): no effect at the start, a variance added per frame."""

from __future__ import annotations

import json

import numpy as np
import torch

from gs_dfd.cli import main
from gs_dfd.fit.frame_blur import FrameBlur


def test_the_blur_floor_starts_negligible_and_adds_variance():
    blur = FrameBlur(3)
    coc = torch.tensor([[0.0, 2.0, 5.0]] * 2)
    out = blur(coc, [0, 2], sigma_per_coc=0.3)
    assert torch.all(out >= coc) and float((out - coc)[:, 1:].abs().max().detach()) < 1e-2  # ~0.05 px sigma
    with torch.no_grad():
        blur.sigma_px[2] = 10.0**0.5
    out = blur(coc, [0, 2], sigma_per_coc=0.3)
    sigma = 0.3 * out
    np.testing.assert_allclose((sigma[1] ** 2 - (0.3 * coc[1]) ** 2).detach().numpy(), 10.0, rtol=1e-3)
    assert FrameBlur(3, enabled=False)(coc, [0, 2], 0.3) is coc


def test_the_fit_reports_the_blur_floor_only_when_asked(tmp_path):
    scene = tmp_path / "scene"
    assert main(["synth", "procedural", "--kind", "occlusion", "--seed", "4", "--width", "64", "--height", "48",
                 "--focus-distances", "1", "2", "4", "--out", str(scene), "--no-progress"]) == 0
    flags = ["--iterations", "30", "--no-progress"]
    assert main(["fit", "--scene", str(scene), "--out", str(tmp_path / "on"), *flags, "--frame-blur"]) == 0
    assert main(["fit", "--scene", str(scene), "--out", str(tmp_path / "off"), *flags]) == 0
    found = json.loads((tmp_path / "on/metrics.json").read_text())["frame_blur"]
    assert [f["frame"] for f in found] == [0, 1, 2] and any(f["sigma_px"] != 0.05 for f in found)  # it learned
    assert json.loads((tmp_path / "off/metrics.json").read_text())["frame_blur"] is None
