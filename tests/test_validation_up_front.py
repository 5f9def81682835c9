"""Bad input is found before the first expensive step and reported in one line (exit 2, no traceback)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import edit_scene_json, write_tiny_scene
from gs_dfd.cli import main


def _err(rc: int, capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


@pytest.mark.parametrize("argv, flag", [
    (["fit", "--lr-inv-depth", "nan"], "--lr-inv-depth"),
    (["fit", "--lr-inv-depth", "-1"], "--lr-inv-depth"),
    (["fit", "--smooth-weight", "inf"], "--smooth-weight"),
    (["fit", "--sigma-per-coc", "-0.2"], "--sigma-per-coc"),
    (["fit", "--init-depth-m", "nan"], "--init-depth-m"),
    (["fit", "--stride", "1000"], "--stride"),
    (["predict", "--max-megapixels", "0"], "--max-megapixels"),
    (["train", "--lr", "nan"], "--lr"),
    (["train", "--fit-sigma-per-coc", "inf"], "--fit-sigma-per-coc"),
    (["train", "--augment.exposure-max-ev", "nan"], "--augment.exposure-max-ev"),
])
def test_numeric_flags_are_checked(tiny_scene, tmp_path, capsys, argv, flag):
    command, *rest = argv
    io = {"fit": ["--scene", tiny_scene, "--out", tmp_path / "o"],
          "predict": ["--scene", tiny_scene, "--out", tmp_path / "o"],
          "train": ["--scenes", tiny_scene, "--out", tmp_path / "o", "--steps", "1"]}[command]
    _err(main([command, *map(str, io), *rest]), capsys, flag)
    assert not (tmp_path / "o").exists()


def test_export_refuses_sizes_that_would_run_for_minutes(tmp_path, capsys):
    fit = tmp_path / "fit"
    assert main(["fit", "--scene", str(write_tiny_scene(tmp_path / "s")), "--out", str(fit), "--method", "dff",
                 "--no-progress"]) == 0
    capsys.readouterr()
    _err(main(["export", "--fit", str(fit), "--out", str(tmp_path / "a.ply"), "--remove-outliers",
               "--outlier-neighbors", "1000000"]), capsys, "--outlier-neighbors")
    _err(main(["export", "--fit", str(fit), "--out", str(tmp_path / "b.ply"), "--voxel-size-m", "1e-12"]), capsys,
         "--voxel-size-m")
    assert not list(tmp_path.glob("*.ply"))


@pytest.mark.parametrize("pair", [False, True])
def test_predict_checks_the_frame_size_against_the_camera(tmp_path, capsys, pair):
    scene = write_tiny_scene(tmp_path / "s")
    bad = 1 if pair else 0
    Image.open(scene / "frames" / f"00{bad}.png").resize((40, 30)).save(scene / "frames" / f"00{bad}.png")
    extra = ["--pair-frame", "1"] if pair else []
    _err(main(["predict", "--scene", str(scene), "--out", str(tmp_path / "p"), *extra]), capsys,
         f"frames[{bad}].image", "camera is 32x24")
    assert not (tmp_path / "p").exists()


def test_predict_refuses_a_huge_photo_from_its_header(tmp_path, capsys):
    Image.new("RGB", (4000, 3000)).save(tmp_path / "big.png")
    _err(main(["predict", "--image", str(tmp_path / "big.png"), "--camera", "nyu", "--focus-distance-m", "1",
               "--out", str(tmp_path / "p")]), capsys, "12.0 megapixels", "--max-megapixels")


def test_predict_refuses_two_images_that_would_share_an_output(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (32, 24)).save(photos / "x.png")
    Image.new("RGB", (32, 24)).save(photos / "x.jpg")
    _err(main(["predict", "--image", str(photos), "--camera", "nyu", "--focus-distance-m", "1",
               "--out", str(tmp_path / "p")]), capsys, "x.png", "rename one")


def test_check_preview_on_a_folder_is_one_line(tiny_scene, tmp_path, capsys):
    (tmp_path / "v.png").mkdir()
    _err(main(["check", "--scene", str(tiny_scene), "--preview", str(tmp_path / "v.png")]), capsys, "is a folder")


def test_eval_skips_a_symlink_loop_among_the_scenes(tmp_path, capsys):
    scenes = tmp_path / "scenes"
    write_tiny_scene(scenes / "a")
    (scenes / "loop").symlink_to(scenes / "loop")
    preds = tmp_path / "preds"
    (preds / "a").mkdir(parents=True)
    np.save(preds / "a" / "depth.npy", np.full((24, 32), 1.5, np.float32))
    assert main(["eval", "--scenes", str(scenes), "--predictions", str(preds), "--out", str(tmp_path / "e"),
                 "--no-progress"]) == 0


def test_train_finds_a_broken_scene_before_fitting_any(tmp_path, capsys):
    scenes = tmp_path / "scenes"
    write_tiny_scene(scenes / "a_good")
    bad = write_tiny_scene(scenes / "b_bad")
    edit_scene_json(bad, lambda d: d["frames"][1].update(image="frames/missing.png"))
    cache = tmp_path / "cache"
    _err(main(["train", "--scenes", str(scenes), "--out", str(tmp_path / "run"), "--fit-cache", str(cache),
               "--steps", "1", "--no-progress"]), capsys, "missing.png")
    assert not cache.exists() or not any(cache.iterdir())  # no scene was fitted first


def test_train_ctrl_c_in_the_fit_cache_resumes(tmp_path, capsys, monkeypatch):
    """Ctrl-C while the training scenes are fitted: the run folder's partial copy stays, --resume goes on."""
    import gs_dfd.fit.pipeline as fit_cmd
    from gs_dfd.utils.outputs import partial_dir

    scenes = tmp_path / "scenes"
    assert main(["synth", "procedural", "--width", "64", "--height", "48", "--out", str(scenes / "a"),
                 "--no-progress"]) == 0
    real = fit_cmd.run_gs

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fit_cmd, "run_gs", interrupted)
    run = tmp_path / "run"
    argv = ["train", "--scenes", str(scenes), "--out", str(run), "--steps", "2", "--batch-size", "1",
            "--crop-hw", "32", "32", "--fit-iterations", "3", "--no-progress"]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 130 and "--resume" in err, err
    assert partial_dir(run).is_dir() and not run.exists()
    monkeypatch.setattr(fit_cmd, "run_gs", real)
    assert main(argv + ["--resume"]) == 0, capsys.readouterr().err
    assert (run / "model.pt").is_file() and not partial_dir(run).exists()


def test_ctrl_c_while_starting_is_one_line(monkeypatch, capsys):
    import gs_dfd.cli as cli

    def interrupted(argv=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_commands", interrupted)
    assert cli.main(["check", "--help"]) == 130
    assert capsys.readouterr().err.strip() == "error: interrupted"


def test_an_unexpected_error_is_one_line_with_a_pointer_to_debug(tiny_scene, capsys, monkeypatch):
    import gs_dfd.commands.check as check

    def broken(scene, cfg):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(check, "summarize", broken)
    _err(main(["check", "--scene", str(tiny_scene)]), capsys, "internal error", "--debug")
