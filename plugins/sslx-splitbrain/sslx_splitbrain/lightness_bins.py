"""The quantised lightness of split-brain grayscale prediction.

Zhang, Isola & Efros 2017, "Split-Brain Autoencoders: Unsupervised Learning by Cross-Channel Prediction" (CVPR),
Sec. 4.1, ab->L(cl): "The L channel, which has values between 0 and 100, is quantized into 50 bins of size 2",
with a one-hot encoding (the paper's "basic 1-hot encoding scheme").
"""

from __future__ import annotations

import torch

L_BINS = 50
L_BIN_SIZE = 100.0 / L_BINS


def quantize_lightness(lightness: torch.Tensor, bins: int = L_BINS) -> torch.Tensor:
    """The bin of each lightness value: ``floor(L / size)``, L = 100 in the last bin; same shape, int64."""
    size = 100.0 / bins
    return torch.floor(lightness.float() / size).long().clamp(0, bins - 1)


def lightness_centres(bins: int = L_BINS, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(bins, 1)`` float32, the centre of each lightness bin (1, 3, ..., 99 for 50 bins)."""
    size = 100.0 / bins
    return ((torch.arange(bins, device=device, dtype=torch.float32) + 0.5) * size)[:, None]
