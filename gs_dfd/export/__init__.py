"""Exports for inspection: Gaussian PLY (INRIA 3DGS layout)."""
