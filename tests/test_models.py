"""The networks' input features and options (shapes, blur and contrast behaviour, checkpoint round trip)."""

from __future__ import annotations

import pytest
import torch

from gs_dfd.models.defocus_net import REBLUR_SIGMAS_PX, DefocusNet, DefocusNetConfig, _gaussian_blurs, reblur_features
from gs_dfd.models.depth_net import DepthNetConfig
from gs_dfd.models.registry import build_model
from gs_dfd.models.siamese import SiameseDepthModel
from gs_dfd.optics.thin_lens import LensBatch, ThinLens

NYU_LENS_ROWS = LensBatch.from_lenses([ThinLens(0.05, 8.0, 1.0, 24e-6)]).as_rows()  # [1, 4], the networks' lens input


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
    image, lenses = torch.rand(1, 3, 48, 64), NYU_LENS_ROWS
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
    near = LensBatch.from_lenses([ThinLens(0.05, 8.0, 1.0, 24e-6)] * 2).as_rows()
    far = LensBatch.from_lenses([ThinLens(0.05, 8.0, 4.0, 24e-6)] * 2).as_rows()
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


def _defocus_features_reference(image: torch.Tensor) -> torch.Tensor:
    """The focus measures as first written: one box filter per quantity and window, Laplacian by convolution
    (the twin of the batched version in gs_dfd.models.defocus_net)."""
    import torch.nn.functional as F

    from gs_dfd.models.defocus_net import _box, _grad_energy

    g = image.mean(1, keepdim=True)
    lap = F.conv2d(F.pad(g, (1, 1, 1, 1), mode="replicate"),
                   g.new_tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3))
    feats = []
    for k in (5, 11, 21):
        mean = _box(g, k)
        var = (_box(g * g, k) - mean * mean).clamp_min(0.0)
        feats.append(torch.log((_box(lap * lap, k) + 1e-6) / (var + 1e-4)))
        feats.append(torch.log((_box(_grad_energy(g), k) + 1e-6) / (var + 1e-4)))
    return torch.cat(feats, 1) / 4.0


def test_batched_focus_measures_and_standardise_match_their_plain_twins():
    from gs_dfd.models.defocus_net import defocus_features, standardise

    torch.manual_seed(3)
    image = torch.rand(2, 3, 37, 53)
    image[1, :, :, :20] = 0.5  # a flat region: the tiny energies the float64 running sums exist for
    torch.testing.assert_close(defocus_features(image), _defocus_features_reference(image), atol=2e-5, rtol=1e-5)
    want = (image - image.mean(dim=(2, 3), keepdim=True)) / (image.std(dim=(2, 3), keepdim=True) + 0.05)
    torch.testing.assert_close(standardise(image), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["gs-siamese", "d3net"])
def test_channels_last_inference_gives_the_nchw_results(method):
    """Predict runs the U-Nets channels-last (faster on CPU); training runs them NCHW: same weights, same output.
    Odd sizes too, where the decoder pads to its skip connection."""
    import copy

    from gs_dfd.models.unet import UNet, use_channels_last

    torch.manual_seed(4)
    cfg = {"defocus_net": {"defocus_widths": (4, 8, 8), "reblur_features": True, "defocus_global_context": True},
           "depth_net": {"depth_widths": (4, 8, 8), "depth_global_context": True}, "d3net": {"d3net_widths": (4, 8, 8)}}
    model = build_model(cfg, method).eval()
    fast = use_channels_last(copy.deepcopy(model))
    assert all(m.channels_last for m in fast.modules() if isinstance(m, UNet))
    assert not any(m.channels_last for m in model.modules() if isinstance(m, UNet))
    image, lenses = torch.rand(1, 3, 45, 67), NYU_LENS_ROWS
    with torch.no_grad():
        if method == "d3net":
            want, got = model(image)["depth"], fast(image)["depth"]
        else:
            a, b = model(image, lenses), fast(image, lenses)
            torch.testing.assert_close(b["coc"], a["coc"], atol=1e-4, rtol=1e-4)
            want, got = a["depth"], b["depth"]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    if method == "gs-siamese":  # DepthNet's U-Net has two output channels: handed back in NCHW
        assert fast.depth.unet(torch.rand(1, 6, 22, 33)).is_contiguous()


SMALL_SECTIONS = {"defocus_net": {"defocus_widths": [4, 8, 8]}, "depth_net": {"depth_widths": [4, 8, 8]},
                  "d3net": {"d3net_widths": [4, 8, 8]}, "mddnet": {"mddnet_widths": [4, 8, 8]}}


@pytest.mark.parametrize("method", ["gs-siamese", "dered", "d3net", "mddnet"])
def test_each_registered_method_builds_round_trips_and_predicts(method):
    """The registry alone builds a method's network (from a config with its sections, and again from the
    model_config the checkpoint keeps), names a loss in gs_dfd.train, and its head gives predict depth and CoC."""
    import types

    from gs_dfd.models.registry import NETWORK_SECTIONS, get_method, new_model

    spec = get_method(method)
    torch.manual_seed(0)
    cfg = types.SimpleNamespace(method=method, **{name: cls(**{k: tuple(v) for k, v in SMALL_SECTIONS[name].items()})
                                                  for name, cls in NETWORK_SECTIONS.items()})
    model = new_model(cfg).eval()
    assert set(model.model_config()) == set(spec.sections)
    rebuilt = build_model(SMALL_SECTIONS, method).eval()  # lists, as a saved file holds them
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.model_config() == model.model_config()
    loss = spec.loss_fn()
    assert callable(loss) and loss.__module__.startswith("gs_dfd.train.")
    assert spec.supervised != spec.needs_fit
    image, lenses = torch.rand(1, 3, 32, 40), NYU_LENS_ROWS
    with torch.no_grad():
        out = spec.predict(model, image, lenses)
    assert out.depth.shape == out.coc.shape == (1, 1, 32, 40)
    assert (out.gate is not None) == (method in ("gs-siamese", "dered"))
    assert (out.uncertainty is not None) == (out.coc_source != "network") == (method == "d3net")
    assert out.mc_samples == (8 if method == "d3net" else 1)
    assert spec.predict(model, image, lenses, mc_samples=3).mc_samples == (3 if method == "d3net" else 1)


def test_registry_refuses_unknown_and_duplicate_methods():
    from gs_dfd.models.registry import get_method, method_names, register

    assert method_names() == ("gs-siamese", "dered", "d3net", "mddnet")
    assert method_names(supervised=True) == ("d3net", "mddnet")
    with pytest.raises(ValueError, match="unknown method 'nope'.*gs-siamese"):
        get_method("nope")
    with pytest.raises(ValueError, match="registered already"):
        register(get_method("d3net"))


def test_predict_and_the_models_never_import_the_training_code():
    """infer/ and models/ load checkpoints and run every method without gs_dfd.train (the registry names the
    losses as strings)."""
    import subprocess
    import sys

    code = ("import sys, gs_dfd.infer.predictor, gs_dfd.models.registry, gs_dfd.models.checkpoint_io; "
            "print(sorted(m for m in sys.modules if m.startswith('gs_dfd.train')))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stdout + run.stderr
