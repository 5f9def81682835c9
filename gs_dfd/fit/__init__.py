"""Per-scene fitting: the classical focus-measure baseline (and, later, 3D Gaussians)."""
