"""Class rebalancing by colour rarity (Zhang, Isola & Efros 2016, "Colorful Image Colorization", Sec. 2.2).

Natural images are dominated by desaturated colours, so a plain cross-entropy learns to paint everything
grayish-brown. The paper weights each pixel's loss by the rarity of its colour's bin ``q`` (its nearest bin):

    w  proportional to  ((1 - lambda) * p_smooth + lambda / Q) ^ -1,    normalised so that  sum_q p_smooth_q w_q = 1

where ``p_smooth`` is the empirical distribution of the bins smoothed by a Gaussian over the ab plane (sigma 5)
and lambda = 1/2 mixes it with the uniform distribution, which bounds the weights.

The paper measured the distribution once over ImageNet. An engine that takes any data set can't do that before
training, so it is estimated online: :class:`ColourPrior` keeps a running histogram of every bin seen (a buffer,
so it is checkpointed and restored with the task's modules), adds each training batch before weighting it, and
sums the histogram over processes, so every process weights alike. The first steps therefore weight by the few
batches seen so far; after a few dozen batches of 64 images the histogram changes little.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from ssl_engine import api


class ColourPrior(nn.Module):
    """Running histogram of the ab bins in the training data, turned into per-bin loss weights.

    Args:
        bins: the ab bins (their centres place the smoothing kernel).
        mix: lambda, the weight of the uniform distribution (the paper: 0.5).
        sigma: width in Lab units of the Gaussian smoothing the histogram (the paper: 5); 0 for none.
    """

    counts: torch.Tensor
    kernel: torch.Tensor

    def __init__(self, bins: api.ABBins, mix: float = 0.5, sigma: float = 5.0) -> None:
        super().__init__()
        self.mix = mix
        self.register_buffer("counts", torch.zeros(bins.classes))  # pixels seen per bin
        centres = bins.centres
        distance = (centres[:, None] - centres[None]).square().sum(dim=-1)  # (Q, Q)
        if sigma > 0:
            kernel = torch.exp(-distance / (2 * sigma**2))
        else:
            kernel = torch.eye(bins.classes)
        # Not state: rebuilt from the bins and sigma, so it stays out of checkpoints.
        self.register_buffer("kernel", kernel, persistent=False)

    @torch.no_grad()
    def update(self, classes: torch.Tensor) -> None:
        """Add the bins of a batch's pixels (any shape of int64 classes), summed over processes."""
        seen = torch.bincount(classes.flatten(), minlength=len(self.counts)).to(self.counts.dtype)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(seen)
        self.counts += seen

    def smoothed(self) -> torch.Tensor:
        """``p_smooth``: the histogram, normalised, convolved with the Gaussian, renormalised; ``(Q,)``.

        Uniform while nothing has been seen.
        """
        total = self.counts.sum()
        if total <= 0:
            return torch.full_like(self.counts, 1.0 / len(self.counts))
        spread = self.kernel @ (self.counts / total)
        return spread / spread.sum()

    @torch.no_grad()
    def weights(self) -> torch.Tensor:
        """Per-bin loss weights ``(Q,)``: rarer bins weigh more; their mean under ``p_smooth`` is 1."""
        prior = self.smoothed()
        # The floor only matters for lambda = 0, where a bin never seen would otherwise weigh infinitely.
        weights = 1.0 / ((1 - self.mix) * prior + self.mix / len(prior)).clamp(min=1e-12)
        return weights / (prior * weights).sum()
