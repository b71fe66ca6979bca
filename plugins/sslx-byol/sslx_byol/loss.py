"""BYOL's loss: the normalised mean squared error between the online prediction of one view and the target
network's projection of the other, symmetrised over the two views.

Grill et al. 2020, "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning" (NeurIPS), Eq. 2 and
Algorithm 1::

    L(q, z') = || q / |q| - z' / |z'| ||^2 = 2 - 2 <q, z'> / (|q| |z'|)
    loss = L(q_1, sg(z'_2)) + L(q_2, sg(z'_1))            (mean over the batch)

``q_v`` is the online network's prediction of view ``v``, ``z'_v`` the target network's projection of it and
``sg`` the stop-gradient: only the online network learns from the loss. There are no negatives.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def normalized_mse(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``2 - 2 cos(p, z)`` per row (Eq. 2), in [0, 4].

    Args:
        predictions: ``(..., P)``.
        targets: ``(..., P)``, the same shape.

    Returns:
        ``(...)``, one value per row.
    """
    return 2 - 2 * (F.normalize(predictions, dim=-1) * F.normalize(targets, dim=-1)).sum(dim=-1)


class BYOLLoss(nn.Module):
    """The symmetrised BYOL loss of a batch of view pairs (Algorithm 1).

    Shapes:
        predictions ``(B, 2, P)``: the online network's predictions of both views of every image; targets
        ``(B, 2, P)``: the target network's projections of the same views (detached here). Returns the scalar loss
        ``mean over b of L(q_b1, z'_b2) + L(q_b2, z'_b1)``, in [0, 8], and the mean cosine similarity of each
        prediction with its target (1 when they agree, a detached scalar).
    """

    def forward(self, predictions: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if predictions.ndim != 3 or predictions.shape[1] != 2 or predictions.shape != targets.shape:
            raise ValueError(
                f"BYOL's loss takes predictions and targets of shape (B, 2, P); got {tuple(predictions.shape)} "
                f"and {tuple(targets.shape)}"
            )
        # In float32 even under autocast: 2 - 2 cos loses most of bfloat16's 8 bits of mantissa near agreement.
        with torch.autocast(predictions.device.type, enabled=False):
            swapped = targets.detach().float().flip(1)  # (B, 2, P): view 1's target for view 0's prediction
            per_pair = normalized_mse(predictions.float(), swapped)  # (B, 2)
            loss = per_pair.sum(dim=1).mean()
        cosine = 1 - per_pair.detach().mean() / 2
        return loss, cosine
