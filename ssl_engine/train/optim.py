"""Optimisers by name, with the usual defaults for self-supervised pretraining."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ssl_engine.config import OPTIMIZER_NAMES
from ssl_engine.train.lars import LARS

OPTIMIZERS = OPTIMIZER_NAMES
# The trust ratio of LARS makes its step independent of the gradient scale, hence the large base rate (SimCLR).
DEFAULT_LR = {"sgd": 0.05, "adamw": 1e-3, "lars": 1.0}


def spared_weight_decay(parameter: nn.Parameter) -> bool:
    """Whether ``parameter`` is a bias or a normalisation parameter (at most one dimension), which the recipes
    here leave out of weight decay (SimCLR/MoCo practice, and MAE's)."""
    return parameter.ndim <= 1


def parameter_groups(modules: Iterable[nn.Module], weight_decay: float) -> list[dict[str, object]]:
    """Two groups: weights decayed, biases and normalisation parameters not (as in SimCLR/MoCo practice)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for module in modules:
        for parameter in module.parameters():
            if parameter.requires_grad:
                (no_decay if spared_weight_decay(parameter) else decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True},
    ]


def make_optimizer(name: str, modules: Iterable[nn.Module], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """``sgd`` (momentum 0.9, Nesterov), ``adamw`` or ``lars`` over ``modules``."""
    groups = parameter_groups(modules, weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=0.9)
    raise ValueError(f"unknown optimizer {name!r}; available: {', '.join(OPTIMIZERS)}")
