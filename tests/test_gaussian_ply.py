"""Gaussian PLY in the INRIA layout: round trip through our reader and through open3d."""

from __future__ import annotations

import numpy as np
import pytest

from gs_dfd.errors import InputError
from gs_dfd.export.gaussian_ply import PROPERTIES, GaussianCloud, read_gaussian_ply, write_gaussian_ply


def _cloud(n=50, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n, 4))
    return GaussianCloud(means=rng.uniform(-1, 1, (n, 3)), quats=q / np.linalg.norm(q, axis=1, keepdims=True),
                         scales=rng.uniform(1e-3, 0.1, (n, 3)), opacities=rng.uniform(0.05, 0.95, n),
                         colors=rng.uniform(0, 1, (n, 3)))


def test_round_trip(tmp_path):
    cloud = _cloud()
    path = write_gaussian_ply(tmp_path / "g.ply", cloud)
    back = read_gaussian_ply(path)
    for name in ("means", "scales", "opacities", "colors"):
        np.testing.assert_allclose(getattr(back, name), getattr(cloud, name), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.abs((back.quats * cloud.quats).sum(1)), 1, atol=1e-6)
    header = path.read_bytes().split(b"end_header")[0].decode()
    props = [ln.split()[-1] for ln in header.splitlines() if ln.startswith("property")]
    assert props == PROPERTIES and len([p for p in props if p.startswith("f_rest_")]) == 45
    assert "binary_little_endian" in header


def test_open3d_reads_positions(tmp_path):
    o3d = pytest.importorskip("open3d")
    cloud = _cloud(30)
    path = write_gaussian_ply(tmp_path / "g.ply", cloud)
    pcd = o3d.io.read_point_cloud(str(path))
    np.testing.assert_allclose(np.asarray(pcd.points), cloud.means, rtol=1e-5, atol=1e-6)


def test_bad_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_gaussian_ply(tmp_path / "none.ply")
    (tmp_path / "x.ply").write_bytes(b"ply\nformat ascii 1.0\nend_header\n")
    with pytest.raises(InputError, match="binary_little_endian"):
        read_gaussian_ply(tmp_path / "x.ply")
