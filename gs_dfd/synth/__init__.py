"""Synthetic focal stacks: layered disk-PSF defocus and procedural scenes."""

from gs_dfd.synth.layered import add_sensor_noise, disk_psf, render_focal_stack
from gs_dfd.synth.procedural import PROCEDURAL_KINDS, make_procedural_scene

__all__ = [
    "add_sensor_noise", "disk_psf", "render_focal_stack", "PROCEDURAL_KINDS",
    "make_procedural_scene",
]
