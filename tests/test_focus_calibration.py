"""The learnable focus sweep of LensModel: exact start, monotone by construction, recovers an uneven sweep."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gs_dfd.fit.lens_calibration import LensModel
from gs_dfd.optics import ThinLens

F, N, P = 0.05, 2.8, 10e-6  # 50 mm, f/2.8, 10 um pixels
NEAR, FAR = 0.5, 3.0


def sweep(distances_m) -> list[ThinLens]:
    return [ThinLens(F, N, float(s), P) for s in distances_m]


def even_in_inverse(n: int) -> np.ndarray:  # [n], nearest first: what `gs-dfd import --focus-range-m` assigns
    return 1.0 / np.linspace(1.0 / NEAR, 1.0 / FAR, n)


def depths(n: int = 2000, seed: int = 0) -> torch.Tensor:  # [n]
    g = torch.Generator().manual_seed(seed)
    return 0.4 + 3.6 * torch.rand(n, generator=g)


def test_initialisation_renders_exactly_as_nominal():
    lenses = sweep(even_in_inverse(8))
    d = depths()
    ids = list(range(8))
    for calibrate in (False, True):
        model = LensModel(lenses, calibrate, calibrate_sweep=True)
        assert model.sweep_calibrated and model.sweep_logits.shape == (7,)
        ref = LensModel(lenses).coc_px(d, ids)  # [8, N]
        torch.testing.assert_close(model.coc_px(d, ids), ref, atol=1e-6, rtol=0)
        torch.testing.assert_close(model.lens_batch().focus_distance_m, LensModel(lenses).lens_batch().focus_distance_m,
                                   atol=0, rtol=0)


def test_monotone_and_anchored_after_large_parameters():
    nominal = np.array([3.0, 0.5, 1.2, 0.8, 2.0, 0.8, 1.5])  # unsorted; two frames share 0.8 m
    model = LensModel(sweep(nominal), calibrate_sweep=True)
    assert model.sweep_logits.shape == (5,)  # 6 distinct distances, 5 gaps
    order = np.argsort(nominal, kind="stable")
    g = torch.Generator().manual_seed(1)
    for scale in (1.0, 30.0, 1e3):
        with torch.no_grad():
            model.sweep_logits.copy_(scale * torch.randn(5, generator=g))
        s = model.lens_batch().focus_distance_m  # [7]
        assert torch.isfinite(s).all()
        distinct = s[[i for i in order if i != 5]]  # frame 5 duplicates frame 3's 0.8 m
        assert (distinct[1:] > distinct[:-1]).all(), (scale, distinct)
        assert s[5] == s[3]
        assert s[1] == torch.tensor(NEAR, dtype=s.dtype) and s[0] == torch.tensor(FAR, dtype=s.dtype)


def _fit_sweep(model: LensModel, target: torch.Tensor, d: torch.Tensor, steps: int = 400) -> None:
    opt = torch.optim.Adam(model.focus_parameters(), lr=0.05)
    ids = list(range(len(model.lenses)))
    for _ in range(steps):
        opt.zero_grad()
        loss = (model.coc_px(d, ids) - target).abs().mean()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("learn", [True, False])
def test_recovers_uneven_sweep(learn: bool):
    true_s = np.linspace(NEAR, FAR, 8)  # even in distance: far from even in inverse distance
    d = depths()
    ids = list(range(8))
    target = LensModel(sweep(true_s)).coc_px(d, ids).detach()  # [8, N]
    model = LensModel(sweep(even_in_inverse(8)), calibrate_sweep=True)
    if learn:
        _fit_sweep(model, target, d)
    s = model.lens_batch().focus_distance_m.detach().double().numpy()  # [8]
    rel = np.abs(s[1:-1] / true_s[1:-1] - 1)
    assert s[0] == np.float32(NEAR) and s[-1] == np.float32(FAR)
    if learn:
        assert rel.max() < 0.02, rel
    else:
        assert rel.max() > 0.2, rel  # the nominal start is far off: the recovery above is the learning's doing


def test_state_dict_round_trip_and_old_checkpoints():
    lenses = sweep(even_in_inverse(5))
    a = LensModel(lenses, True, calibrate_sweep=True)
    with torch.no_grad():
        a.sweep_logits.copy_(torch.tensor([0.3, -0.2, 0.5, 0.1]))
        a.log_aperture_scale.fill_(0.1)
    b = LensModel(lenses, True, calibrate_sweep=True)
    b.load_state_dict(a.state_dict())
    d = depths(100)
    torch.testing.assert_close(b.coc_px(d, [0, 2, 4]), a.coc_px(d, [0, 2, 4]), atol=0, rtol=0)

    for old_calibrate in (False, True):  # a checkpoint from before the sweep existed
        old = LensModel(lenses, old_calibrate).state_dict()
        assert set(old) == {"log_focus_scale", "log_aperture_scale"}
        for calibrate in (False, True):
            LensModel(lenses, calibrate, calibrate_sweep=False).load_state_dict(old)  # strict


def test_two_focus_distances_have_nothing_to_learn():
    lenses = sweep([0.5, 0.5, 3.0, 3.0])
    model = LensModel(lenses, calibrate_sweep=True)
    assert not model.sweep_calibrated and model.sweep_logits is None
    assert model.focus_parameters() == [] and not any(p.requires_grad for p in model.parameters())
    assert model.report()["sweep_calibrated"] is False
    # With the aperture scale on, focus falls back to the per-frame correction, exactly as without the sweep.
    both = LensModel(lenses, True, calibrate_sweep=True)
    assert both.focus_parameters() == [both.log_focus_scale] and both.aperture_parameters() == [both.log_aperture_scale]


def test_composes_with_aperture_scale():
    model = LensModel(sweep(even_in_inverse(6)), True, calibrate_sweep=True)
    learned = {id(p) for p in model.parameters() if p.requires_grad}
    assert learned == {id(model.sweep_logits), id(model.log_aperture_scale)}
    assert model.focus_parameters() == [model.sweep_logits]
    assert model.aperture_parameters() == [model.log_aperture_scale]
    with torch.no_grad():
        model.log_focus_scale.fill_(0.5)  # not the focus parameterisation in sweep mode: ignored
    torch.testing.assert_close(model.lens_batch().focus_distance_m,
                               torch.tensor(even_in_inverse(6), dtype=torch.float32), atol=0, rtol=0)
    rep = model.report()
    assert rep["sweep_calibrated"] and rep["focus_calibrated"] and rep["calibrated"]
    assert len(rep["frames"]) == 6 and {"focus_distance_m_nominal", "focus_distance_m"} <= set(rep["frames"][0])
