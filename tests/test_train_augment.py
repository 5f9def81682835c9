"""Camera-effect augmentation of the network's input frames (gs_dfd.train.augment): off changes nothing, the
noise follows its Poisson-Gaussian model, JPEG stays mild, draws are reproducible and per scene where a camera
is, the loss targets stay clean, the YAML section and flags load, and a tiny augmented run trains."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import strip_ground_truth
from gs_dfd.cli import main
from gs_dfd.errors import InputError
from gs_dfd.train.augment import CameraAugmentConfig, augment_frames, check_augment_config
from gs_dfd.train.config import TrainConfig, load_yaml_defaults
from gs_dfd.train.data import Batch, find_scenes, load_train_scene, sample_batch
from gs_dfd.train.losses import LossWeights

REPO = Path(__file__).resolve().parents[1]

# Every effect off: each test turns on the one it measures.
NOTHING = CameraAugmentConfig(enabled=True, white_balance_max=0.0, exposure_max_ev=0.0, vignette_max=0.0,
                              noise_probability=0.0, gamma_min=1.0, gamma_max=1.0, jpeg_probability=0.0)


def _decode(encoded: np.ndarray) -> np.ndarray:
    """sRGB -> linear, written out here rather than imported: the test checks the module's physics."""
    e = np.asarray(encoded, dtype=np.float64)
    return np.where(e <= 0.04045, e / 12.92, ((e + 0.055) / 1.055) ** 2.4)


def _flat(value: float, b: int = 1, hw: tuple[int, int] = (128, 128)) -> torch.Tensor:
    return torch.full((b, 2, 3, *hw), value, dtype=torch.float32)


def _smooth(b: int = 2, hw: tuple[int, int] = (96, 128)) -> torch.Tensor:
    """Gradients and a slow ripple: what JPEG keeps well."""
    y, x = torch.meshgrid(torch.linspace(0, 1, hw[0]), torch.linspace(0, 1, hw[1]), indexing="ij")
    rgb = torch.stack([0.2 + 0.6 * x, 0.3 + 0.4 * y, 0.5 + 0.2 * torch.sin(6 * x + 3 * y)])
    return rgb.expand(b, 2, 3, *hw).clone()


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1.0 / ((a - b) ** 2).mean()))


def test_disabled_returns_the_frames_untouched():
    frames = torch.rand(2, 2, 3, 40, 48)
    out = augment_frames(frames, np.random.default_rng(0), CameraAugmentConfig())
    assert not CameraAugmentConfig().enabled
    assert torch.equal(out, frames)


def test_enabled_makes_new_frames_in_range_and_leaves_the_input_alone():
    frames = torch.rand(3, 2, 3, 40, 48)
    before = frames.clone()
    out = augment_frames(frames, np.random.default_rng(1), CameraAugmentConfig(enabled=True))
    assert torch.equal(frames, before)  # never in place (the cached scene frames are views of these)
    assert out.shape == frames.shape and out.dtype == frames.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, frames)
    with pytest.raises(AssertionError):
        augment_frames(torch.rand(2, 3, 40, 48), np.random.default_rng(1), CameraAugmentConfig(enabled=True))


@pytest.mark.parametrize("photons_at_white, read_noise_std, grey", [(2e3, 2e-4, 0.2), (2e4, 2e-3, 0.8),
                                                                    (2e5, 1e-3, 0.5)])
def test_noise_std_on_flat_grey_follows_the_poisson_gaussian_model(photons_at_white, read_noise_std, grey):
    """Measured in linear light: var = x / photons_at_white + read_noise_std^2, plus the 8-bit step's
    uniform quantisation noise (step^2 / 12, the step taken to linear at x). Dark and bright greys: noise
    added to the encoded values instead would be off by the transfer curve's slope (x3 at 0.2)."""
    cfg = dataclasses.replace(NOTHING, noise_probability=1.0, photons_at_white_min=photons_at_white,
                              photons_at_white_max=photons_at_white, read_noise_std_min=read_noise_std,
                              read_noise_std_max=read_noise_std)
    out = augment_frames(_flat(grey), np.random.default_rng(2), cfg).numpy()
    x = float(_decode(grey))
    step_linear = float(_decode(grey + 0.5 / 255) - _decode(grey - 0.5 / 255))
    expected = np.sqrt(x / photons_at_white + read_noise_std ** 2 + step_linear ** 2 / 12)
    for frame in out[0]:
        measured = _decode(frame).std()
        assert abs(measured / expected - 1) < 0.15, (measured, expected)
        assert abs(_decode(frame).mean() - x) < 0.1 * x  # zero-mean noise


def test_no_noise_when_its_probability_is_zero():
    out = augment_frames(_flat(0.5), np.random.default_rng(3), NOTHING)
    assert float(out.std()) == 0.0 and abs(float(out.mean()) - 0.5) <= 0.5 / 255 + 1e-6  # only 8-bit rounding


def test_jpeg_changes_a_smooth_image_but_keeps_it_close():
    frames = _smooth()
    only_8bit = augment_frames(frames, np.random.default_rng(4), NOTHING)
    assert (only_8bit - frames).abs().max() <= 0.5 / 255 + 1e-5
    jpeg = augment_frames(frames, np.random.default_rng(4),
                          dataclasses.replace(NOTHING, jpeg_probability=1.0, jpeg_quality_min=60, jpeg_quality_max=60))
    assert not torch.equal(jpeg, only_8bit)
    assert (jpeg - only_8bit).abs().max() > 1.5 / 255  # more than a rounding
    assert _psnr(jpeg, frames) > 25.0


def test_same_seed_same_camera_other_seed_another():
    frames = torch.rand(2, 2, 3, 40, 48)
    cfg = CameraAugmentConfig(enabled=True, noise_probability=1.0, jpeg_probability=1.0)
    a = augment_frames(frames, np.random.default_rng([7, 0, 3, 1]), cfg)
    b = augment_frames(frames, np.random.default_rng([7, 0, 3, 1]), cfg)
    c = augment_frames(frames, np.random.default_rng([7, 0, 4, 1]), cfg)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_white_balance_vignetting_and_tone_are_shared_by_a_pairs_frames():
    """One camera per scene: with the per-frame effects off, a pair of equal frames stays equal; scenes differ."""
    cfg = dataclasses.replace(NOTHING, white_balance_max=0.08, vignette_max=0.3, gamma_min=0.9, gamma_max=1.1)
    out = augment_frames(_flat(0.6, b=4, hw=(48, 64)), np.random.default_rng(5), cfg)
    for pair in out:
        assert torch.equal(pair[0], pair[1])
    assert not torch.equal(out[0], out[1])
    centre, corner = out[:, 0, :, 24, 32], out[:, 0, :, 0, 0]
    assert (corner <= centre).all()  # the vignette darkens the corners


def test_white_balance_gains_stay_in_their_range_in_linear_light():
    cfg = dataclasses.replace(NOTHING, white_balance_max=0.08)
    out = augment_frames(_flat(0.5, b=16, hw=(8, 8)), np.random.default_rng(6), cfg).numpy()
    lin = _decode(out[:, 0].mean(axis=(2, 3)))  # [B, 3]
    gains = lin / lin[:, 1:2]
    assert np.allclose(gains[:, 1], 1.0)
    assert (np.abs(gains[:, [0, 2]] - 1) < 0.08 + 0.02).all()  # 0.02: 8-bit rounding
    assert np.abs(gains[:, [0, 2]] - 1).max() > 0.03  # it does move


def test_exposure_differs_between_a_pairs_frames():
    cfg = dataclasses.replace(NOTHING, exposure_max_ev=0.25)
    out = augment_frames(_flat(0.5, b=4, hw=(8, 8)), np.random.default_rng(8), cfg)
    assert any(not torch.equal(pair[0], pair[1]) for pair in out)
    ratio = _decode(out[:, :, 1].numpy().mean(axis=(2, 3))) / _decode(0.5)
    assert (np.abs(np.log2(ratio)) < 0.25 + 0.02).all()


def test_bad_ranges_are_refused_naming_the_field():
    with pytest.raises(InputError, match="augment.noise_probability"):
        check_augment_config(CameraAugmentConfig(noise_probability=1.5))
    with pytest.raises(InputError, match="augment.photons_at_white_min"):
        check_augment_config(CameraAugmentConfig(photons_at_white_min=3e5))
    with pytest.raises(InputError, match="augment.jpeg_quality_max"):
        check_augment_config(CameraAugmentConfig(jpeg_quality_max=100))
    check_augment_config(CameraAugmentConfig())


# ----------------------------------------------------------------------------------- wiring into training

@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("aug") / "scenes"
    for kind, seed in (("planes", 3), ("mixed", 5)):
        assert main(["synth", "procedural", "--kind", kind, "--seed", str(seed), "--width", "64", "--height", "48",
                     "--focus-distances", "1", "2", "4", "--out", str(root / f"{kind}_{seed}"), "--no-progress"]) == 0
    return root


@pytest.fixture(scope="module")
def fit_cache(tmp_path_factory) -> Path:
    """Filled by the first run that needs it (entries are keyed by scene name and frame bytes, so the
    ground-truth-free copy shares them)."""
    return tmp_path_factory.mktemp("aug_fits") / "fits"


class _RecordingModel(torch.nn.Module):
    """Stands in for the networks: records what it reads, predicts a constant depth and CoC."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.seen: list[torch.Tensor] = []

    def forward(self, images: torch.Tensor, lenses: torch.Tensor) -> dict[str, torch.Tensor]:
        self.seen.append(images.detach().clone())
        ones = self.scale * torch.ones(images.shape[0], 1, *images.shape[2:])
        return {"depth": 2.0 * ones, "coc": ones}


def test_network_reads_the_augmented_frames_and_the_batch_keeps_the_clean_ones(scenes):
    train_scenes = [load_train_scene(d, None) for d in find_scenes([scenes])]  # no fit, no ground truth
    stored = [s.frames.clone() for s in train_scenes]
    batch = sample_batch(train_scenes, np.random.default_rng(0), 2, (32, 48))
    clean = batch.images.clone()
    assert batch.network_input is batch.images  # unaugmented: the network reads the stored frames
    aug = augment_frames(batch.images, np.random.default_rng(1), CameraAugmentConfig(enabled=True))
    augmented = dataclasses.replace(batch, net_images=aug)
    assert torch.equal(augmented.images, clean) and not torch.equal(augmented.network_input, clean)
    assert all(torch.equal(s.frames, f) for s, f in zip(train_scenes, stored))  # the cached scenes too

    from gs_dfd.train.loop import compute_losses

    model = _RecordingModel()
    cfg = TrainConfig(out=Path("unused"), weights=LossWeights(render=0.0))  # no renderer: no fit needed
    terms = compute_losses(model, augmented, train_scenes, cfg)
    assert torch.isfinite(terms["total"])
    b, _, c, h, w = aug.shape
    assert torch.equal(model.seen[-1], aug.reshape(2 * b, c, h, w))
    with pytest.raises(AssertionError):
        Batch(images=batch.images, lenses=batch.lenses, fit_depth=batch.fit_depth,
              fit_confidence=batch.fit_confidence, depth_gt=None, refs=batch.refs, net_images=aug[:1])


def test_yaml_augment_section_loads_and_an_unknown_key_is_an_error(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text("steps: 3\naugment:\n  enabled: true\n  jpeg_probability: 0.5\n  jpeg_quality_min: 70\n")
    cfg = load_yaml_defaults(good, tmp_path / "run")
    assert cfg.augment == CameraAugmentConfig(enabled=True, jpeg_probability=0.5, jpeg_quality_min=70)
    assert load_yaml_defaults(tmp_path / "good.yaml", None).steps == 3
    bad = tmp_path / "bad.yaml"
    bad.write_text("augment:\n  enabled: true\n  jpeg_prob: 0.5\n")
    with pytest.raises(InputError, match="augment.jpeg_prob"):
        load_yaml_defaults(bad, tmp_path / "run")
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.yaml" in err and "jpeg_prob" in err
    worse = tmp_path / "worse.yaml"
    worse.write_text("augment:\n  enabled: yes please\n")
    with pytest.raises(InputError, match="augment.enabled"):
        load_yaml_defaults(worse, tmp_path / "run")


def test_camera_aug_recipe_is_stage_2_with_augmentation_from_the_shipped_weights():
    path = REPO / "configs" / "gs_siamese_nyu_camera_aug.yaml"
    assert path.read_text().startswith("#")
    ours = load_yaml_defaults(path, Path("runs/x"))
    stage_2 = load_yaml_defaults(REPO / "configs" / "gs_siamese_nyu_reblur_finetune.yaml", Path("runs/x"))
    differ = {f.name for f in dataclasses.fields(TrainConfig) if getattr(ours, f.name) != getattr(stage_2, f.name)}
    assert differ == {"config", "init_weights", "steps", "seed", "augment"}, differ
    assert ours.init_weights == Path("gs_dfd/weights/gs_siamese_nyu.pt") and (REPO / ours.init_weights).is_file()
    assert (ours.steps, ours.seed, ours.lr, ours.lr_final_ratio) == (1200, 2, 5e-4, 0.05)
    assert ours.augment == CameraAugmentConfig(enabled=True)
    assert yaml.safe_load(path.read_text())["augment"] == {"enabled": True}


TINY = ["--steps", "2", "--batch-size", "2", "--crop-hw", "32", "48", "--fit-iterations", "5", "--no-progress",
        "--log-every", "1", "--checkpoint-every", "2"]


def test_tiny_augmented_run_trains_self_supervised_with_clean_targets(scenes, fit_cache, tmp_path, monkeypatch):
    """Two steps with --augment.enabled on scenes whose ground truth is gone (its readers raise): the network
    reads augmented frames, the losses get the stored ones, and the run differs from an unaugmented one."""
    import gs_dfd.train.loop as loop

    stripped = strip_ground_truth(scenes, tmp_path / "scenes", monkeypatch)
    real, seen = loop.compute_losses, []

    def checking(model, batch, train_scenes, cfg):
        for k, ref in enumerate(batch.refs):
            sc = train_scenes[ref.scene]
            for f, frame in enumerate(ref.frames):
                crop = sc.frames[frame][ref.y0:ref.y0 + 32, ref.x0:ref.x0 + 48].permute(2, 0, 1)
                assert torch.equal(batch.images[k, f], crop.flip(-1) if ref.flip else crop)  # clean targets
        seen.append(not torch.equal(batch.network_input, batch.images))
        return real(model, batch, train_scenes, cfg)

    monkeypatch.setattr(loop, "compute_losses", checking)
    out = tmp_path / "aug"
    args = ["train", "--scenes", str(stripped), "--fit-cache", str(fit_cache), *TINY]
    assert main([*args, "--out", str(out), "--augment.enabled", "--augment.jpeg-probability", "1"]) == 0
    assert seen == [True, True]
    resolved = json.loads((out / "config.json").read_text())
    assert resolved["augment"]["enabled"] is True and resolved["augment"]["jpeg_probability"] == 1.0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(np.isfinite(r["total"]) for r in log)

    assert main([*args, "--out", str(tmp_path / "plain")]) == 0  # the same crops, unaugmented
    assert seen[2:] == [False, False]
    a = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "plain" / "checkpoint.pt", weights_only=True)["model"]
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_augmented_run_resumes_exactly(scenes, fit_cache, tmp_path, monkeypatch):
    """The camera draws are a pure function of (seed, rank, step): Ctrl-C and --resume end where one go does."""
    import gs_dfd.train.loop as loop

    args = ["train", "--scenes", str(scenes), "--fit-cache", str(fit_cache), *TINY, "--steps", "3",
            "--augment.enabled"]
    assert main([*args, "--out", str(tmp_path / "full")]) == 0
    real, calls = loop.sample_batch, []

    def interrupt_at_third_step(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(loop, "sample_batch", interrupt_at_third_step)
    assert main([*args, "--out", str(tmp_path / "half")]) == 130
    monkeypatch.undo()
    assert main([*args, "--out", str(tmp_path / "half"), "--resume"]) == 0
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "half" / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 3
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert main([*args[:-1], "--out", str(tmp_path / "half"), "--resume", "--steps", "4"]) == 2  # augment off


def test_bad_augment_flag_is_a_one_line_error_before_any_work(tmp_path, capsys):
    assert main(["train", "--scenes", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run"),
                 "--augment.vignette-max", "1.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "augment.vignette_max" in err, err
    assert not (tmp_path / "run").exists()
