"""adam_step_rows against its reference: torch's Adam on the whole parameter with the other rows restored."""

import torch

from gs_dfd.fit.row_adam import adam_step_rows


def _reference_step(opt, param, rows, grad_rows):
    keep = torch.ones(param.shape[0], dtype=torch.bool)
    keep[rows] = False
    saved = param.detach()[keep].clone()
    st = opt.state.get(param, {})
    moments = {k: v[keep].clone() for k, v in st.items() if torch.is_tensor(v) and v.shape == param.shape}
    param.grad = torch.zeros_like(param)
    param.grad[rows] = grad_rows
    opt.step()
    with torch.no_grad():
        param[keep] = saved
        for k, v in moments.items():
            opt.state[param][k][keep] = v
    param.grad = None


def test_matches_torch_adam_with_the_other_rows_restored():
    gen = torch.Generator().manual_seed(0)
    init = torch.randn(50, 3, generator=gen)
    a = torch.nn.Parameter(init.clone())
    b = torch.nn.Parameter(init.clone())
    opt_a = torch.optim.Adam([{"params": [a], "lr": 0.05}], eps=1e-15)
    opt_b = torch.optim.Adam([{"params": [b], "lr": 0.05}], eps=1e-15)
    for step in range(6):
        rows = torch.randperm(50, generator=gen)[:10 + 5 * step]
        grad = torch.randn(rows.shape[0], 3, generator=gen)
        adam_step_rows(opt_a, a, rows, grad)
        _reference_step(opt_b, b, rows, grad)
        for group in (opt_a.param_groups[0], opt_b.param_groups[0]):
            group["lr"] *= 0.9  # a schedule, as the fit's
    torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=1e-7)
    for key in ("exp_avg", "exp_avg_sq", "step"):
        torch.testing.assert_close(opt_a.state[a][key], opt_b.state[b][key], rtol=0, atol=1e-9)
    assert not torch.equal(a.detach(), init)


def test_rows_outside_do_not_move_and_state_loads_into_torch_adam():
    p = torch.nn.Parameter(torch.zeros(8, 2))
    opt = torch.optim.Adam([p], lr=0.1)
    adam_step_rows(opt, p, torch.tensor([1, 5]), torch.ones(2, 2))
    moved = (p.detach() != 0).any(dim=1)
    assert moved.tolist() == [False, True, False, False, False, True, False, False]
    assert torch.allclose(p.detach()[[1, 5]], torch.full((2, 2), -0.1))  # Adam's first step is lr * sign(grad)
    # The state is torch's own layout: a plain Adam continues from it.
    other = torch.optim.Adam([torch.nn.Parameter(torch.zeros(8, 2))], lr=0.1)
    other.load_state_dict(opt.state_dict())
    assert float(other.state[other.param_groups[0]["params"][0]]["step"]) == 1.0
