"""The order of the samples in each epoch: a function of (seed, epoch) only."""

from __future__ import annotations

import torch

from ssl_engine.randomness import mix_seed


def epoch_order(count: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of ``range(count)`` used in ``epoch``, the same on every process and every resume."""
    return torch.randperm(count, generator=torch.Generator().manual_seed(mix_seed(seed, "data-order", epoch)))
