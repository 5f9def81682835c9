"""One Adam step on some rows of a parameter, the rest (values and moments) left as they are.

A windowed fit step sees a few thousand of a megapixel stack's Gaussians. Stepping every row with ``optimizer.step()``
and restoring the unseen ones costs time in proportion to the whole model (and plain Adam would otherwise move an
unseen Gaussian on its momentum). This applies torch's own update (``torch.optim.Adam``, single-tensor CPU path:
the same operations in the same order) to the gathered rows only, and keeps the optimizer's state in torch's layout,
so checkpoints and ``optimizer.step()`` on the other parameters work unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _group_of(optimizer: torch.optim.Optimizer, param: Tensor) -> dict:
    for group in optimizer.param_groups:
        if any(p is param for p in group["params"]):
            return group
    raise KeyError("parameter is not in the optimizer")


@torch.no_grad()
def adam_step_rows(optimizer: torch.optim.Adam, param: Tensor, rows: Tensor, grad_rows: Tensor) -> None:
    """Update ``param[rows]`` (``rows`` [K] unique int64) by Adam with ``grad_rows`` [K, ...], as ``optimizer.step()``
    would with a gradient that is ``grad_rows`` on those rows and zero elsewhere, except that the other rows and their
    moments do not move. The parameter's step count advances by one (bias correction is per parameter, as in torch).
    """
    group = _group_of(optimizer, param)
    assert not group.get("amsgrad") and not group.get("weight_decay") and not group.get("maximize"), \
        "adam_step_rows implements plain Adam only"
    assert rows.dim() == 1 and grad_rows.shape == (rows.shape[0], *param.shape[1:]), (rows.shape, grad_rows.shape)
    state = optimizer.state[param]
    if not state:  # as torch.optim.Adam._init_group (CPU, not capturable, not fused)
        state["step"] = torch.tensor(0.0, dtype=torch.get_default_dtype())
        state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
    beta1, beta2 = group["betas"]
    state["step"] += 1
    step = float(state["step"])
    exp_avg = state["exp_avg"][rows]
    exp_avg_sq = state["exp_avg_sq"][rows]
    exp_avg.lerp_(grad_rows, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad_rows, grad_rows, value=1 - beta2)
    step_size = group["lr"] / (1 - beta1**step)
    denom = (exp_avg_sq.sqrt() / (1 - beta2**step) ** 0.5).add_(group["eps"])
    state["exp_avg"][rows] = exp_avg
    state["exp_avg_sq"][rows] = exp_avg_sq
    param[rows] = param[rows].addcdiv_(exp_avg, denom, value=-step_size)
