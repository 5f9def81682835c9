"""C++/OpenMP CPU backend: fused projection, dilation and a tile rasteriser with analytic backward.

Compiled on first use with ``torch.utils.cpp_extension.load`` and cached in
torch's extension directory (``TORCH_EXTENSIONS_DIR``, default
``~/.cache/torch_extensions``); the thread count follows ``torch.get_num_threads()``.
The rasteriser is gsplat's CUDA algorithm (Ye et al. 2024) run per (frame, tile)
on CPU threads with SIMD lanes for pixels; projection (``projection.py``) and
dilation (``defocus.dilate``) are ported to one pass per Gaussian because ~100
small tensor operations would otherwise cost as much as the rasterisation. The
pure-PyTorch versions remain the definitions; tests compare the ports to them.
See ``csrc/raster_cpu.cpp``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sys
import threading
from typing import Any, Iterator

import torch
from torch import Tensor

_EXT: Any = None
_LOCK = threading.Lock()
_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "raster_cpu.cpp")
# FMA contraction is allowed except in the splat exponent, which csrc/raster_cpu.cpp rounds exactly
# as the torch reference does (alphas within a few ulps of 1/255 would otherwise flip between
# skipped and composited). No -ffast-math: it would reorder sums and break the NaN/inf handling
# the culling relies on.
CFLAGS = ["-O3", "-fopenmp"]
# SIMD width follows the instruction set torch itself detected at run time (16 lanes with AVX-512,
# 8 with AVX2); GS_DFD_CPU_ISA=avx512|avx2|generic overrides. Each choice is cached separately.
ISA_FLAGS = {"avx512": ["-mavx512f", "-mavx2", "-mfma"], "avx2": ["-mavx2", "-mfma"], "generic": []}


def cpu_isa() -> str:
    forced = os.environ.get("GS_DFD_CPU_ISA", "").lower()
    if forced:
        if forced not in ISA_FLAGS:
            raise ValueError(f"GS_DFD_CPU_ISA must be one of {sorted(ISA_FLAGS)}, got {forced!r}")
        return forced
    try:
        cap = torch.backends.cpu.get_cpu_capability().upper()
    except Exception:  # older torch
        cap = ""
    return "avx512" if cap.startswith("AVX512") else "avx2" if cap.startswith("AVX2") else "generic"


@contextlib.contextmanager
def _interpreter_ninja_first() -> Iterator[None]:
    """Build with the ninja installed next to this Python, if there is one, whatever PATH says.

    torch runs the first ``ninja`` on PATH: with a venv activated the venv's (pip's ninja 1.13), from ``make`` or
    ``.venv/bin/python`` the system's (1.11). Every switch between the two rebuilt the extension (observed:
    37-73 s of compiling at the start of ``make demo`` after an activated run).
    """
    path = os.environ.get("PATH")
    bin_dir = os.path.dirname(sys.executable)
    if os.path.isfile(os.path.join(bin_dir, "ninja")):
        os.environ["PATH"] = bin_dir + os.pathsep + (path or "")
    try:
        yield
    finally:
        if path is None:
            os.environ.pop("PATH", None)
        else:
            os.environ["PATH"] = path


def build_extension(stem: str, src: str, verbose: bool = False) -> Any:
    """Compile (or take from torch's build cache) the C++/OpenMP source ``src`` with this module's flags for this
    CPU, as ``{stem}_{isa}_{checkout}``; raises if the toolchain is missing. Shared by every C++ kernel here."""
    from torch.utils.cpp_extension import load

    isa = cpu_isa()
    # One cache entry per checkout: two checkouts sharing a name rewrite each other's build file
    # and rebuild on every switch (a CI clone next to a working copy did).
    where = hashlib.sha1(src.encode()).hexdigest()[:8]
    with _interpreter_ninja_first():
        return load(name=f"{stem}_{isa}_{where}", sources=[src], extra_cflags=CFLAGS + ISA_FLAGS[isa],
                    extra_ldflags=["-fopenmp"], verbose=verbose)


def load_extension(verbose: bool = False) -> Any:
    """Build (once) and import the extension; raises if the toolchain is missing."""
    global _EXT
    if _EXT is None:
        with _LOCK:
            if _EXT is None:
                _EXT = build_extension("gs_dfd_raster_cpu_v2", _SRC, verbose)
    return _EXT


def describe_build_error(exc: BaseException) -> str:
    """One line for a failed build: torch's "Error building extension 'name'" (without the ninja log it appends
    to that line) and the compiler's first line mentioning an error (or a missing compiler)."""
    lines = f"{type(exc).__name__}: {exc}".splitlines() or [type(exc).__name__]
    head = re.split(r": \[\d+/\d+\] ", lines[0], maxsplit=1)[0]  # "...extension 'x': [1/2] c++ ..." -> "...'x'"
    first_error = next((ln.strip() for ln in lines[1:] if "error" in ln.lower() or "not found" in ln), "")
    return (f"{head}: {first_error}" if first_error else head)[:300]


class _RasterizeCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, opacities, features, radii, rects, order, width, height, tile_size):
        ext = load_extension()
        nthreads = torch.get_num_threads()
        out, tfinal, ncontrib, offsets, ids, spatial = ext.forward(
            means2d.detach().contiguous(), conics.detach().contiguous(), opacities.detach().contiguous(),
            features.detach().contiguous(), radii, rects, order, width, height, tile_size, nthreads)
        ctx.save_for_backward(means2d, conics, opacities, features, radii, offsets, ids, spatial, tfinal, ncontrib)
        ctx.geom = (width, height, tile_size)
        alpha = (1.0 - tfinal)[..., None]
        ctx.mark_non_differentiable(ncontrib)
        return out, alpha

    @staticmethod
    def backward(ctx, grad_out, grad_alpha):
        means2d, conics, opacities, features, radii, offsets, ids, spatial, tfinal, ncontrib = ctx.saved_tensors
        width, height, tile_size = ctx.geom
        if grad_out is None:
            grad_out = torch.zeros(tfinal.shape + (features.shape[-1],), dtype=torch.float32)
        if grad_alpha is None:
            grad_alpha = torch.zeros_like(tfinal)
        else:
            grad_alpha = grad_alpha[..., 0]
        g_m, g_c, g_o, g_f = load_extension().backward(
            means2d.detach(), conics.detach(), opacities.detach(), features.detach(), radii, offsets, ids, spatial,
            tfinal,
            ncontrib, grad_out.contiguous(), grad_alpha.contiguous(), width, height, tile_size,
            torch.get_num_threads())
        return g_m, g_c, g_o, g_f, None, None, None, None, None, None


class _ProjectCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, quats, scales, w2c, cam):
        ext = load_extension()
        means2d, cov2d, depths, valid = ext.project_forward(means.detach(), quats.detach(), scales.detach(), w2c,
                                                            *cam, torch.get_num_threads())
        ctx.save_for_backward(means, quats, scales, w2c, valid)
        ctx.cam = cam
        ctx.mark_non_differentiable(valid)
        return means2d, cov2d, depths, valid

    @staticmethod
    def backward(ctx, v_means2d, v_cov2d, v_depths, _v_valid):
        means, quats, scales, w2c, valid = ctx.saved_tensors
        n = means.shape[0]
        z = lambda t, shape: torch.zeros(shape, dtype=torch.float32) if t is None else t.float()  # noqa: E731
        g_m, g_q, g_s = load_extension().project_backward(
            means.detach(), quats.detach(), scales.detach(), w2c, *ctx.cam, valid, z(v_means2d, (n, 2)),
            z(v_cov2d, (n, 3)), z(v_depths, (n,)), torch.get_num_threads())
        return g_m, g_q, g_s, None, None


def project_cpu(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    world_to_cam: Tensor,  # [4, 4]
    fx: float, fy: float, cx: float, cy: float, width: int, height: int,
    near_plane: float = 0.01, far_plane: float = 1e10,
):
    """Fused C++ port of :func:`gs_dfd.render.projection.project_gaussians` (float32, same outputs).

    One pass per Gaussian forward and backward instead of ~100 small tensor
    operations; the reference stays the definition and the tests compare the two.
    """
    from gs_dfd.render.projection import Projection

    n = means.shape[0]
    assert means.shape == (n, 3) and quats.shape == (n, 4) and scales.shape == (n, 3)
    dt = means.dtype
    cam = (float(fx), float(fy), float(cx), float(cy), int(width), int(height), float(near_plane), float(far_plane))
    means2d, cov2d, depths, valid = _ProjectCPU.apply(means.float(), quats.float(), scales.float(),
                                                      world_to_cam.detach().cpu().double(), cam)
    return Projection(means2d=means2d.to(dt), cov2d=cov2d.to(dt), depths=depths.to(dt), valid=valid)


class _DilateCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cov2d, opacities, sigma2, valid, eps):
        conics, opac, radii = load_extension().dilate_forward(cov2d.detach(), opacities.detach(), sigma2.detach(),
                                                              valid, eps, torch.get_num_threads())
        ctx.save_for_backward(cov2d, opacities, sigma2, valid)
        ctx.eps = eps
        ctx.mark_non_differentiable(radii)
        return conics, opac, radii

    @staticmethod
    def backward(ctx, v_conics, v_opac, _v_radii):
        cov2d, opacities, sigma2, valid = ctx.saved_tensors
        if v_conics is None:
            v_conics = torch.zeros(sigma2.shape + (3,), dtype=torch.float32)
        if v_opac is None:
            v_opac = torch.zeros_like(sigma2)
        g_cov, g_op, g_s2 = load_extension().dilate_backward(cov2d.detach(), opacities.detach(), sigma2.detach(),
                                                             valid, ctx.eps, v_conics.float(), v_opac.float(),
                                                             torch.get_num_threads())
        return g_cov, g_op, g_s2, None, None


def dilate_cpu(
    cov2d: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    sigma_blur: Tensor,  # [F, N]
    valid: Tensor,  # [N] bool
    eps: float,
):
    """Fused C++ port of :func:`gs_dfd.render.defocus.dilate` (float32; ``cov2d`` of the result is None)."""
    from gs_dfd.render.defocus import Dilated

    n = cov2d.shape[0]
    f = sigma_blur.shape[0]
    assert cov2d.shape == (n, 3) and opacities.shape == (n,) and sigma_blur.shape == (f, n)
    dt = cov2d.dtype
    sigma2 = (sigma_blur * sigma_blur).float()
    conics, opac, radii = _DilateCPU.apply(cov2d.float(), opacities.float(), sigma2, valid.contiguous(),
                                           float(eps))
    return Dilated(conics=conics.to(dt), opacities=opac.to(dt), radii=radii)


def prepare_cpu(means2d: Tensor, radii: Tensor, depths: Tensor, width: int, height: int,
                tile_size: int) -> tuple[Tensor, Tensor]:
    """C++ version of ``tile_rects`` plus the depth order (a stable radix sort): (rects [F, N, 4], order [M])."""
    return load_extension().prepare(means2d.detach().float(), radii.detach().float(), depths.detach().float(),
                                    int(width), int(height), int(tile_size), torch.get_num_threads())


def rasterize_cpu(
    means2d: Tensor,  # [N, 2]
    conics: Tensor,  # [F, N, 3]
    opacities: Tensor,  # [F, N]
    features: Tensor,  # [F, N, C]
    radii: Tensor,  # [F, N, 2] footprint half-extents (px), no gradient
    rects: Tensor,  # [F, N, 4] int32
    order: Tensor,  # [M] long
    width: int, height: int, tile_size: int = 16,
) -> tuple[Tensor, Tensor]:
    """Same contract as :func:`gs_dfd.render.raster_torch.rasterize_torch`; computes in float32."""
    f, n = opacities.shape
    assert means2d.shape == (n, 2), means2d.shape
    assert conics.shape == (f, n, 3), conics.shape
    assert features.dim() == 3 and features.shape[:2] == (f, n), features.shape
    assert rects.shape == (f, n, 4) and rects.dtype == torch.int32, (rects.shape, rects.dtype)
    dt = means2d.dtype
    out, alpha = _RasterizeCPU.apply(means2d.float(), conics.float(), opacities.float(), features.float(),
                                     radii.detach().float().contiguous(), rects.contiguous(), order.long().contiguous(), int(width), int(height),
                                     int(tile_size))
    return out.to(dt), alpha.to(dt)
