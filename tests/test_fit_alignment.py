"""Frame registration of the per-scene fit: phase correlation, the differentiable translation, and a fit
of a stack whose shots moved between exposures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from gs_dfd.cli import main
from gs_dfd.data.images import read_image, write_png
from gs_dfd.data.registration import estimate_shift_px, translate_images
from gs_dfd.fit.alignment import FrameAlignment, register_frames


def _texture(h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random((h, w, 3)), (1.5, 1.5, 0))


def _moved(img: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """``out(x) = img(x - (dx, dy))``, by scipy (an independent implementation of the convention)."""
    return ndimage.shift(img, (dy, dx, 0), order=3, mode="nearest")


@pytest.mark.parametrize("dx, dy", [(2.3, -1.6), (-7.0, 0.4), (0.0, 0.0)])
def test_phase_correlation_finds_a_subpixel_shift_between_differently_blurred_shots(dx, dy):
    ref = _texture()
    shot = ndimage.gaussian_filter(_moved(ref, dx, dy), (2.0, 2.0, 0))  # the other shot is more defocused
    est = estimate_shift_px(ref, shot)
    assert abs(est[0] - dx) < 0.2 and abs(est[1] - dy) < 0.2, est


def test_shifts_beyond_the_search_range_are_not_found():
    ref = _texture()
    est = estimate_shift_px(ref, _moved(ref, 20.0, 0.0), max_shift_px=8)
    assert abs(est[0]) <= 8.5 and abs(est[0] - 20.0) > 5


def test_translate_images_follows_the_convention_and_passes_gradients():
    img = _texture(40, 50)
    shift = torch.tensor([[3.0, -2.0]], requires_grad=True)
    out = translate_images(torch.from_numpy(img).float()[None], shift)[0]
    np.testing.assert_allclose(out.detach().numpy()[5:-5, 5:-5], _moved(img, 3.0, -2.0)[5:-5, 5:-5], atol=1e-5)
    out.sum().backward()
    assert shift.grad is not None and torch.isfinite(shift.grad).all()


def test_reference_and_frames_with_their_own_pose_never_move():
    init = np.array([[1.0, 1.0], [2.0, -1.0], [4.0, 4.0]], np.float32)
    align = FrameAlignment(init, movable=[True, True, False])
    np.testing.assert_array_equal(align.shifts().detach().numpy(), [[0, 0], [2, -1], [0, 0]])
    assert [r["frame"] for r in align.report()] == [1, 2] and align.margin_px() == 4
    img = _texture(40, 50)
    back = align.to_reference(_moved(img, 2.0, -1.0).astype(np.float32), 1)
    np.testing.assert_allclose(back[5:-5, 5:-5], img[5:-5, 5:-5], atol=1e-3)
    off = FrameAlignment(init, movable=[True, False, False])  # only the reference: nothing moves
    assert not off.enabled and off.margin_px() == 0 and off.to_reference(img, 1) is img
    assert np.all(register_frames(np.stack([img, img]), [True, False]) == 0)


@pytest.fixture(scope="module")
def moved_pair(tmp_path_factory) -> tuple[Path, tuple[int, int]]:
    """An aperture pair whose second shot is moved by (3, -2) px, as a real camera between exposures."""
    out = tmp_path_factory.mktemp("align") / "scene"
    assert main(["synth", "procedural", "--kind", "planes", "--seed", "3", "--width", "96", "--height", "72",
                 "--focus-distances", "1.5", "1.5", "--out", str(out), "--no-progress"]) == 0
    data = json.loads((out / "scene.json").read_text())
    data["frames"][1]["f_number"] = 8.0
    (out / "scene.json").write_text(json.dumps(data))
    second = out / data["frames"][1]["image"]
    write_png(second, np.roll(read_image(second), (-2, 3), axis=(0, 1)))
    return out, (3, -2)


def test_the_fit_registers_moved_shots_and_reports_the_shift(moved_pair, tmp_path):
    scene, (dx, dy) = moved_pair
    flags = ["--iterations", "20", "--no-progress", "--init", "constant", "--init-depth-m", "2"]
    assert main(["fit", "--scene", str(scene), "--out", str(tmp_path / "a"), *flags]) == 0
    assert main(["fit", "--scene", str(scene), "--out", str(tmp_path / "b"), *flags, "--no-align-frames"]) == 0
    aligned = json.loads((tmp_path / "a/metrics.json").read_text())
    plain = json.loads((tmp_path / "b/metrics.json").read_text())
    (shift,) = aligned["alignment"]
    assert shift["frame"] == 1 and np.allclose(shift["shift_px"], [dx, dy], atol=0.3), shift
    assert plain["alignment"] is None
    assert aligned["frames"][1]["psnr"] > plain["frames"][1]["psnr"] + 3


def test_an_interrupted_aligned_fit_resumes_exactly(moved_pair, tmp_path, interrupt_fit):
    scene, _ = moved_pair
    flags = ["--iterations", "6", "--no-progress", "--checkpoint-every", "2", "--init", "constant"]
    interrupt_fit(4)
    out = tmp_path / "o"
    assert main(["fit", "--scene", str(scene), "--out", str(out), *flags]) == 130
    interrupt_fit(None)
    assert main(["fit", "--scene", str(scene), "--out", str(out), *flags, "--resume"]) == 0
    straight = tmp_path / "straight"
    assert main(["fit", "--scene", str(scene), "--out", str(straight), *flags]) == 0
    np.testing.assert_array_equal(np.load(out / "depth.npy"), np.load(straight / "depth.npy"))
    resumed, direct = (json.loads((d / "metrics.json").read_text())["alignment"] for d in (out, straight))
    assert resumed == direct and resumed[0]["shift_px"] != [0.0, 0.0]
