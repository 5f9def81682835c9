"""gs_dfd: depth from defocus with defocus-aware 3D Gaussian splatting."""
__version__ = "0.1.0"
