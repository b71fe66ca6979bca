"""A two-layer MLP classifier head (as in RotNet's non-linear classifiers, Gidaris et al. 2018)."""

from __future__ import annotations

from torch import nn


def mlp_head(in_features: int, out_features: int, hidden: int = 512) -> nn.Module:
    """``(N, in_features)`` -> Linear-BN-ReLU-Linear -> ``(N, out_features)``."""
    return nn.Sequential(
        nn.Linear(in_features, hidden),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, out_features),
    )
