"""The fused C++ SSIM loss against its pure-PyTorch twin ``ssim_torch`` (values, gradients, fallback)."""

from __future__ import annotations

import math

import pytest
import torch

import conftest
from gs_dfd.fit import losses, ssim_cpu as ssim_cpu_mod
from gs_dfd.fit.losses import photometric_loss, ssim_torch
from gs_dfd.fit.ssim_cpu import ssim_cpu

_BUILD: dict = {}  # "exc": the first build attempt's exception (None = built), one attempt per session


def _require_ext():
    """The built extension, or a failed/skipped test by conftest's rule (fail where a compiler exists)."""
    if "exc" not in _BUILD:
        try:
            ssim_cpu_mod.load_extension()
            _BUILD["exc"] = None
        except Exception as exc:  # compiler error, missing headers, ...
            _BUILD["exc"] = exc
    conftest.require_cpp_build(_BUILD["exc"])
    return ssim_cpu_mod.load_extension()


@pytest.fixture(scope="module")
def ext():
    return _require_ext()


def test_ssim_extension_builds_when_a_compiler_exists():
    """Red with the compiler's message when csrc/ssim_cpu.cpp or the toolchain is broken; skipped only without a
    compiler (or with GS_DFD_ALLOW_NO_CPP=1)."""
    assert _require_ext() is not None


def _random(shape, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g)
    y = (x + 0.1 * torch.randn(shape, generator=g)).clamp(0, 1)
    return x, y


def _realistic(shape, seed):
    """Smooth shading, straight and curved edges, flat (saturated) areas and a little noise; the prediction is a
    shifted, slightly perturbed copy of the target, as a fit's render is."""
    b, h, w, c = shape
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h + 2), torch.linspace(0, 1, w + 2), indexing="ij")
    frames = []
    for _ in range(b):
        chans = []
        for _ in range(c):
            ph = torch.rand(4, generator=g) * 2 * math.pi
            f = 1 + 3 * torch.rand(2, generator=g)
            img = 0.5 + 0.3 * torch.sin(2 * math.pi * f[0] * xx + ph[0]) * torch.cos(2 * math.pi * f[1] * yy + ph[1])
            img = img + 0.35 * (xx > 0.3 + 0.4 * yy).float()  # a straight edge
            img = img - 0.3 * (((xx - 0.6) ** 2 + (yy - 0.4) ** 2) < 0.05).float()  # a disc
            chans.append(img.clamp(0, 1))  # clamping leaves flat areas at exactly 1
        frames.append(torch.stack(chans, -1))
    full = torch.stack(frames)  # [B, H + 2, W + 2, C]
    target = full[:, 1:-1, 1:-1]
    pred = full[:, 2:, 1:-1] + 0.02 * torch.randn(shape, generator=g)  # one row shifted, noisy
    return pred.clamp(0, 1).contiguous(), target.contiguous()


SHAPES = [(1, 11, 11, 3), (2, 12, 40, 3), (1, 40, 12, 3), (3, 64, 48, 1), (4, 37, 53, 2), (5, 96, 80, 3)]
KINDS = {"random": _random, "realistic": _realistic}


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_value_matches_the_torch_twin(ext, kind, shape):
    x, y = KINDS[kind](shape, seed=sum(shape))
    got = ssim_cpu(x, y)
    assert got.dtype == torch.float32 and got.shape == ()
    assert float(got) == pytest.approx(float(ssim_torch(x, y)), rel=1e-5, abs=1e-7)
    assert float(got) == pytest.approx(float(ssim_torch(x.double(), y.double())), rel=1e-5, abs=1e-7)
    with torch.no_grad():  # without a gradient no partials are saved: same value
        assert float(ssim_cpu(x, y)) == float(got)


def _grad(fn, x, y):
    p = x.detach().clone().requires_grad_(True)
    fn(p, y).backward()
    return p.grad


# Gradient tolerance, relative to the largest gradient: float32 statistics (and float32 window weights, whose sum
# is not exactly 1) leave E[x^2] - mu^2 uncertain by ~ulp(1) where the image is flat and bright, which is
# ~1e-4 of c2 = 9e-4; the float32 twin errs by as much there.
GRAD_ATOL = 5e-4


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gradient_matches_the_torch_twin(ext, kind, shape):
    """Against autograd through the twin in float64 (exact up to float64 rounding) and in float32. The kernel is
    float32: it must be about as close to the exact gradient as the float32 twin is, and within GRAD_ATOL."""
    x, y = KINDS[kind](shape, seed=sum(shape) + 1)
    got = _grad(ssim_cpu, x, y)
    assert got.shape == x.shape and got.dtype == torch.float32
    exact = _grad(ssim_torch, x.double(), y.double())
    twin32 = _grad(ssim_torch, x, y)
    scale = float(exact.abs().max())
    assert scale > 0
    err = float((got.double() - exact).abs().max())
    err_twin = float((twin32.double() - exact).abs().max())
    assert err <= 4 * err_twin + 1e-6 * scale, (err / scale, err_twin / scale)
    assert torch.allclose(got.double(), exact, rtol=1e-4, atol=GRAD_ATOL * scale), err / scale
    assert torch.allclose(got, twin32, rtol=1e-4, atol=GRAD_ATOL * scale)


def test_scaled_and_non_contiguous_inputs(ext):
    """A slice (as the fit's target windows are) and a float64 prediction: computed in float32, returned and
    differentiated in the input's dtype; an upstream gradient other than 1 scales the result."""
    x, y = _realistic((2, 40, 50, 3), seed=5)
    xs, ys = x[:, 3:33, 5:45], y[:, 3:33, 5:45]
    assert not xs.is_contiguous()
    assert float(ssim_cpu(xs, ys)) == pytest.approx(float(ssim_torch(xs, ys)), rel=1e-5)
    p = x.double().requires_grad_(True)
    v = ssim_cpu(p, y.double())
    assert v.dtype == torch.float64
    (-3.0 * v).backward()
    exact = _grad(ssim_torch, x.double(), y.double())
    assert torch.allclose(p.grad, -3.0 * exact, rtol=1e-4, atol=GRAD_ATOL * float(exact.abs().max()))


def test_result_does_not_depend_on_the_thread_count(ext):
    x, y = _random((3, 70, 60, 3), seed=9)
    before = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append((ssim_cpu(x, y), _grad(ssim_cpu, x, y)))
    finally:
        torch.set_num_threads(before)
    for v, g in results[1:]:
        assert torch.equal(v, results[0][0]) and torch.equal(g, results[0][1])


def test_target_gradient_is_refused_not_dropped(ext):
    """The kernel differentiates pred only: ssim_cpu refuses a target that needs a gradient, and the loss routes
    such a call to the twin, so no gradient is silently lost."""
    x, y = _random((1, 20, 20, 3), seed=2)
    t = y.clone().requires_grad_(True)
    with pytest.raises(ValueError, match="target"):
        ssim_cpu(x, t)
    photometric_loss(x, t, 0.5).backward()
    assert t.grad is not None and t.grad.abs().sum() > 0


def test_too_small_images_are_refused(ext):
    x, y = _random((1, 10, 30, 3), seed=3)
    with pytest.raises(AssertionError, match="11x11"):
        ssim_cpu(x, y)


def test_photometric_loss_backends(ext, monkeypatch):
    """auto = the kernel for float32 CPU images (same value and gradient as the twin); "torch" never calls it;
    other dtypes go to the twin; the three positional arguments of existing callers still work."""
    x, y = _realistic((2, 30, 34, 3), seed=4)
    auto = photometric_loss(x, y, 0.3)
    twin = photometric_loss(x, y, 0.3, backend="torch")
    assert float(auto) == pytest.approx(float(twin), rel=1e-5)
    g_auto = _grad(lambda p, t: photometric_loss(p, t, 0.3), x, y)
    g_twin = _grad(lambda p, t: photometric_loss(p, t, 0.3, backend="torch"), x, y)
    assert torch.allclose(g_auto, g_twin, rtol=1e-4, atol=GRAD_ATOL * float(g_twin.abs().max()))

    def forbidden(*args, **kw):
        raise AssertionError("the C++ SSIM was called")

    monkeypatch.setattr(ssim_cpu_mod, "ssim_cpu", forbidden)
    photometric_loss(x, y, 0.3, backend="torch")
    photometric_loss(x.double(), y.double(), 0.3)
    photometric_loss(x, y, 0.0)
    with pytest.raises(AssertionError, match="C\\+\\+ SSIM"):
        photometric_loss(x, y, 0.3)
    with pytest.raises(AssertionError, match="backend"):
        photometric_loss(x, y, 0.3, backend="gsplat")


def test_falls_back_to_the_twin_with_one_warning_when_the_build_fails(monkeypatch, capsys):
    """No extension (compiler missing, broken csrc/): ssim_cpu and the loss still work, through ssim_torch, and
    say why once per process."""
    def broken(verbose=False):
        raise RuntimeError("Error building extension 'gs_dfd_ssim_cpu': [1/2] c++ -c ssim_cpu.cpp\n"
                           "ssim_cpu.cpp:3:1: error: expected ';' before '}' token\nninja: build stopped")

    monkeypatch.setattr(ssim_cpu_mod, "load_extension", broken)
    monkeypatch.setattr(ssim_cpu_mod, "_EXT", None)
    monkeypatch.setattr(ssim_cpu_mod, "_FAILED", None)
    x, y = _random((2, 16, 20, 3), seed=6)
    assert torch.equal(ssim_cpu(x, y), ssim_torch(x, y))
    assert torch.equal(photometric_loss(x, y, 0.2), photometric_loss(x, y, 0.2, backend="torch"))
    assert torch.equal(losses.ssim(x, y, "cpu"), ssim_torch(x, y))
    g = _grad(ssim_cpu, x, y)
    assert torch.equal(g, _grad(ssim_torch, x, y))
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "C++ SSIM could not be built" in err
    assert "expected ';' before '}' token" in err
