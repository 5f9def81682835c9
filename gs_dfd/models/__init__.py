"""Networks: DefocusNet (image -> CoC map) and DepthNet (CoC map + image + lens -> depth), one module as
:class:`gs_dfd.models.siamese.SiameseDepthModel`; the baselines D3Net (image -> depth, MC dropout) and MDDNet
(image -> depth + CoC map). :mod:`gs_dfd.models.registry` names the methods that train and run them;
:mod:`gs_dfd.models.checkpoint_io` reads their files (predict needs nothing from :mod:`gs_dfd.train`)."""
