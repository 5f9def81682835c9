"""Self-supervised training of DefocusNet + DepthNet on Gaussian-rendered defocus.

Pipeline: scenes -> per-scene Gaussian fit, computed once and cached
(:mod:`fit_cache`) -> random crops of frame pairs (:mod:`data`) -> losses
(:mod:`losses`) -> the loop with DDP, checkpoints and logs (:mod:`loop`).
The supervised baselines (d3net, mddnet) skip the fit and learn from depth_gt;
which method does what is :mod:`gs_dfd.models.registry`'s.
"""
