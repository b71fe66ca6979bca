"""LARS against a plain re-statement of its update rule (You et al. 2017)."""

from __future__ import annotations

import torch

from ssl_engine.train.lars import LARS


def test_lars_steps_match_the_formula_and_exclusion_is_plain_momentum() -> None:
    torch.manual_seed(0)
    weight, bias = torch.randn(5, 4, requires_grad=True), torch.randn(5, requires_grad=True)
    optimizer = LARS(
        [{"params": [weight], "weight_decay": 1e-2}, {"params": [bias], "weight_decay": 0.0, "lars_exclude": True}],
        lr=0.5,
        momentum=0.9,
        eta=0.02,
    )
    w, b = weight.detach().clone(), bias.detach().clone()
    buffer_w, buffer_b = torch.zeros_like(w), torch.zeros_like(b)
    for _ in range(3):
        grad_w, grad_b = torch.randn_like(w), torch.randn_like(b)
        weight.grad, bias.grad = grad_w.clone(), grad_b.clone()
        optimizer.step()
        update = grad_w + 1e-2 * w
        buffer_w = 0.9 * buffer_w + 0.02 * w.norm() / update.norm() * update
        buffer_b = 0.9 * buffer_b + grad_b
        w, b = w - 0.5 * buffer_w, b - 0.5 * buffer_b
        assert torch.allclose(weight, w, atol=1e-6) and torch.allclose(bias, b, atol=1e-6)
