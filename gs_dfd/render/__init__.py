"""Differentiable defocus-aware 3D Gaussian rendering (torch reference, C++ CPU and gsplat CUDA backends).

Frames' lenses are :class:`gs_dfd.optics.ThinLens` values (or one :class:`gs_dfd.optics.LensBatch`)."""

from gs_dfd.render.api import BACKENDS, PinholeCamera, RenderOutput, render_defocus
from gs_dfd.render.defocus import EPS2D, dilate
from gs_dfd.render.projection import project_gaussians

__all__ = ["BACKENDS", "PinholeCamera", "RenderOutput", "render_defocus", "EPS2D", "dilate", "project_gaussians"]
