"""LARS: layer-wise adaptive rate scaling (You, Gitman & Ginsburg 2017), as SimCLR uses it for large batches.

Each parameter's update is SGD with momentum on ``g + wd * w``, scaled by the trust ratio
``eta * ||w|| / ||g + wd * w||``; parameter groups with ``lars_exclude=True`` (biases and normalisation
parameters, as in Chen et al. 2020) take plain SGD-with-momentum steps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch


class LARS(torch.optim.Optimizer):
    """LARS over parameter groups.

    Args:
        params: parameters or groups; a group may set ``weight_decay`` and ``lars_exclude``.
        lr: base learning rate.
        momentum: heavy-ball momentum.
        weight_decay: l2 coefficient added to the gradient.
        eta: trust coefficient.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.001,
    ) -> None:
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta, "lars_exclude": False}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for parameter in group["params"]:
                if parameter.grad is None:
                    continue
                update = parameter.grad.add(parameter, alpha=group["weight_decay"])
                if not group["lars_exclude"]:
                    weight_norm, update_norm = parameter.norm(), update.norm()
                    trust = torch.where(
                        (weight_norm > 0) & (update_norm > 0),
                        group["eta"] * weight_norm / update_norm,
                        torch.ones_like(weight_norm),
                    )
                    update = update.mul(trust)
                state = self.state[parameter]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = update.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(update)
                parameter.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss
