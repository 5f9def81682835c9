"""Pictures: the one colour-map helper and figure panels."""

from gs_dfd.viz.colormap import colorize, coc_to_rgb, depth_to_rgb

__all__ = ["colorize", "coc_to_rgb", "depth_to_rgb"]
