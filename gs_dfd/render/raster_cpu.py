"""C++/OpenMP CPU rasteriser (forward + analytic backward) behind a torch.autograd.Function.

Compiled on first use with ``torch.utils.cpp_extension.load`` and cached in
torch's extension directory (``TORCH_EXTENSIONS_DIR``, default
``~/.cache/torch_extensions``). The thread count follows ``torch.get_num_threads()``.
The algorithm is gsplat's CUDA rasteriser (Ye et al. 2024) run per (frame,
tile) on CPU threads; see ``csrc/raster_cpu.cpp``.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import torch
from torch import Tensor

_EXT: Any = None
_LOCK = threading.Lock()
_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "raster_cpu.cpp")
# -ffp-contract=off keeps a*b+c unfused so the C++ arithmetic matches the torch reference bit for bit
# in the skip / early-stop tests; no -ffast-math (it would reorder the compositing sums).
CFLAGS = ["-O3", "-fopenmp", "-ffp-contract=off"]


def load_extension(verbose: bool = False) -> Any:
    """Build (once) and import the extension; raises if the toolchain is missing."""
    global _EXT
    if _EXT is None:
        with _LOCK:
            if _EXT is None:
                from torch.utils.cpp_extension import load
                _EXT = load(name="gs_dfd_raster_cpu_v1", sources=[_SRC], extra_cflags=CFLAGS,
                            extra_ldflags=["-fopenmp"], verbose=verbose)
    return _EXT


class _RasterizeCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, opacities, features, rects, order, width, height, tile_size):
        ext = load_extension()
        nthreads = torch.get_num_threads()
        out, tfinal, ncontrib, offsets, ids = ext.forward(
            means2d.detach().contiguous(), conics.detach().contiguous(), opacities.detach().contiguous(),
            features.detach().contiguous(), rects, order, width, height, tile_size, nthreads)
        ctx.save_for_backward(means2d, conics, opacities, features, offsets, ids, tfinal, ncontrib)
        ctx.geom = (width, height, tile_size)
        alpha = (1.0 - tfinal)[..., None]
        ctx.mark_non_differentiable(ncontrib)
        return out, alpha

    @staticmethod
    def backward(ctx, grad_out, grad_alpha):
        means2d, conics, opacities, features, offsets, ids, tfinal, ncontrib = ctx.saved_tensors
        width, height, tile_size = ctx.geom
        if grad_out is None:
            grad_out = torch.zeros(tfinal.shape + (features.shape[-1],), dtype=torch.float32)
        if grad_alpha is None:
            grad_alpha = torch.zeros_like(tfinal)
        else:
            grad_alpha = grad_alpha[..., 0]
        g_m, g_c, g_o, g_f = load_extension().backward(
            means2d.detach(), conics.detach(), opacities.detach(), features.detach(), offsets, ids, tfinal,
            ncontrib, grad_out.contiguous(), grad_alpha.contiguous(), width, height, tile_size,
            torch.get_num_threads())
        return g_m, g_c, g_o, g_f, None, None, None, None, None


def rasterize_cpu(
    means2d: Tensor,  # [N, 2]
    conics: Tensor,  # [F, N, 3]
    opacities: Tensor,  # [F, N]
    features: Tensor,  # [F, N, C]
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
                                     rects.contiguous(), order.long().contiguous(), int(width), int(height),
                                     int(tile_size))
    return out.to(dt), alpha.to(dt)
