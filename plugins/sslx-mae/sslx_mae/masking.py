"""Random patch masking (He et al. 2022, Sec. 3): a uniformly random subset of the patches stays visible."""

from __future__ import annotations

import torch

from ssl_engine import api


def visible_count(tokens: int, ratio: float) -> int:
    """Patches kept visible out of ``tokens`` at a mask ratio: ``round(tokens * (1 - ratio))``, at least one
    visible and at least one masked."""
    return min(tokens - 1, max(1, round(tokens * (1.0 - ratio))))


def random_masking(
    random: api.BatchRandom, tokens: int, ratio: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which patches each image keeps, drawn on the device from the batch's randomness.

    As in the paper's code, every image ranks its patches by uniform noise and keeps the lowest ranked; the
    noise comes from ``random`` (a :class:`~ssl_engine.api.BatchRandom`), so the masks depend only on the seed, the
    step and the image's place in the global batch.

    Args:
        random: the batch's randomness (``B`` images on this process).
        tokens: patches per image ``N``.
        ratio: share of the patches masked, in (0, 1).

    Returns:
        ``keep`` ``(B, K)`` int64, the visible patches' indices in increasing order; ``hidden`` ``(B, M)`` int64,
        the masked ones' (``K + M = N``, the same for every image); ``mask`` ``(B, N)`` bool, True on the masked.
    """
    noise = random.rand(tokens)  # (B, N)
    ranked = noise.argsort(dim=1)
    visible = visible_count(tokens, ratio)
    keep = ranked[:, :visible].sort(dim=1).values  # (B, K)
    hidden = ranked[:, visible:].sort(dim=1).values  # (B, M)
    mask = torch.ones_like(noise, dtype=torch.bool).scatter(1, keep, False)  # (B, N)
    return keep, hidden, mask
