"""``gs-dfd export``: a fit's or a prediction's depth as a coloured point cloud, or a fit's Gaussians as a PLY.

``--kind points`` back-projects ``depth.npy`` through ``camera.json``
(``gs_dfd.export.points``) and writes a binary ``.ply`` or ``.pcd`` with open3d;
``--kind gaussians`` re-writes a fit's ``gaussians.ply`` (INRIA 3DGS layout),
checked and optionally filtered. ``--snapshot`` draws the result from a few
viewpoints next to the input image (``gs_dfd.viz.snapshot``). Everything is
checked before anything is written; each file is written atomically.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np

from gs_dfd.console import console
from gs_dfd.errors import InputError
from gs_dfd.export.camera_json import CAMERA_FILE, read_camera_json
from gs_dfd.export.gaussian_ply import GaussianCloud, read_gaussian_ply, write_gaussian_ply
from gs_dfd.export.points import (
    COLOR_FILE, POINT_CLOUD_SUFFIXES, DepthOutput, backproject, cam_to_world, estimate_normals_towards,
    load_depth_output, make_point_cloud, world_to_cam_points, write_point_cloud,
)
from gs_dfd.utils.outputs import check_output, output_file
from gs_dfd.viz.colormap import depth_to_rgb
from gs_dfd.viz.panels import save_panel
from gs_dfd.viz.snapshot import DEFAULT_VIEWS, render_views


# Outlier removal compares each point with this many neighbours at most: more costs minutes and means nothing
# more for a depth map's cloud.
MAX_OUTLIER_NEIGHBORS = 256
# Voxels per axis of the cloud's extent at most: open3d's voxel index overflows long before a voxel this small
# stops merging anything.
MAX_VOXELS_PER_AXIS = 1 << 20


@dataclass(kw_only=True)
class ExportConfig:
    """Export for inspection in 3D: the depth of a fit (or a prediction) as a coloured point cloud (.ply or .pcd,
    binary, via open3d), or a fit's Gaussians as a PLY in the INRIA 3DGS layout that 3DGS viewers open. Points are
    in the reference camera's frame (OpenCV axes: x right, y down, z forward, metres), or in world coordinates when
    camera.json carries a world_to_cam other than the identity."""

    out: Path
    """Output file: .ply or .pcd for points, .ply for gaussians."""
    fit: Optional[Path] = None
    """A gs-dfd fit output folder (depth.npy, camera.json, aif.png, optional confidence.npy, gaussians.ply)."""
    predict: Optional[Path] = None
    """A gs-dfd predict output folder (depth.npy, camera.json, image.png), instead of a fit folder."""
    kind: Literal["points", "gaussians"] = "points"
    """points: one coloured point per pixel with depth; gaussians: the fitted Gaussians (needs a fit folder)."""
    confidence_min: Optional[float] = None
    """Keep only pixels whose confidence (confidence.npy, in [0, 1]) is at least this (points only)."""
    depth_range_m: Optional[tuple[float, float]] = None
    """Keep points / Gaussian centres whose depth (reference camera z) is in this range (near far, metres)."""
    voxel_size_m: float = 0.0
    """Merge the points in each cube of this size into one (averaged position and colour); 0 = off (points only)."""
    remove_outliers: bool = False
    """Drop stray points at depth edges (open3d statistical outlier removal; points only)."""
    outlier_neighbors: int = 20
    """Neighbours whose mean distance is compared, when removing outliers."""
    outlier_std_ratio: float = 2.0
    """When removing outliers, drop a point whose mean neighbour distance is this many std above the average."""
    normals: bool = False
    """Estimate normals from the 30 nearest points and orient them towards the camera (points only)."""
    opacity_min: float = 0.0
    """Keep only Gaussians at least this opaque (gaussians only)."""
    snapshot: Optional[Path] = None
    """Also draw the export (reference view, 30 degrees left/right, from above) next to the input, as a PNG."""
    overwrite: bool = False
    """Replace --out / --snapshot if they are earlier gs-dfd exports (never anything else)."""
    debug: bool = False
    """Show full tracebacks instead of one-line errors."""


def _inputs(cfg: ExportConfig) -> list[tuple[str, Path | None]]:
    return [("--fit", cfg.fit), ("--predict", cfg.predict)]


def _check_out(cfg: ExportConfig, path: Path, flag: str, suffixes: tuple[str, ...]) -> None:
    if path.suffix.lower() not in suffixes:
        raise InputError(path, f"unsupported extension '{path.suffix}' (use {' or '.join(suffixes)})", flag)
    check_output(path, kind="file", inputs=_inputs(cfg), overwrite=cfg.overwrite, flag=flag)


def _validate(cfg: ExportConfig) -> tuple[Path, Literal["fit", "predict"]]:
    if (cfg.fit is None) == (cfg.predict is None):
        raise InputError(None, "give exactly one of --fit DIR and --predict DIR", "--fit")
    source: Literal["fit", "predict"] = "fit" if cfg.fit is not None else "predict"
    root = cfg.fit if cfg.fit is not None else cfg.predict
    assert root is not None
    if cfg.kind == "gaussians":
        if source != "fit":
            raise InputError(cfg.predict, "--kind gaussians needs a fit folder (--fit)", "--predict")
        for flag, used in (("--confidence-min", cfg.confidence_min is not None), ("--voxel-size-m", cfg.voxel_size_m),
                           ("--remove-outliers", cfg.remove_outliers), ("--normals", cfg.normals)):
            if used:
                raise InputError(None, "applies to --kind points only", flag)
    elif cfg.opacity_min:
        raise InputError(None, "applies to --kind gaussians only", "--opacity-min")
    _check_out(cfg, cfg.out, "--out", POINT_CLOUD_SUFFIXES if cfg.kind == "points" else (".ply",))
    if cfg.snapshot is not None:
        _check_out(cfg, cfg.snapshot, "--snapshot", (".png",))
        if os.path.realpath(cfg.snapshot) == os.path.realpath(cfg.out):
            raise InputError(cfg.snapshot, "must differ from --out", "--snapshot")
    if cfg.confidence_min is not None and not 0 <= cfg.confidence_min <= 1:
        raise InputError(None, f"must be in [0, 1] (got {cfg.confidence_min})", "--confidence-min")
    if cfg.depth_range_m is not None and not 0 <= cfg.depth_range_m[0] < cfg.depth_range_m[1]:
        raise InputError(None, f"need 0 <= near < far (got {cfg.depth_range_m[0]}, {cfg.depth_range_m[1]})",
                         "--depth-range-m")
    for flag, value in (("--voxel-size-m", cfg.voxel_size_m), ("--outlier-std-ratio", cfg.outlier_std_ratio)):
        if not (np.isfinite(value) and value >= 0):
            raise InputError(None, f"must be >= 0 (got {value})", flag)
    if not 1 <= cfg.outlier_neighbors <= MAX_OUTLIER_NEIGHBORS:
        raise InputError(None, f"must be in 1-{MAX_OUTLIER_NEIGHBORS} (got {cfg.outlier_neighbors})",
                         "--outlier-neighbors")
    if not 0 <= cfg.opacity_min < 1:
        raise InputError(None, f"must be in [0, 1) (got {cfg.opacity_min})", "--opacity-min")
    return root, source


def _keep(n: int, before: int, flag: str, what: str, path: Path) -> int:
    """``n``, the count a filter kept; none kept is an error naming the filter."""
    if n == 0:
        raise InputError(path, f"no {what} left after {flag} (of {before})", flag)
    return n


@dataclass
class _Result:
    """What was exported, in the reference camera's frame (for the snapshot) and as written."""

    points_cam: np.ndarray  # [M, 3]
    colors: np.ndarray  # [M, 3]
    size_m: np.ndarray  # [M] footprint of each point, metres
    count: int
    detail: str


def _export_points(cfg: ExportConfig, data: DepthOutput) -> tuple[_Result, object]:
    depth, cam = data.depth, data.camera
    mask = np.isfinite(depth)
    n_pixels, counts = depth.size, [f"{int(mask.sum())} with depth"]
    if cfg.depth_range_m is not None:
        near, far = cfg.depth_range_m
        before = int(mask.sum())
        mask &= (np.nan_to_num(depth) >= near) & (np.nan_to_num(depth) <= far)
        counts.append(f"{_keep(int(mask.sum()), before, '--depth-range-m', 'pixel', data.depth_path)} in range")
    if cfg.confidence_min is not None:
        assert data.confidence is not None
        before = int(mask.sum())
        mask &= data.confidence >= cfg.confidence_min
        kept = _keep(int(mask.sum()), before, '--confidence-min', 'pixel', data.root / 'confidence.npy')
        counts.append(f"{kept} confident")
    points = backproject(depth, cam, mask)  # [M, 3] camera frame
    pcd = make_point_cloud(points, data.colors[mask])
    if cfg.voxel_size_m > 0:
        extent = float(np.ptp(points, axis=0).max()) if len(points) else 0.0
        if extent / cfg.voxel_size_m > MAX_VOXELS_PER_AXIS:
            raise InputError(None, f"{cfg.voxel_size_m:g} m is too small for a cloud {extent:.3g} m across (at least "
                                   f"{extent / MAX_VOXELS_PER_AXIS:.3g} m; 0 turns merging off)", "--voxel-size-m")
        before = len(pcd.points)
        pcd = pcd.voxel_down_sample(cfg.voxel_size_m)
        counts.append(f"{_keep(len(pcd.points), before, '--voxel-size-m', 'point', data.depth_path)} voxels")
    if cfg.remove_outliers:
        before = len(pcd.points)
        pcd, _ = pcd.remove_statistical_outlier(nb_neighbors=cfg.outlier_neighbors, std_ratio=cfg.outlier_std_ratio)
        counts.append(f"{_keep(len(pcd.points), before, '--remove-outliers', 'point', data.depth_path)} inliers")
    if cfg.normals:
        estimate_normals_towards(pcd, np.zeros(3))  # the reference camera sits at the origin of its frame
    points_cam, colors = np.asarray(pcd.points).copy(), np.asarray(pcd.colors).copy()
    # A point's footprint: its pixel at its depth, or the voxel that merged it.
    size_m = np.maximum(points_cam[:, 2] / cam.fx, cfg.voxel_size_m)
    if not np.allclose(data.world_to_cam, np.eye(4)):
        rotation_only = np.eye(4)
        rotation_only[:3, :3] = data.world_to_cam[:3, :3]
        normals = cam_to_world(np.asarray(pcd.normals), rotation_only) if pcd.has_normals() else None
        pcd = make_point_cloud(cam_to_world(points_cam, data.world_to_cam), colors, normals)
    n = len(points_cam)
    detail = f"{n} points ({100.0 * n / n_pixels:.1f}% of {n_pixels} pixels; {', '.join(counts)})"
    return _Result(points_cam, colors, size_m, n, detail), pcd


def _export_gaussians(cfg: ExportConfig, root: Path) -> tuple[_Result, GaussianCloud]:
    ply = root / "gaussians.ply"
    if not ply.is_file():
        raise InputError(ply, "not found (--kind gaussians needs the gaussians.ply of a gs-dfd fit --method gs)",
                         "--fit")
    cloud = read_gaussian_ply(ply)
    n_all = cloud.means.shape[0]
    if n_all == 0:
        raise InputError(ply, "holds no Gaussians", "vertex")
    for name in ("means", "quats", "scales", "opacities", "colors"):
        bad = ~np.isfinite(getattr(cloud, name)).reshape(n_all, -1).all(1)
        if bad.any():
            raise InputError(ply, f"{int(bad.sum())} of {n_all} Gaussians have non-finite values", name)
    w2c = None
    if cfg.depth_range_m is not None or cfg.snapshot is not None:
        _, w2c = read_camera_json(root / CAMERA_FILE)
    means_cam = world_to_cam_points(cloud.means, w2c) if w2c is not None else cloud.means
    keep = np.ones(n_all, bool)
    counts = []
    if cfg.depth_range_m is not None:
        near, far = cfg.depth_range_m
        keep &= (means_cam[:, 2] >= near) & (means_cam[:, 2] <= far)
        counts.append(f"{_keep(int(keep.sum()), n_all, '--depth-range-m', 'Gaussian', ply)} in range")
    if cfg.opacity_min > 0:
        before = int(keep.sum())
        keep &= cloud.opacities >= cfg.opacity_min
        counts.append(f"{_keep(int(keep.sum()), before, '--opacity-min', 'Gaussian', ply)} opaque enough")
    out = GaussianCloud(means=cloud.means[keep], quats=cloud.quats[keep], scales=cloud.scales[keep],
                        opacities=cloud.opacities[keep], colors=cloud.colors[keep])
    n = int(keep.sum())
    # Snapshot footprint: two standard deviations of the longest axis (closes the grid of a fit).
    size_m = 2.0 * out.scales.max(axis=1)
    detail = f"{n} Gaussians (of {n_all}{'; ' + ', '.join(counts) if counts else ''})"
    return _Result(means_cam[keep], np.clip(out.colors, 0, 1), size_m, n, detail), out


def _snapshot_tiles(cfg: ExportConfig, data: DepthOutput, source: str, result: _Result) -> tuple[list, list, str]:
    """Input image and depth, then the views; computed before anything is written."""
    cam = data.camera
    views, stretch = render_views(result.points_cam, result.colors, result.size_m, cam.width, cam.height)
    noun = "points" if cfg.kind == "points" else "Gaussian centres"
    tiles = [data.colors, depth_to_rgb(np.nan_to_num(data.depth))] + views
    titles = [f"input ({COLOR_FILE[source]})", "depth (near = red)"] + [
        f"{v.title}: {result.count} {noun}" if i == 0 else v.title for i, v in enumerate(DEFAULT_VIEWS)]
    note = ""
    if stretch > 1.01:  # a long lens: say that the turned views are widened
        note = (f"\nturned views: x and y stretched {stretch:.1f}x about the camera "
                "(a long lens sees a deep, narrow cloud)")
    return tiles, titles, note


def _size(path: Path) -> str:
    n = path.stat().st_size
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def run(cfg: ExportConfig) -> int:
    root, source = _validate(cfg)
    data = None
    if cfg.kind == "points" or cfg.snapshot is not None:
        data = load_depth_output(root, source, need_confidence=cfg.confidence_min is not None)
    if cfg.kind == "points":
        assert data is not None
        result, pcd = _export_points(cfg, data)
        write = lambda path: write_point_cloud(path, pcd)  # noqa: E731
    else:
        result, cloud = _export_gaussians(cfg, root)
        write = lambda path: write_gaussian_ply(path, cloud)  # noqa: E731
    tiles = titles = None
    note = ""
    if cfg.snapshot is not None:
        assert data is not None
        tiles, titles, note = _snapshot_tiles(cfg, data, source, result)
    with contextlib.ExitStack() as stack:  # both files appear, or neither
        tmp_out = stack.enter_context(output_file(cfg.out, inputs=_inputs(cfg), overwrite=cfg.overwrite))
        write(tmp_out)
        if tiles is not None and cfg.snapshot is not None:
            tmp_snap = stack.enter_context(output_file(cfg.snapshot, inputs=_inputs(cfg), overwrite=cfg.overwrite,
                                                       flag="--snapshot"))
            name = f"{root.name}: gs-dfd export --kind {cfg.kind}{note}"
            save_panel(tmp_snap, tiles, titles, columns=3, suptitle=name, tile_width_in=3.0)
    console.print(f"export ({cfg.kind}) of {root}: {result.detail} -> {cfg.out} ({_size(cfg.out)})")
    if tiles is not None and cfg.snapshot is not None:
        console.print(f"  snapshot {cfg.snapshot} ({_size(cfg.snapshot)})")
    return 0
