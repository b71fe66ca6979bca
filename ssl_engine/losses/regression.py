"""Regression losses over same-shape prediction and target tensors."""

from __future__ import annotations

from functools import partial

import torch
from torch.nn import functional as F


def mean_squared_error() -> partial[torch.Tensor]:
    """l2: mean squared error."""
    return partial(F.mse_loss)


def mean_absolute_error() -> partial[torch.Tensor]:
    """l1: mean absolute error."""
    return partial(F.l1_loss)
