"""Per-scene fitting of a focal (or aperture) stack.

:mod:`pipeline` is one fit end to end (:func:`~gs_dfd.fit.pipeline.fit_scene`: settings checked, output folder,
method, outputs, metrics), what ``gs-dfd fit`` and the training cache both run. Below it, one job each:
:mod:`gaussian_fit` (the optimisation and its :class:`~gs_dfd.fit.gaussian_fit.GaussianFitSettings`),
:mod:`model` (Gaussians in screen space), :mod:`losses`, :mod:`dff` (depth from focus, the floor and the
start), :mod:`alignment` and :mod:`exposure` (per-shot corrections), :mod:`lens_calibration`,
:mod:`propagation` (depth into textureless regions).
"""
