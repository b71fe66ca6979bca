"""A linear classifier head."""

from __future__ import annotations

from torch import nn


def linear_head(in_features: int, out_features: int) -> nn.Module:
    """``(N, in_features)`` -> logits ``(N, out_features)``."""
    return nn.Linear(in_features, out_features)
