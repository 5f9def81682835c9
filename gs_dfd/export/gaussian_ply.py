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
    header = "ply\nformat binary_little_endian 1.0\ncomment gs-dfd\n"  # marks files gs-dfd wrote
    header += f"element vertex {n}\n" + "".join(f"property float {p}\n" for p in PROPERTIES) + "end_header\n"

    def _write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fh.write(header.encode("ascii"))
            fh.write(data.tobytes())

    return write_file_atomic(path, _write)


_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "<i2", "int16": "<i2",
    "ushort": "<u2", "uint16": "<u2", "int": "<i4", "int32": "<i4", "uint": "<u4", "uint32": "<u4",
    "float": "<f4", "float32": "<f4", "double": "<f8", "float64": "<f8",
}
_NEEDED = (["x", "y", "z", "opacity"] + [f"f_dc_{i}" for i in range(3)] + [f"scale_{i}" for i in range(3)]
           + [f"rot_{i}" for i in range(4)])
_MAX_HEADER_BYTES = 1 << 20  # an INRIA header is ~2 KB; a "header" without end_header in 1 MB is not a PLY


def _parse_header(path: Path, raw: bytes) -> tuple[int, np.dtype, int]:
    """(vertex count, vertex record dtype, offset of the vertex data) of a binary little-endian PLY."""
    if not (raw.startswith(b"ply\n") or raw.startswith(b"ply\r\n")):
        raise InputError(path, "not a PLY file (it does not start with 'ply')")
    head = raw[:_MAX_HEADER_BYTES]
    end = -1
    for marker in (b"\nend_header\n", b"\nend_header\r\n"):
        at = head.find(marker)
        if at >= 0 and (end < 0 or at < end):
            end, offset = at, at + len(marker)
    if end < 0:
        raise InputError(path, "not a PLY file (no end_header line)")
    try:
        lines = head[:end].decode("ascii").splitlines()
    except UnicodeDecodeError:
        raise InputError(path, "not a PLY file (header is not ASCII text)") from None
    fmt = [ln.split() for ln in lines if ln.startswith("format")]
    if not fmt or len(fmt[0]) < 2:
        raise InputError(path, "PLY header has no format line")
    if fmt[0][1] != "binary_little_endian":
        kind = "ASCII" if fmt[0][1] == "ascii" else f"'{fmt[0][1]}'"
        raise InputError(path, f"{kind} PLY is not supported: only binary_little_endian (as 3DGS tools write)")
    count, fields, element = None, [], None
    for ln in lines:
        parts = ln.split()
        if not parts:
            continue
        if parts[0] == "element":
            if element == "vertex":
                break  # the vertex data comes first: later elements do not move it
            if len(parts) != 3:
                raise InputError(path, f"bad PLY header line '{ln[:60]}'")
            element = parts[1]
            if element != "vertex":
                raise InputError(path, f"PLY element '{element}' comes before the vertices (not a 3DGS file)")
            try:
                count = int(parts[2])
            except ValueError:
                count = -1
            if count < 0:
                raise InputError(path, f"bad vertex count in PLY header line '{ln[:60]}'")
        elif parts[0] == "property" and element == "vertex":
            if len(parts) != 3:  # 'property list ...' has 5 parts
                raise InputError(path, f"unsupported vertex property '{ln[:60]}' (only scalar properties)")
            if parts[1] not in _PLY_TYPES:
                raise InputError(path, f"unsupported property type {parts[1]}")
            fields.append((parts[2], _PLY_TYPES[parts[1]]))
    if count is None:
        raise InputError(path, "PLY header has no 'element vertex' line")
    names = [f for f, _ in fields]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(path, f"duplicate vertex properties: {', '.join(dup)}")
    missing = [p for p in _NEEDED if p not in names]
    if missing:
        raise InputError(path, f"missing INRIA 3DGS properties: {', '.join(missing)}")
    return count, np.dtype(fields), offset


def read_gaussian_ply(path: str | Path) -> GaussianCloud:
    """Read an INRIA-layout binary little-endian PLY (any property order, any scalar type).

    Anything else - not a PLY, ASCII, a body shorter than its header declares,
    missing properties, non-finite values - is a one-line :class:`InputError`.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(path, "is a folder, not a PLY file")
    if not path.is_file():
        raise InputError(path, "PLY file not found")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(path, f"cannot read ({type(exc).__name__})") from None
    count, dtype, offset = _parse_header(path, raw)
    held = (len(raw) - offset) // dtype.itemsize
    if held < count:
        raise InputError(path, f"truncated: header declares {count} vertices, file holds {held}")
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=offset)
    for name in _NEEDED:
        bad = int((~np.isfinite(data[name].astype(np.float64))).sum())
        if bad:
            raise InputError(path, f"non-finite values in property '{name}' ({bad} of {count} vertices)")
    col = lambda *ks: np.stack([data[k].astype(np.float64) for k in ks], axis=1)  # noqa: E731
    q = col("rot_0", "rot_1", "rot_2", "rot_3")
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    if np.any(norm == 0):
        raise InputError(path, f"zero rotation quaternion ({int((norm == 0).sum())} of {count} vertices)")
    log_scales = col("scale_0", "scale_1", "scale_2")
    if np.any(log_scales > 700):  # exp() overflows float64 above ~709
        raise InputError(path, f"scale_* above 700 (log of metres): exp overflows "
                               f"({int((log_scales > 700).any(1).sum())} of {count} vertices)")
    opacity = data["opacity"].astype(np.float64)
    return GaussianCloud(
        means=col("x", "y", "z"),
        quats=q / norm,
        scales=np.exp(log_scales),
        opacities=np.exp(-np.logaddexp(0.0, -opacity)),  # the logistic sigmoid, without exp overflow
        colors=0.5 + SH_C0 * col("f_dc_0", "f_dc_1", "f_dc_2"),
    )
