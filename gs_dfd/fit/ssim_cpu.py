"""C++/OpenMP SSIM loss (forward and analytic backward) for the per-scene fit on CPU.

SSIM (Wang et al. 2004) is the structural term of the fit's photometric loss. Written as
tensor operations (:func:`gs_dfd.fit.losses.ssim_torch`) it is a depthwise Gaussian
convolution of five statistics, which is slow on CPU and dominates a fit step; the
arithmetic itself is small. ``csrc/ssim_cpu.cpp`` computes the same quantity in one pass
over the rows, forward and backward (the backward is the transposed blur of three
per-pixel partial derivatives, derived in the C++ file). ``ssim_torch`` stays the
definition; the tests compare the two.

The extension is built on first use by the CPU renderer's builder
(:func:`gs_dfd.render.raster_cpu.build_extension`: same flags, instruction-set choice, ninja and
per-checkout cache name). When it cannot be built, :func:`ssim_cpu` warns once and
falls back to ``ssim_torch``.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from gs_dfd.render.raster_cpu import build_extension, describe_build_error

_EXT: Any = None
_LOCK = threading.Lock()
_FAILED: str | None = None  # describe_build_error of the failed build; None = not tried or built
_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "ssim_cpu.cpp")


def load_extension(verbose: bool = False) -> Any:
    """Build (once) and import the extension; raises if the toolchain is missing."""
    global _EXT
    if _EXT is None:
        with _LOCK:
            if _EXT is None:
                _EXT = build_extension("gs_dfd_ssim_cpu_v1", _SRC, verbose)
    return _EXT


def available() -> bool:
    """Whether the extension is built (building it now if needed); warns once, on stderr, when it cannot be."""
    global _FAILED
    if _EXT is not None:
        return True
    if _FAILED is None:
        try:
            load_extension()
            return True
        except Exception as exc:  # compiler missing, headers missing, a broken csrc/ ...
            _FAILED = describe_build_error(exc)
            from gs_dfd.console import console
            console.warn(f"the C++ SSIM could not be built ({_FAILED}); using the slower torch SSIM")
    return False


def _window() -> Tensor:
    from gs_dfd.fit.losses import _gaussian_kernel
    return _gaussian_kernel(dtype=torch.float32)


class _SSIMCPU(torch.autograd.Function):
    """Mean SSIM; differentiable in ``pred`` only (``target`` is data: its gradient is None)."""

    @staticmethod
    def forward(ctx, pred, target):
        window = _window()
        need_grad = bool(ctx.needs_input_grad[0])
        mean, partials = load_extension().ssim_forward(pred.detach(), target.detach(), window, need_grad,
                                                       torch.get_num_threads())
        if need_grad:
            ctx.save_for_backward(partials, pred, target)
            ctx.window = window
        return mean

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        partials, pred, target = ctx.saved_tensors
        g = load_extension().ssim_backward(grad.detach().float(), partials, pred.detach(), target.detach(),
                                           ctx.window, torch.get_num_threads())
        return g, None


def ssim_cpu(pred: Tensor, target: Tensor) -> Tensor:
    """Mean SSIM of ``[B, H, W, C]`` CPU images, as :func:`gs_dfd.fit.losses.ssim_torch`, computed in float32.

    Differentiable with respect to ``pred`` only; a ``target`` that requires a gradient is refused
    (use ``ssim_torch``). Returns a scalar in ``pred``'s dtype. Falls back to ``ssim_torch`` when the
    extension cannot be built (one warning per process).
    """
    assert pred.shape == target.shape and pred.dim() == 4, (pred.shape, target.shape)
    _, h, w, _ = pred.shape
    assert h >= 11 and w >= 11, f"SSIM needs images of at least 11x11 pixels, got {h}x{w}"
    assert pred.device.type == "cpu" and target.device.type == "cpu", (pred.device, target.device)
    if target.requires_grad and torch.is_grad_enabled():
        raise ValueError("ssim_cpu gives no gradient for target; use ssim_torch when target needs one")
    if not available():
        from gs_dfd.fit.losses import ssim_torch
        return ssim_torch(pred, target)
    dt = pred.dtype
    x, y = pred.float().contiguous(), target.detach().float().contiguous()
    if pred.requires_grad and torch.is_grad_enabled():
        out = _SSIMCPU.apply(x, y)
    else:  # no graph: the partial derivatives are not computed
        out = load_extension().ssim_forward(x.detach(), y, _window(), False, torch.get_num_threads())[0]
    return out.to(dt)
