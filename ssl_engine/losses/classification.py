"""Classification losses over logits ``(N, K)`` and integer targets ``(N,)``."""

from __future__ import annotations

from functools import partial

import torch
from torch.nn import functional as F


def cross_entropy() -> partial[torch.Tensor]:
    """Plain cross-entropy, mean over the batch."""
    return partial(F.cross_entropy)


def label_smoothing_cross_entropy(smoothing: float = 0.1) -> partial[torch.Tensor]:
    """Cross-entropy against targets smoothed towards uniform (Szegedy et al. 2016)."""
    return partial(F.cross_entropy, label_smoothing=smoothing)
