"""The networks' input features and options (shapes, blur and contrast behaviour, checkpoint round trip)."""

from __future__ import annotations

import pytest
import torch

from gs_dfd.models.defocus_net import REBLUR_SIGMAS_PX, DefocusNet, DefocusNetConfig, _gaussian_blurs, reblur_features
from gs_dfd.models.depth_net import DepthNetConfig
from gs_dfd.train.checkpoint import SiameseDepthModel, build_model


def _edge_image(sigma_px: float, contrast: float = 0.8) -> torch.Tensor:
    """A vertical step edge ``[1, 3, 64, 64]`` blurred by a Gaussian of ``sigma_px``."""
    g = torch.full((1, 1, 64, 64), 0.1)
    g[..., 32:] += contrast
    if sigma_px > 0:
        g = _gaussian_blurs(g, (sigma_px,))
    return g.expand(1, 3, 64, 64).contiguous()


def test_reblur_ratio_falls_with_blur_and_follows_the_edge_model():
    """At an edge blurred by sigma, re-blurring by sigma0 keeps a fraction sigma / sqrt(sigma^2 + sigma0^2) of
    the gradient (Zhuo & Sim 2011): the log energy ratio must fall as the edge gets blurrier."""
    at_edge = (slice(None), slice(None), 32, 32)
    ratios = [reblur_features(_edge_image(s))[at_edge].squeeze(0) for s in (1.0, 2.0, 4.0)]
    for sharper, blurrier in zip(ratios, ratios[1:]):
        assert (sharper > blurrier).all(), (sharper, blurrier)
    # Channel i (window 11 px) is 0.5 * log(pooled energy ratio); for a pooled Gaussian edge the ratio of summed
    # squared gradients is sqrt((s^2 + s0^2) / s^2) (energy integrals scale as 1 / sigma).
    s = 2.0
    expected = torch.tensor([0.5 * 0.5 * torch.log(torch.tensor((s * s + s0 * s0) / (s * s))).item()
                             for s0 in REBLUR_SIGMAS_PX])
    assert torch.allclose(ratios[1][:3], expected, atol=0.05), (ratios[1][:3], expected)


def test_reblur_features_ignore_contrast():
    low, high = reblur_features(_edge_image(2.0, 0.2)), reblur_features(_edge_image(2.0, 0.8))
    assert low.shape == (1, 6, 64, 64)
    assert torch.allclose(low[..., 28:36, 28:36], high[..., 28:36, 28:36], atol=2e-3)
    assert not torch.allclose(low, reblur_features(_edge_image(4.0, 0.2)), atol=0.05)


def test_a_larger_reblur_sigma_separates_large_blurs_better():
    """The slope of the log ratio in log sigma is -sigma0^2 / (sigma^2 + sigma0^2): at sigma 2.5 vs 3 px (CoC
    about 9 vs 11 px) an 8 px re-blur must tell the two edges apart by more than a 2 px one does."""
    at_edge = (0, slice(None), 32, 32)
    sigmas = (2.0, 8.0)
    a, b = (reblur_features(_edge_image(s), sigmas)[at_edge] for s in (2.5, 3.0))
    assert a.shape == (4,)
    gap = (a - b)[:2]  # the 11 px window's channels, one per re-blur sigma
    assert gap[1] > 1.5 * gap[0] > 0, gap


def test_reblur_sigmas_set_the_input_channels_and_round_trip():
    torch.manual_seed(0)
    cfg = DefocusNetConfig(defocus_widths=(4, 8, 8), reblur_features=True, reblur_sigmas_px=(1.0, 2.0, 4.0, 8.0))
    model = SiameseDepthModel(cfg, DepthNetConfig(depth_widths=(4, 8, 8)))
    image, lenses = torch.rand(1, 3, 48, 64), torch.tensor([[0.05, 8.0, 24e-6, 1.0]])
    config = model.model_config()
    config["defocus_net"]["reblur_sigmas_px"] = list(config["defocus_net"]["reblur_sigmas_px"])  # as from JSON
    rebuilt = build_model(config)
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.model_config() == model.model_config()
    assert torch.equal(rebuilt(image, lenses)["coc"], model(image, lenses)["coc"])
    with pytest.raises(RuntimeError):  # the default three sigmas cannot take these weights
        build_model({"defocus_net": {"defocus_widths": [4, 8, 8], "reblur_features": True},
                     "depth_net": {"depth_widths": [4, 8, 8]}}).load_state_dict(model.state_dict())


def test_lens_input_makes_the_coc_depend_on_the_lens_and_round_trips():
    torch.manual_seed(0)
    cfg = DefocusNetConfig(defocus_widths=(4, 8, 8), reblur_features=True, lens_input=True)
    model = SiameseDepthModel(cfg, DepthNetConfig(depth_widths=(4, 8, 8)))
    image = torch.rand(2, 3, 48, 64)
    near = torch.tensor([[0.05, 8.0, 24e-6, 1.0]] * 2)
    far = near.clone()
    far[:, 3] = 4.0
    coc_near, coc_far = model(image, near)["coc"], model(image, far)["coc"]
    assert coc_near.shape == (2, 1, 48, 64)
    assert not torch.allclose(coc_near, coc_far)
    rebuilt = build_model(model.model_config())
    rebuilt.load_state_dict(model.state_dict())
    assert torch.equal(rebuilt(image, near)["coc"], coc_near)


def test_lens_input_without_lenses_is_refused():
    net = DefocusNet(DefocusNetConfig(defocus_widths=(4, 8), lens_input=True))
    with pytest.raises(AssertionError, match="lenses"):
        net(torch.rand(1, 3, 32, 32))


def test_global_context_starts_as_identity_and_round_trips():
    """Off, the network is unchanged (older checkpoints load); on, a fresh network computes the same CoC as
    without it (the context starts at zero), its trained weights change the CoC, and the option survives a
    checkpoint round trip."""
    torch.manual_seed(0)
    widths = (4, 8, 8)
    plain = DefocusNet(DefocusNetConfig(defocus_widths=widths))
    ctx = DefocusNet(DefocusNetConfig(defocus_widths=widths, defocus_global_context=True))
    assert set(plain.state_dict()) < set(ctx.state_dict())
    ctx.load_state_dict({**ctx.state_dict(), **plain.state_dict()})
    image = torch.rand(2, 3, 48, 64)
    assert torch.allclose(ctx(image), plain(image))
    torch.nn.init.normal_(ctx.unet.context.mlp[-1].weight)
    assert not torch.allclose(ctx(image), plain(image))
    tiny = DefocusNet(DefocusNetConfig(defocus_widths=(4, 8, 8, 8, 12), defocus_global_context=True))
    torch.nn.init.normal_(tiny.unet.context.mlp[-1].weight)
    assert torch.isfinite(tiny(torch.rand(1, 3, 16, 16))).all()  # a 1x1 bottleneck
    model = SiameseDepthModel(ctx.cfg, DepthNetConfig(depth_widths=(4, 8, 8), depth_global_context=True))
    rebuilt = build_model(model.model_config())
    assert rebuilt.defocus.cfg.defocus_global_context and rebuilt.depth.cfg.depth_global_context
    rebuilt.load_state_dict(model.state_dict())
