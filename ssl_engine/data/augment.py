"""The base augmentation, on the device, for the whole batch at once: random crop (with padding) and flip."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ssl_engine.randomness import BatchRandom


def random_crop_flip(images: torch.Tensor, random: BatchRandom, padding: int | None = None) -> torch.Tensor:
    """Pad by reflection, crop back to the original size at a random offset, flip half the images horizontally.

    Args:
        images: ``(B, C, S, S)`` float.
        random: per-sample randomness.
        padding: pixels of padding on each side; ``S // 8`` by default (4 px at 32 px, as for CIFAR).

    Returns:
        ``(B, C, S, S)``.
    """
    batch, _, height, width = images.shape
    pad = max(1, height // 8) if padding is None else padding
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    offsets = random.randint(0, 2 * pad + 1, 2)  # (B, 2): y, x
    flips = random.bernoulli(0.5)  # (B,)
    rows = offsets[:, 0:1] + torch.arange(height, device=images.device)  # (B, S)
    columns = torch.arange(width, device=images.device).expand(batch, width)
    columns = torch.where(flips[:, None], columns.flip(1), columns) + offsets[:, 1:2]  # (B, S)
    batch_index = torch.arange(batch, device=images.device)[:, None, None, None]
    channel_index = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return padded[batch_index, channel_index, rows[:, None, :, None], columns[:, None, None, :]]
