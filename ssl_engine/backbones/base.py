"""The backbone interface every task relies on."""

from __future__ import annotations

import torch
from torch import nn


class Backbone(nn.Module):
    """A feature extractor with a known output.

    Subclasses implement :meth:`forward` mapping images ``(N, C, H, W)`` to a spatial map ``(N, D, h, w)``
    where ``D == feature_dim`` and ``h == H // stride`` (rounded up). Heads on pooled features use
    :meth:`pooled`; decoder heads use the spatial map.

    Attributes:
        feature_dim: channels ``D`` of the feature map.
        stride: total downsampling factor from input to feature map.
    """

    feature_dim: int
    stride: int

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled features: ``(N, C, H, W)`` -> ``(N, D)``."""
        return self(images).mean(dim=(2, 3))
