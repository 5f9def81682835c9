"""gs-dfd export: point clouds checked against an independent back-projection, Gaussian PLY round trips,
filters, the snapshot, and bad inputs (one line, exit 2, nothing written).

Fit-like folders are built by hand (no fitting), except one end-to-end test through the cheap ``--method dff``."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest

from conftest import REPO, tiny_camera, write_tiny_scene
from gs_dfd.cli import main
from gs_dfd.data.images import write_png
from gs_dfd.errors import InputError
from gs_dfd.export.camera_json import read_camera_json, write_camera_json
from gs_dfd.export.gaussian_ply import PROPERTIES, GaussianCloud, read_gaussian_ply, write_gaussian_ply
from gs_dfd.viz.snapshot import splat

o3d = pytest.importorskip("open3d")

W, H = 32, 24


def _pose(angle_deg: float = 20.0, t=(0.3, -0.1, 0.5)) -> np.ndarray:
    a = math.radians(angle_deg)
    m = np.eye(4)
    m[:3, :3] = [[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]]
    m[:3, 3] = t
    return m


def make_output(root, kind="fit", world_to_cam=None, confidence=True, gaussians=True, seed=0, complete=True):
    """A folder as gs-dfd fit / predict leave it: a slanted plane with a nearer box, two holes (0 and NaN);
    ``complete=False``: without the file a run writes last (metrics.json / prediction.json)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    cam = tiny_camera(W, H)
    vv, uu = np.mgrid[0:H, 0:W]
    depth = (2.0 + 0.02 * uu).astype(np.float32)
    depth[5:12, 8:16] = 1.2
    depth[0, 0] = 0.0
    depth[3, 4] = np.nan
    np.save(root / "depth.npy", depth)
    colors = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    write_png(root / ("aif.png" if kind == "fit" else "image.png"), colors)
    if confidence:
        np.save(root / "confidence.npy", (uu / (W - 1)).astype(np.float32))
    write_camera_json(root / "camera.json", cam, world_to_cam)
    if gaussians and kind == "fit":
        n = 40
        q = rng.standard_normal((n, 4))
        means = np.stack([rng.uniform(-0.2, 0.2, n), rng.uniform(-0.2, 0.2, n), rng.uniform(1.0, 3.0, n)], 1)
        write_gaussian_ply(root / "gaussians.ply", GaussianCloud(
            means=means, quats=q / np.linalg.norm(q, axis=1, keepdims=True), scales=rng.uniform(1e-3, 0.02, (n, 3)),
            opacities=rng.uniform(0.05, 0.95, n), colors=rng.uniform(0, 1, (n, 3))))
    if complete:
        (root / ("metrics.json" if kind == "fit" else "prediction.json")).write_text("{}")
    return root, cam, depth, colors


def expected_points(depth, cam, mask):
    """Independent back-projection: pixel (u, v) has its centre at (u + 0.5, v + 0.5), as in the renderer."""
    out = []
    for v in range(H):
        for u in range(W):
            if mask[v, u]:
                z = float(depth[v, u])
                out.append(((u + 0.5 - cam.cx) * z / cam.fx, (v + 0.5 - cam.cy) * z / cam.fy, z))
    return np.array(out)


def valid(depth):
    return np.isfinite(depth) & (depth > 0)


def export(*args) -> int:
    return main(["export", *map(str, args)])


def read_cloud(path):
    pcd = o3d.io.read_point_cloud(str(path))
    return np.asarray(pcd.points), np.asarray(pcd.colors), pcd


@pytest.mark.parametrize("suffix", [".ply", ".pcd"])
def test_points_match_an_independent_back_projection(tmp_path, suffix, capsys):
    fit, cam, depth, colors = make_output(tmp_path / "fit")
    out = tmp_path / f"cloud{suffix}"
    assert export("--fit", fit, "--out", out) == 0
    points, cols, _ = read_cloud(out)
    mask = valid(depth)
    assert len(points) == mask.sum() == W * H - 2
    np.testing.assert_allclose(points, expected_points(depth, cam, mask), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(cols, colors[mask] / 255.0, atol=0.5 / 255 + 1e-6)
    # Each point projects back onto the centre of its own pixel.
    vv, uu = np.nonzero(mask)
    np.testing.assert_allclose(cam.fx * points[:, 0] / points[:, 2] + cam.cx, uu + 0.5, atol=1e-6)
    np.testing.assert_allclose(cam.fy * points[:, 1] / points[:, 2] + cam.cy, vv + 0.5, atol=1e-6)
    assert f"{W * H - 2} points" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_predict_folder_and_world_coordinates(tmp_path):
    w2c = _pose()
    pred, cam, depth, colors = make_output(tmp_path / "pred", kind="predict", world_to_cam=w2c, confidence=False)
    out = tmp_path / "p.ply"
    assert export("--predict", pred, "--out", out) == 0
    points, cols, _ = read_cloud(out)
    mask = valid(depth)
    # Written in world coordinates: world_to_cam takes them back to the camera-frame back-projection.
    cam_pts = points @ w2c[:3, :3].T + w2c[:3, 3]
    np.testing.assert_allclose(cam_pts, expected_points(depth, cam, mask), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(cols, colors[mask] / 255.0, atol=0.5 / 255 + 1e-6)


def test_filters(tmp_path):
    fit, cam, depth, _ = make_output(tmp_path / "fit")
    mask = valid(depth)
    conf = np.load(fit / "confidence.npy")
    assert export("--fit", fit, "--out", tmp_path / "c.ply", "--confidence-min", 0.5) == 0
    points, _, _ = read_cloud(tmp_path / "c.ply")
    np.testing.assert_allclose(points, expected_points(depth, cam, mask & (conf >= 0.5)), rtol=1e-6, atol=1e-7)

    assert export("--fit", fit, "--out", tmp_path / "r.ply", "--depth-range-m", 1.0, 2.2) == 0
    points, _, _ = read_cloud(tmp_path / "r.ply")
    in_range = mask & (np.nan_to_num(depth) >= 1.0) & (np.nan_to_num(depth) <= 2.2)
    assert 0 < in_range.sum() < mask.sum()
    np.testing.assert_allclose(points, expected_points(depth, cam, in_range), rtol=1e-6, atol=1e-7)

    voxel = 0.02
    assert export("--fit", fit, "--out", tmp_path / "v.ply", "--voxel-size-m", voxel) == 0
    vox, vcols, _ = read_cloud(tmp_path / "v.ply")
    full = expected_points(depth, cam, mask)
    assert 0 < len(vox) < len(full)
    # Every merged point is the mean of points within one voxel: it stays near the original points.
    from scipy.spatial import cKDTree
    dist, _ = cKDTree(full).query(vox)
    assert dist.max() < voxel * math.sqrt(3)
    assert vcols.shape == vox.shape


def test_outliers_and_normals(tmp_path):
    fit, cam, depth, _ = make_output(tmp_path / "fit")
    depth = np.load(fit / "depth.npy")
    depth[20, 25] = 40.0  # a stray pixel far behind the plane
    np.save(fit / "depth.npy", depth)
    assert export("--fit", fit, "--out", tmp_path / "o.ply", "--remove-outliers", "--normals") == 0
    points, _, pcd = read_cloud(tmp_path / "o.ply")
    assert points[:, 2].max() < 3.0 and len(points) < valid(depth).sum()
    normals = np.asarray(pcd.normals)
    assert normals.shape == points.shape
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1, atol=1e-6)
    assert np.all((normals * -points).sum(1) > 0)  # facing the camera at the origin


def test_gaussians_round_trip_and_filters(tmp_path):
    fit, _, _, _ = make_output(tmp_path / "fit")
    src = read_gaussian_ply(fit / "gaussians.ply")
    out = tmp_path / "g.ply"
    assert export("--fit", fit, "--out", out, "--kind", "gaussians") == 0
    back = read_gaussian_ply(out)
    for name in ("means", "scales", "opacities", "colors"):
        np.testing.assert_allclose(getattr(back, name), getattr(src, name), rtol=1e-5, atol=1e-6)
    header = out.read_bytes().split(b"end_header")[0].decode()
    assert "format binary_little_endian 1.0" in header
    assert [ln.split()[-1] for ln in header.splitlines() if ln.startswith("property")] == PROPERTIES
    np.testing.assert_allclose(np.asarray(o3d.io.read_point_cloud(str(out)).points), src.means, rtol=1e-6, atol=1e-6)

    assert export("--fit", fit, "--out", tmp_path / "gf.ply", "--kind", "gaussians", "--depth-range-m", 1.5, 2.5,
                  "--opacity-min", 0.5) == 0
    keep = (src.means[:, 2] >= 1.5) & (src.means[:, 2] <= 2.5) & (src.opacities >= 0.5)
    assert 0 < keep.sum() < len(keep)
    np.testing.assert_allclose(read_gaussian_ply(tmp_path / "gf.ply").means, src.means[keep], rtol=1e-6, atol=1e-6)


def test_snapshot_png(tmp_path, capsys):
    fit, _, _, _ = make_output(tmp_path / "fit", world_to_cam=_pose())
    snap = tmp_path / "snap.png"
    assert export("--fit", fit, "--out", tmp_path / "c.ply", "--snapshot", snap) == 0
    img = iio.imread(snap)
    assert img.ndim == 3 and 400 <= img.shape[0] <= 1500 and 600 <= img.shape[1] <= 2000
    assert img[..., :3].std() > 10  # not blank
    assert export("--fit", fit, "--out", tmp_path / "g.ply", "--kind", "gaussians", "--snapshot",
                  tmp_path / "g.png") == 0
    assert (tmp_path / "g.png").stat().st_size > 10_000


def test_front_splat_reproduces_the_image():
    """Points splatted with the camera they came from land on their own pixels."""
    cam = tiny_camera(W, H)
    rng = np.random.default_rng(1)
    depth = rng.uniform(1.0, 3.0, (H, W))
    colors = rng.uniform(0, 1, (H, W, 3)).astype(np.float32)
    pts = expected_points(depth, cam, np.ones((H, W), bool))
    img = splat(pts, colors.reshape(-1, 3), pts[:, 2] / cam.fx, cam.fx, cam.fy, cam.cx, cam.cy, W, H)
    np.testing.assert_array_equal(img, colors)


def test_fit_writes_camera_json_and_export_reads_it(tmp_path):
    scene = write_tiny_scene(tmp_path / "scene")
    out = tmp_path / "fit"
    assert main(["fit", "--scene", str(scene), "--out", str(out), "--method", "dff", "--no-progress"]) == 0
    cam, w2c = read_camera_json(out / "camera.json")
    assert cam.to_json() == json.loads((scene / "scene.json").read_text())["camera"]
    np.testing.assert_array_equal(w2c, np.eye(4))
    assert export("--fit", out, "--out", tmp_path / "c.pcd", "--confidence-min", 0.0) == 0
    assert len(read_cloud(tmp_path / "c.pcd")[0]) == W * H


def test_camera_json_round_trip_and_errors(tmp_path):
    cam = tiny_camera(W, H)
    path = write_camera_json(tmp_path / "camera.json", cam, _pose())
    back, w2c = read_camera_json(path)
    assert back == cam
    np.testing.assert_allclose(w2c, _pose())
    raw = json.loads(path.read_text())
    for edit, field in ((lambda d: d.update(format="x"), "format"), (lambda d: d["camera"].pop("fx"), "camera.fx"),
                        (lambda d: d.update(world_to_cam=[[1, 0], [0, 1]]), "world_to_cam"),
                        (lambda d: d.pop("world_to_cam"), "world_to_cam")):
        bad = json.loads(json.dumps(raw))
        edit(bad)
        path.write_text(json.dumps(bad))
        with pytest.raises(InputError) as exc:
            read_camera_json(path)
        assert exc.value.field == field and str(path) in str(exc.value)


def _break_depth_size(root):
    np.save(root / "depth.npy", np.ones((H - 2, W), np.float32))


def _break_depth_invalid(root):
    np.save(root / "depth.npy", np.where(np.eye(H, W) > 0, 0.0, np.nan).astype(np.float32))


def _break_camera(root):
    (root / "camera.json").write_text('{"format": "gs_dfd.camera/1", "camera": {"width": 32}}')


@pytest.mark.parametrize("breaks, extra, names", [
    (lambda r: (r / "depth.npy").unlink(), [], ["depth.npy", "depth"]),
    (_break_depth_size, [], ["depth.npy", "camera is 32x24"]),
    (_break_depth_invalid, [], ["depth.npy", "no valid depth"]),
    (lambda r: (r / "camera.json").unlink(), [], ["camera.json", "not found"]),
    (_break_camera, [], ["camera.json", "camera.height"]),
    (lambda r: (r / "aif.png").unlink(), [], ["aif.png", "colour"]),
    (lambda r: (r / "confidence.npy").unlink(), ["--confidence-min", "0.5"], ["confidence.npy", "--confidence-min"]),
    (None, ["--depth-range-m", "10", "20"], ["depth.npy", "--depth-range-m", "no pixel left"]),
    (None, ["--confidence-min", "1.0", "--depth-range-m", "1", "1.5"], ["confidence.npy", "--confidence-min"]),
    (None, ["--out-ext", ".xyz"], ["cloud.xyz", "--out", ".ply or .pcd"]),
    (None, ["--out-ext", ".pcd", "--kind", "gaussians"], ["cloud.pcd", "--out"]),
    (None, ["--normals", "--kind", "gaussians"], ["--normals", "points only"]),
    (None, ["--snapshot", "snap.jpg"], ["snap.jpg", "--snapshot"]),
    (lambda r: (r / "gaussians.ply").write_bytes(b"ply\nformat ascii 1.0\nend_header\n"), ["--kind", "gaussians"],
     ["gaussians.ply", "binary_little_endian"]),
])
def test_bad_inputs_one_line_exit_2_nothing_written(tmp_path, capsys, breaks, extra, names):
    fit, _, _, _ = make_output(tmp_path / "fit")
    if breaks is not None:
        breaks(fit)
    ext = ".ply"
    if "--out-ext" in extra:
        i = extra.index("--out-ext")
        ext, extra = extra[i + 1], extra[:i] + extra[i + 2:]
    extra = [str(tmp_path / a) if a.startswith("snap") else a for a in extra]
    before = set(tmp_path.iterdir())
    assert export("--fit", fit, "--out", tmp_path / f"cloud{ext}", *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    for name in names:
        assert name in err[0], err[0]
    assert set(tmp_path.iterdir()) == before  # nothing written, no temp files


def test_source_and_overwrite_rules(tmp_path, capsys):
    fit, _, _, _ = make_output(tmp_path / "fit")
    out = tmp_path / "c.ply"
    assert export("--out", out) == 2
    assert export("--fit", fit, "--predict", fit, "--out", out) == 2
    assert export("--predict", fit, "--out", out, "--kind", "gaussians") == 2
    assert not out.exists()
    assert export("--fit", fit, "--out", out) == 0
    stamp = out.stat().st_mtime_ns
    assert export("--fit", fit, "--out", out) == 2
    assert "--overwrite" in capsys.readouterr().err and out.stat().st_mtime_ns == stamp
    assert export("--fit", fit, "--out", out, "--overwrite", "--voxel-size-m", 0.05) == 0
    assert len(read_cloud(out)[0]) < W * H - 2


def test_cli_error_has_no_traceback(tmp_path):
    fit, _, _, _ = make_output(tmp_path / "fit")
    (fit / "depth.npy").unlink()
    proc = subprocess.run([sys.executable, "-m", "gs_dfd.cli", "export", "--fit", str(fit), "--out",
                           str(tmp_path / "c.ply")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "depth.npy" in proc.stderr
    assert not (tmp_path / "c.ply").exists()


def test_export_help_documents_every_flag(capsys):
    import test_cli

    test_cli.test_help_documents_every_flag(["export", "--help"], capsys)
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = capsys.readouterr().out
    for flag in ("--fit", "--predict", "--kind", "--confidence-min", "--depth-range-m", "--voxel-size-m",
                 "--remove-outliers", "--normals", "--snapshot", "--overwrite", "--opacity-min"):
        assert flag in text


@pytest.mark.parametrize("kind", ["fit", "predict"])
def test_an_unfinished_output_is_refused(tmp_path, capsys, kind):
    root, *_ = make_output(tmp_path / kind, kind=kind, complete=False)
    assert export(f"--{kind}", root, "--out", tmp_path / "cloud.ply") == 2
    err = capsys.readouterr().err.strip()
    assert "not a finished gs-dfd" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "cloud.ply").exists()
