"""Gaussians as PLY in the INRIA 3DGS property layout, which standard 3DGS viewers open.

Properties, binary little-endian float32, in this order::

    x y z nx ny nz f_dc_0..2 f_rest_0..44 opacity scale_0..2 rot_0..3

Values are pre-activation, as the INRIA code stores them: ``opacity`` is a
logit, ``scale_*`` are natural logs of the standard deviations (metres),
``rot_*`` a quaternion (w, x, y, z), ``f_dc_*`` the degree-0 spherical-harmonic
coefficients (``rgb = 0.5 + C0 * f_dc``); the 45 ``f_rest_*`` (degrees 1-3)
are zero for view-independent colour. Normals are zero (unused by viewers).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gs_dfd.errors import InputError
from gs_dfd.utils.atomic import write_file_atomic

SH_C0 = 0.28209479177387814
N_REST = 45
PROPERTIES = (
    ["x", "y", "z", "nx", "ny", "nz"] + [f"f_dc_{i}" for i in range(3)] + [f"f_rest_{i}" for i in range(N_REST)]
    + ["opacity"] + [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)]
)


@dataclass
class GaussianCloud:
    """Activated Gaussian parameters (what the renderer consumes)."""

    means: np.ndarray  # [N, 3] metres
    quats: np.ndarray  # [N, 4] (w, x, y, z), unit
    scales: np.ndarray  # [N, 3] standard deviations, metres
    opacities: np.ndarray  # [N] in (0, 1)
    colors: np.ndarray  # [N, 3] rgb in [0, 1]

    def __post_init__(self) -> None:
        n = self.means.shape[0]
        assert self.means.shape == (n, 3) and self.quats.shape == (n, 4) and self.scales.shape == (n, 3)
        assert self.opacities.shape == (n,) and self.colors.shape == (n, 3)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def write_gaussian_ply(path: str | Path, cloud: GaussianCloud) -> Path:
    """Write atomically; the file appears complete or not at all."""
    n = cloud.means.shape[0]
    data = np.zeros(n, dtype=[(name, "<f4") for name in PROPERTIES])
    for i, axis in enumerate("xyz"):
        data[axis] = cloud.means[:, i]
    for i in range(3):
        data[f"f_dc_{i}"] = (cloud.colors[:, i] - 0.5) / SH_C0
        data[f"scale_{i}"] = np.log(np.maximum(cloud.scales[:, i], 1e-12))
    data["opacity"] = _logit(cloud.opacities)
    q = cloud.quats / np.linalg.norm(cloud.quats, axis=1, keepdims=True)
    for i in range(4):
        data[f"rot_{i}"] = q[:, i]
    header = "ply\nformat binary_little_endian 1.0\n"
    header += f"element vertex {n}\n" + "".join(f"property float {p}\n" for p in PROPERTIES) + "end_header\n"

    def _write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fh.write(header.encode("ascii"))
            fh.write(data.tobytes())

    return write_file_atomic(path, _write)


def read_gaussian_ply(path: str | Path) -> GaussianCloud:
    """Read an INRIA-layout binary little-endian PLY (any property order, float32 or float64)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "PLY file not found")
    raw = path.read_bytes()
    end = raw.find(b"end_header\n")
    if not raw.startswith(b"ply") or end < 0:
        raise InputError(path, "not a PLY file")
    lines = raw[:end].decode("ascii", errors="replace").splitlines()
    if "format binary_little_endian 1.0" not in lines:
        raise InputError(path, "only binary_little_endian PLY is supported")
    types = {"float": "<f4", "float32": "<f4", "double": "<f8", "float64": "<f8", "uchar": "u1", "int": "<i4"}
    count, fields, in_vertex = 0, [], False
    for ln in lines:
        parts = ln.split()
        if parts[:2] == ["element", "vertex"]:
            count, in_vertex = int(parts[2]), True
        elif parts and parts[0] == "element":
            in_vertex = False
        elif parts and parts[0] == "property" and in_vertex:
            if parts[1] not in types:
                raise InputError(path, f"unsupported property type {parts[1]}")
            fields.append((parts[2], types[parts[1]]))
    names = {f for f, _ in fields}
    needed = ["x", "y", "z", "opacity"] + [f"f_dc_{i}" for i in range(3)] + [f"scale_{i}" for i in range(3)] + [
        f"rot_{i}" for i in range(4)]
    missing = [p for p in needed if p not in names]
    if missing:
        raise InputError(path, f"missing INRIA 3DGS properties: {', '.join(missing)}")
    data = np.frombuffer(raw, dtype=np.dtype(fields), count=count, offset=end + len(b"end_header\n"))
    col = lambda *ks: np.stack([data[k].astype(np.float64) for k in ks], axis=1)  # noqa: E731
    q = col("rot_0", "rot_1", "rot_2", "rot_3")
    return GaussianCloud(
        means=col("x", "y", "z"),
        quats=q / np.linalg.norm(q, axis=1, keepdims=True),
        scales=np.exp(col("scale_0", "scale_1", "scale_2")),
        opacities=1.0 / (1.0 + np.exp(-data["opacity"].astype(np.float64))),
        colors=0.5 + SH_C0 * col("f_dc_0", "f_dc_1", "f_dc_2"),
    )
