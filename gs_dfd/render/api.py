"""One entry point: render 3D Gaussians through a pinhole camera and a thin lens.

Every Gaussian is blurred by its own circle of confusion (CoC): its 2D
covariance is dilated by the PSF variance and its opacity rescaled so it keeps
its energy (see :mod:`gs_dfd.render.defocus`), then splats are composited front
to back as in 3DGS (Kerbl et al. 2023). Because the depth order does not depend
on the focus distance, a focal stack of F frames is projected and sorted once
and only the dilation and compositing are repeated per frame.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from gs_dfd.optics.thin_lens import DISK_SIGMA_PER_COC, LensBatch, ThinLens
from gs_dfd.render.defocus import EPS2D, blur_sigma, coc_px_per_frame, dilate, tile_rects
from gs_dfd.render.projection import project_gaussians
from gs_dfd.render.raster_torch import rasterize_torch

BACKENDS = ("auto", "torch", "cpu", "gsplat")
TILE_SIZE = 16


@dataclass
class PinholeCamera:
    """Pinhole intrinsics in pixels and an optional world-to-camera pose (OpenCV axes: +z forward)."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    world_to_cam: Tensor | None = None  # [4, 4]; None = identity

    def viewmat(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        if self.world_to_cam is None:
            return torch.eye(4, device=device, dtype=dtype)
        w = torch.as_tensor(self.world_to_cam, device=device, dtype=dtype)
        assert w.shape == (4, 4), w.shape
        return w

    def K(self, device: torch.device, dtype: torch.dtype) -> Tensor:  # [3, 3]
        return torch.tensor([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]],
                            device=device, dtype=dtype)


@dataclass
class RenderOutput:
    """Rendered frames and the per-Gaussian quantities training code needs.

    ``depth`` (and ``coc``) are *expected* values: ``sum_i w_i z_i / alpha``
    (0 where ``alpha`` is 0); ``depth_accum`` is the unnormalised ``sum_i w_i z_i``.
    ``means2d`` is a non-leaf tensor of the graph: call ``means2d.retain_grad()``
    before ``backward()`` to read screen-space gradients (densification).
    """

    rgb: Tensor  # [F, H, W, C]
    alpha: Tensor  # [F, H, W, 1]
    depth: Tensor  # [F, H, W, 1] expected depth (metres)
    depth_accum: Tensor  # [F, H, W, 1]
    coc: Tensor | None  # [F, H, W, 1] expected unsigned CoC (px) when requested
    means2d: Tensor  # [N, 2]
    radii: Tensor  # [F, N, 2] int32 footprint half-extent after dilation (0 = culled)
    depths: Tensor  # [N] camera-space z
    coc_px: Tensor  # [F, N] unsigned CoC of each Gaussian (px)
    backend: str
    info: dict = field(default_factory=dict)

    def strategy_info(self) -> dict:
        """``info`` for gsplat's densification strategies; pass ``packed=True`` to them.

        gsplat's packed layout lists (camera, Gaussian) pairs; here every
        Gaussian is one entry with the sharpest (frame-max) radius, and the
        gradient is that of the shared 2D means, summed over frames.
        """
        n = self.means2d.shape[0]
        h, w = self.rgb.shape[1:3]
        return {
            "means2d": self.means2d,
            "radii": self.radii.max(dim=0).values,
            "gaussian_ids": torch.arange(n, device=self.means2d.device),
            "width": w, "height": h, "n_cameras": 1,
        }


_CPU_FAILED: str | None = None


def _resolve_backend(backend: str, device: torch.device) -> str:
    global _CPU_FAILED
    assert backend in BACKENDS, f"backend must be one of {BACKENDS}, got {backend!r}"
    if backend == "auto":
        if device.type == "cuda":
            try:
                import gsplat  # noqa: F401
                return "gsplat"
            except ImportError:
                return "torch"
        backend = "cpu"
    if backend == "gsplat" and device.type != "cuda":
        raise ValueError("backend 'gsplat' needs CUDA tensors")
    if backend == "cpu":
        if device.type != "cpu":
            raise ValueError("backend 'cpu' needs CPU tensors")
        if _CPU_FAILED is None:
            from gs_dfd.render import raster_cpu
            try:
                raster_cpu.load_extension()
            except Exception as exc:  # compiler missing, headers missing, a broken csrc/ ...
                _CPU_FAILED = raster_cpu.describe_build_error(exc)
                # Once per process, one line on stderr: the fallback keeps working, the user learns why it is slow.
                from gs_dfd.console import console
                console.warn(f"the C++ renderer could not be built ({_CPU_FAILED}); "
                             f"using the slower torch renderer")
        if _CPU_FAILED is not None:
            return "torch"
    return backend


def _lens_batch(lenses: LensBatch | Sequence[ThinLens], device: torch.device, dtype: torch.dtype) -> LensBatch:
    """The frames' lenses as one batch on the render device and dtype (length 0: none given). A ThinLens is valid
    by construction; a LensBatch is checked here (``LensError``), once per render."""
    if isinstance(lenses, LensBatch):
        return lenses.check().to(device, dtype)
    lenses = list(lenses)
    if not lenses:
        empty = torch.zeros(0, device=device, dtype=dtype)
        return LensBatch(empty, empty, empty, empty)
    return LensBatch.from_lenses(lenses, device=device, dtype=dtype)


def render_defocus(
    means: Tensor,  # [N, 3] world, metres
    quats: Tensor,  # [N, 4] wxyz, need not be normalised
    scales: Tensor,  # [N, 3] activated, metres
    opacities: Tensor,  # [N] activated, in [0, 1]
    colors: Tensor,  # [N, C]
    camera: PinholeCamera,
    lenses: LensBatch | Sequence[ThinLens],  # F frames, same pose (empty with coc_px_override)
    coc_px_override: Tensor | None = None,  # [F, N] unsigned CoC diameters (px)
    backend: str = "auto",
    return_coc: bool = False,
    sigma_per_coc: float = DISK_SIGMA_PER_COC,
    background: Tensor | None = None,  # [C]
    near_plane: float = 0.01,
    eps2d: float = EPS2D,
) -> RenderOutput:
    """Render F defocused frames of one scene; differentiable w.r.t. all tensor inputs.

    Backends: ``torch`` (reference), ``cpu`` (C++/OpenMP), ``gsplat`` (CUDA);
    ``auto`` picks ``gsplat`` on CUDA tensors and ``cpu`` otherwise.
    """
    n = means.shape[0]
    assert means.shape == (n, 3), means.shape
    assert quats.shape == (n, 4), quats.shape
    assert scales.shape == (n, 3), scales.shape
    assert opacities.shape == (n,), opacities.shape
    assert colors.dim() == 2 and colors.shape[0] == n, colors.shape
    dev, dt = means.device, means.dtype
    lens_batch = _lens_batch(lenses, dev, dt)
    f = len(lens_batch) if coc_px_override is None else coc_px_override.shape[0]
    assert f >= 1, "need at least one frame"
    if coc_px_override is not None:
        assert coc_px_override.shape == (f, n), coc_px_override.shape
        assert len(lens_batch) in (0, f), (len(lens_batch), f)
    if background is not None:
        assert background.shape == (colors.shape[1],), background.shape
    w, h = int(camera.width), int(camera.height)
    backend = _resolve_backend(backend, dev)

    if backend == "gsplat":
        from gs_dfd.render.raster_gsplat import render_gsplat
        return render_gsplat(means, quats, scales, opacities, colors, camera, lens_batch, coc_px_override,
                             return_coc, sigma_per_coc, background, near_plane, eps2d)

    if backend == "cpu":
        from gs_dfd.render.raster_cpu import project_cpu
        project = project_cpu
    else:
        project = project_gaussians
    proj = project(means, quats, scales, camera.viewmat(dev, dt), camera.fx, camera.fy, camera.cx, camera.cy, w, h,
                   near_plane)
    if coc_px_override is not None:
        coc = coc_px_override.to(dt).abs()
    else:
        coc = coc_px_per_frame(proj.depths, proj.valid, lens_batch)
    if backend == "cpu":
        from gs_dfd.render.raster_cpu import dilate_cpu, prepare_cpu
        dil = dilate_cpu(proj.cov2d, opacities, blur_sigma(coc, sigma_per_coc), proj.valid, eps2d)
        rects, order = prepare_cpu(proj.means2d, dil.radii, proj.depths, w, h, TILE_SIZE)
    else:
        dil = dilate(proj.cov2d, opacities, blur_sigma(coc, sigma_per_coc), proj.valid, eps2d)
        rects = tile_rects(proj.means2d, dil.radii, w, h, TILE_SIZE)
        with torch.no_grad():
            seen = (rects[..., 2] >= rects[..., 0]).any(0)
            ids = torch.nonzero(seen).squeeze(1)
            order = ids[torch.argsort(proj.depths.detach()[ids], stable=True)]
    c = colors.shape[1]
    feats = [colors.to(dt).expand(f, n, c), proj.depths.expand(f, n)[..., None]]
    if return_coc:
        feats.append(coc[..., None])
    features = torch.cat(feats, dim=-1)  # [F, N, C + 1 (+1)]
    if backend == "cpu" and features.shape[-1] > 32:
        warnings.warn("gs_dfd.render: the 'cpu' backend composites at most 32 channels (colours + depth + CoC); "
                      "using the 'torch' backend", RuntimeWarning, stacklevel=2)
        backend = "torch"
    if backend == "cpu":
        from gs_dfd.render.raster_cpu import rasterize_cpu
        feat, alpha = rasterize_cpu(proj.means2d, dil.conics, dil.opacities, features, dil.radii, rects, order, w,
                                    h, TILE_SIZE)
    else:
        feat, alpha = rasterize_torch(proj.means2d, dil.conics, dil.opacities, features, rects, order, w, h,
                                      TILE_SIZE)
    # One split (its backward is a single cat) rather than three slices (three zero-filled images).
    parts = torch.split(feat, [c, 1, 1] if return_coc else [c, 1], dim=-1)
    rgb, depth_accum = parts[0], parts[1]
    if background is not None:
        rgb = rgb + (1.0 - alpha) * background.to(rgb)
    safe_alpha = alpha.clamp_min(1e-10)
    out_coc = parts[2] / safe_alpha if return_coc else None
    radii = torch.ceil(dil.radii).to(torch.int32) * (rects[..., 2:3] >= rects[..., 0:1])
    return RenderOutput(rgb=rgb, alpha=alpha, depth=depth_accum / safe_alpha, depth_accum=depth_accum, coc=out_coc,
                        means2d=proj.means2d, radii=radii, depths=proj.depths, coc_px=coc, backend=backend)
