"""Loading a checkpoint never runs code: every entry point reads files with ``torch.load(weights_only=True)``,
refuses anything else in one line (exit 2), and a resume refuses settings that change the result."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO
from gs_dfd.cli import main
from gs_dfd.data.scene import load_scene
from gs_dfd.errors import InputError
from gs_dfd.fit.gaussian_fit import (
    CHECKPOINT_FORMAT, GaussianFitSettings, build_state, check_resume_settings, load_checkpoint as load_fit_checkpoint,
    save_checkpoint as save_fit_checkpoint,
)
from gs_dfd.infer.predictor import SHIPPED_WEIGHTS
from gs_dfd.models.checkpoint_io import FORMAT, WEIGHTS_FORMAT, load_checkpoint, model_from_checkpoint, to_plain
from gs_dfd.models.registry import new_model
from gs_dfd.train.checkpoint import export_weights, resume_changes, resume_mismatches, save_checkpoint
from gs_dfd.train.config import TrainConfig

SCENE = REPO / "scenes" / "textureless_nyu_160"


class Touch:
    """A pickle payload that, once unpickled with code allowed, creates ``path`` (no shell involved)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (self.path,))


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    """The bundled scene, copied: tests never write inside the repository's scenes/."""
    dst = tmp_path_factory.mktemp("scene") / "textureless_nyu_160"
    shutil.copytree(SCENE, dst)
    return dst


def _bad_file(kind: str, folder: Path, fmt: str, sentinel: Path) -> Path:
    """A file no loader may accept; ``malicious*`` ones carry valid-looking format keys around the payload."""
    path = folder / f"{kind}.pt"
    looks_valid = {"format": fmt, "method": "gs-siamese", "model": {}, "model_config": {}, "step": 0}
    if kind == "malicious":
        torch.save({**looks_valid, "extra": Touch(sentinel)}, path)
    elif kind == "malicious_legacy":  # torch's pre-zip serialisation
        torch.save({**looks_valid, "extra": Touch(sentinel)}, path, _use_new_zipfile_serialization=False)
    elif kind == "numpy_objects":  # an old-format file: numpy arrays unpickle through numpy's own functions
        torch.save({**looks_valid, "init_confidence": np.zeros((2, 2), np.float32)}, path)
    elif kind == "random_bytes":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = SHIPPED_WEIGHTS.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "foreign_zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("readme.txt", "not a torch file")
    elif kind == "text":
        path.write_text("hello\n")
    elif kind == "folder":
        path.mkdir()
    else:
        raise AssertionError(kind)
    return path


BAD_KINDS = ["malicious", "malicious_legacy", "numpy_objects", "random_bytes", "empty", "truncated", "foreign_zip",
             "text", "folder"]


def test_the_malicious_payload_is_live(tmp_path):
    """Control: with code allowed the test pickle does run (so the tests below are not vacuous)."""
    control = tmp_path / "control"
    path = _bad_file("malicious", tmp_path, WEIGHTS_FORMAT, control)
    torch.load(path, weights_only=False)  # a file this test made itself: the only unsafe load anywhere
    assert control.is_file()


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    return lines[0]


def _predict(scene: Path, bad: Path, out: Path) -> int:
    return main(["predict", "--scene", str(scene), "--out", str(out), "--checkpoint", str(bad), "--no-progress"])


def _fit(scene: Path, bad: Path, out: Path) -> int:
    return main(["fit", "--scene", str(scene), "--out", str(out), "--init", "network", "--init-checkpoint", str(bad),
                 "--iterations", "2", "--stride", "4", "--no-progress"])


def _train(scene: Path, bad: Path, out: Path) -> int:
    return main(["train", "--scenes", str(scene), "--out", str(out), "--fit-cache", str(out.parent / "fits"),
                 "--init-weights", str(bad), "--steps", "1", "--batch-size", "1", "--crop-hw", "48", "64",
                 "--fit-iterations", "2", "--no-progress"])


CLI_ENTRY_POINTS = {"predict --checkpoint": (_predict, WEIGHTS_FORMAT), "fit --init-checkpoint": (_fit, WEIGHTS_FORMAT),
                    "train --init-weights": (_train, FORMAT)}


@pytest.mark.parametrize("kind", BAD_KINDS)
@pytest.mark.parametrize("entry", list(CLI_ENTRY_POINTS))
def test_cli_refuses_bad_checkpoints_in_one_line_without_running_code(entry, kind, scene, tmp_path, capsys):
    run, fmt = CLI_ENTRY_POINTS[entry]
    sentinel = tmp_path / "sentinel"
    bad = _bad_file(kind, tmp_path, fmt, sentinel)
    capsys.readouterr()
    assert run(scene, bad, tmp_path / "out") == 2
    line = _one_line_error(capsys)
    assert not sentinel.exists()
    assert bad.name in line
    if kind.startswith("malicious") or kind == "numpy_objects":
        assert "never unpickles code" in line and "objects other than tensors and plain values" in line, line


@pytest.fixture(scope="module")
def fit_state(scene):
    """A small fit state of the bundled scene, for the fit checkpoint's own loader."""
    loaded = load_scene(scene)
    frames = loaded.load_frames()
    settings = GaussianFitSettings(iterations=2, stride=8)
    return loaded, frames, settings


def _state(fit_state):
    loaded, frames, settings = fit_state
    return build_state(loaded, frames, settings)


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_fit_load_checkpoint_refuses_bad_files(kind, fit_state, tmp_path):
    sentinel = tmp_path / "sentinel"
    bad = _bad_file(kind, tmp_path, CHECKPOINT_FORMAT, sentinel)
    with pytest.raises(InputError) as info:
        load_fit_checkpoint(bad, _state(fit_state), fit_state[2])
    assert not sentinel.exists()
    assert info.value.field == "--resume" and "\n" not in str(info.value)
    if kind.startswith("malicious"):
        assert "never unpickles code" in str(info.value)


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_training_load_checkpoint_refuses_bad_files(kind, tmp_path):
    """The loader --resume (and --init-weights, predict) goes through."""
    sentinel = tmp_path / "sentinel"
    bad = _bad_file(kind, tmp_path, FORMAT, sentinel)
    with pytest.raises(InputError) as info:
        load_checkpoint(bad, "--resume")
    assert not sentinel.exists()
    assert info.value.field == "--resume" and "\n" not in str(info.value)
    if kind.startswith("malicious"):
        assert "never unpickles code" in str(info.value)


def test_shipped_weights_load_as_plain_data():
    ck = torch.load(SHIPPED_WEIGHTS, map_location="cpu", weights_only=True)
    assert ck["format"] == WEIGHTS_FORMAT
    model, ck2 = model_from_checkpoint(SHIPPED_WEIGHTS)
    state = model.state_dict()
    assert state.keys() == ck["model"].keys()
    for key, value in ck["model"].items():
        assert torch.equal(state[key], value.float() if value.is_floating_point() else value), key


def test_fit_checkpoint_round_trip_is_plain_data(fit_state, tmp_path):
    state = _state(fit_state)
    state.history.append({"step": 0, "loss": np.float32(0.5).item()})
    state.propagation = {"step": 1, "moved_over_10_percent": np.float64(0.25)}  # numpy scalars become floats
    path = tmp_path / "checkpoint.pt"
    save_fit_checkpoint(path, state, fit_state[2])
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert isinstance(raw["init_confidence"], torch.Tensor)
    fresh = _state(fit_state)
    fresh.init_confidence = None
    load_fit_checkpoint(path, fresh, fit_state[2])
    assert isinstance(fresh.init_confidence, np.ndarray)
    np.testing.assert_array_equal(fresh.init_confidence, state.init_confidence)
    assert fresh.propagation == {"step": 1, "moved_over_10_percent": 0.25}
    assert torch.equal(fresh.model.inv_depth, state.model.inv_depth)
    # --iterations and the renderer may change on resume
    load_fit_checkpoint(path, _state(fit_state), dataclasses.replace(fit_state[2], iterations=9, backend="torch"))
    load_fit_checkpoint(path, _state(fit_state))  # no settings given: no comparison (old call signature)


def test_fit_resume_refuses_changed_settings_naming_them(fit_state, tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_fit_checkpoint(path, _state(fit_state), fit_state[2])
    changed = dataclasses.replace(fit_state[2], seed=1, sigma_per_coc=0.3)
    with pytest.raises(InputError) as info:
        load_fit_checkpoint(path, _state(fit_state), changed)
    msg = str(info.value)
    assert info.value.field == "--resume"
    assert "--seed 0 -> 1" in msg and f"--sigma-per-coc {fit_state[2].sigma_per_coc} -> 0.3" in msg, msg
    assert "iterations" not in msg


def test_check_resume_settings():
    base = GaussianFitSettings()
    saved = dataclasses.asdict(base)
    check_resume_settings(saved, dataclasses.replace(base, iterations=999, backend="cpu"))
    with pytest.raises(InputError, match=r"--lr-uv 0\.05 -> 0\.1") as info:  # every setting is a fit flag
        check_resume_settings(saved, dataclasses.replace(base, lr_uv=0.1, align_frames=False))
    assert "--align-frames True -> False" in str(info.value)
    older = {k: v for k, v in saved.items() if k != "min_shift_px"}  # a setting newer than the checkpoint
    check_resume_settings(older, base)  # counts as its default
    with pytest.raises(InputError, match="--min-shift-px 0.5 -> 1.0"):
        check_resume_settings(older, dataclasses.replace(base, min_shift_px=1.0))


def test_fit_checkpoint_structure_is_checked(fit_state, tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_fit_checkpoint(path, _state(fit_state), fit_state[2])
    raw = torch.load(path, map_location="cpu", weights_only=True)
    for key, broken in (("optimizer", None), ("step", "3"), ("model", {"inv_depth": 1.0}), ("settings", None)):
        bad = tmp_path / f"no_{key}.pt"
        torch.save({k: v for k, v in raw.items() if k != key} if broken is None else {**raw, key: broken}, bad)
        with pytest.raises(InputError) as info:
            load_fit_checkpoint(bad, _state(fit_state), fit_state[2])
        assert info.value.field == key, str(info.value)
    other = tmp_path / "other_format.pt"
    torch.save({**raw, "format": "something/1"}, other)
    with pytest.raises(InputError, match="not a gs_dfd fit checkpoint"):
        load_fit_checkpoint(other, _state(fit_state))
    wrong_grid = tmp_path / "grid.pt"
    torch.save({**raw, "grid_hw": [3, 3]}, wrong_grid)
    with pytest.raises(InputError, match="grid of Gaussians"):
        load_fit_checkpoint(wrong_grid, _state(fit_state))


def _small_train_files(tmp_path: Path) -> tuple[Path, Path, dict]:
    cfg = TrainConfig(out=tmp_path / "run", scenes=(tmp_path / "scenes",))
    model = new_model(cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    config = _resolved(cfg)
    extra = {"train_seconds": np.float64(1.5), "scenes": ["a"], "where": Path("x"), "arr": np.arange(3)}
    ck, weights = tmp_path / "checkpoint.pt", tmp_path / "model.pt"
    save_checkpoint(ck, model, optimizer, 3, config, extra)
    export_weights(weights, model, {"method": cfg.method, "steps": 3, "config": config})
    return ck, weights, config


def test_training_files_are_plain_data_and_checked(tmp_path):
    ck_path, weights_path, config = _small_train_files(tmp_path)
    for path in (ck_path, weights_path):
        torch.load(path, map_location="cpu", weights_only=True)
        model_from_checkpoint(path)
    ck = load_checkpoint(ck_path, "--resume")
    assert ck["step"] == 3 and ck["train_seconds"] == 1.5 and ck["where"] == "x"
    assert isinstance(ck["arr"], torch.Tensor)
    raw = torch.load(ck_path, map_location="cpu", weights_only=True)
    for key, broken in (("model", None), ("step", 2.5), ("optimizer", None), ("model_config", [1]),
                        ("model", {"w": "x"})):
        bad = tmp_path / f"bad_{key}.pt"
        torch.save({k: v for k, v in raw.items() if k != key} if broken is None else {**raw, key: broken}, bad)
        with pytest.raises(InputError) as info:
            load_checkpoint(bad, "--resume")
        assert info.value.field == key and "\n" not in str(info.value)
    with pytest.raises(TypeError, match="extra.bad"):
        to_plain({"bad": object()}, "extra")


def _resolved(cfg: TrainConfig) -> dict:
    """The config as the loop records it (JSON types)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def test_resume_mismatches():
    base = TrainConfig(out=Path("run"), scenes=(Path("s"),))
    saved = {"command": "train", **_resolved(base), "world_size": 1}  # config.json's extra keys are ignored
    assert resume_mismatches(saved, _resolved(base)) == []
    free = dataclasses.replace(base, steps=5000, out=Path("elsewhere"), resume=True, overwrite=True, progress=False,
                               debug=True, checkpoint_every=7, log_every=3, backend="torch", fit_cache=Path("c"),
                               config=Path("x.yaml"))
    assert resume_mismatches(saved, _resolved(free)) == []
    changed = dataclasses.replace(base, lr=2e-3, seed=1, crop_hw=(64, 64),
                                  defocus_net=dataclasses.replace(base.defocus_net, reblur_sigmas_px=(1.0, 2.0)),
                                  weights=dataclasses.replace(base.weights, smooth=0.5))
    assert set(resume_mismatches(saved, _resolved(changed))) == {"--crop-hw", "--lr", "--smooth", "--reblur-sigmas-px",
                                                                  "--seed"}
    # a network the method does not build is not compared
    other_arch = dataclasses.replace(base, d3net=dataclasses.replace(base.d3net, dropout=0.5))
    assert resume_mismatches(saved, _resolved(other_arch)) == []
    # a setting newer than the saved config counts as its default
    older = {k: v for k, v in saved.items() if k != "fit_sigma_per_coc"}
    assert resume_mismatches(older, _resolved(base)) == []
    assert resume_mismatches(older, _resolved(dataclasses.replace(base, fit_sigma_per_coc=0.3))) == [
        "--fit-sigma-per-coc"]
    assert resume_mismatches(saved, _resolved(dataclasses.replace(base, method="d3net"))) == ["--method"]
    # the camera-effect settings are named as their flags are spelled (--augment.*)
    augmented = dataclasses.replace(base, augment=dataclasses.replace(base.augment, enabled=True))
    assert resume_mismatches(saved, _resolved(augmented)) == ["--augment.enabled"]


def test_resume_changes_show_both_values():
    base = TrainConfig(out=Path("run"), scenes=(Path("s"),), method="d3net")
    changed = dataclasses.replace(base, method="mddnet", crop_hw=(64, 64))
    assert resume_changes(_resolved(base), _resolved(changed)) == ["--method 'd3net' -> 'mddnet'",
                                                                   "--crop-hw [128, 160] -> [64, 64]"]
