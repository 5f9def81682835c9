"""Inference: one defocused image and its lens -> CoC map -> depth."""
