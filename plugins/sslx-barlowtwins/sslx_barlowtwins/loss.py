"""The Barlow Twins objective: the cross-correlation of two views' embeddings, pushed towards the identity.

Zbontar, Jing, Misra, LeCun & Deny 2021, "Barlow Twins: Self-Supervised Learning via Redundancy Reduction"
(ICML), Eq. 1 and 2: for the embeddings ``z^A``, ``z^B`` ``(N, P)`` of the two views of ``N`` images, each
mean-centred along the batch,

    C_ij = sum_b z^A_bi z^B_bj / ( sqrt(sum_b (z^A_bi)^2) sqrt(sum_b (z^B_bj)^2) )          (Eq. 2)
    L    = sum_i (1 - C_ii)^2  +  lambda * sum_i sum_{j != i} C_ij^2                          (Eq. 1)

the invariance term (matching dimensions of the two views agree) and the redundancy-reduction term (different
dimensions are decorrelated). The paper's code computes ``C`` as ``bn(z^A).T @ bn(z^B) / N`` with an affine-free
batch norm (biased variance, ``eps = 1e-5``), which is Eq. 2 but for the ``eps``, and all-reduces it over the
processes, so that ``N`` is the global batch: here the caller gathers the embeddings of every process first
(:func:`~ssl_engine.api.gather_from_all_ranks`), and the statistics and ``C`` are those of the global batch.
"""

from __future__ import annotations

import torch
from torch import nn

BATCH_NORM_EPS = 1e-5  # torch's BatchNorm1d default, which the paper's code uses


def standardize_over_batch(embeddings: torch.Tensor, eps: float = BATCH_NORM_EPS) -> torch.Tensor:
    """Each dimension to zero mean and unit (biased) variance over the batch: ``(N, P)`` -> ``(N, P)``.

    What an affine-free ``BatchNorm1d`` does in training mode (``sqrt(var + eps)``, ``var`` with ``1 / N``).
    """
    variance, mean = torch.var_mean(embeddings, dim=0, correction=0)  # (P,) each
    return (embeddings - mean) * torch.rsqrt(variance + eps)


def cross_correlation(z_a: torch.Tensor, z_b: torch.Tensor, eps: float = BATCH_NORM_EPS) -> torch.Tensor:
    """``C`` of Eq. 2: ``(N, P)``, ``(N, P)`` -> ``(P, P)``, ``C[i, j]`` correlating dimension ``i`` of view A with
    dimension ``j`` of view B over the batch."""
    return standardize_over_batch(z_a, eps).T @ standardize_over_batch(z_b, eps) / len(z_a)


def off_diagonal(matrix: torch.Tensor) -> torch.Tensor:
    """The ``P * (P - 1)`` off-diagonal entries of a square ``(P, P)`` matrix, flattened (no copy)."""
    size = len(matrix)
    # Row-major, the diagonal entries are every (P + 1)-th one; dropping the first and cutting rows of P + 1
    # leaves each diagonal entry at the end of a row.
    return matrix.flatten()[1:].view(size - 1, size + 1)[:, :-1].flatten()


class BarlowTwinsLoss(nn.Module):
    """The two terms of Eq. 1 on the embeddings of the whole (global) batch.

    Args:
        eps: added to the variance before standardising (the paper's code: batch norm's 1e-5).

    Shapes:
        ``z_a``, ``z_b``: ``(N, P)``, the two views' embeddings of the same ``N`` images in the same order (under
        torchrun, every process's rows: gather them first). Returns ``(invariance, redundancy, C)``: the scalars
        ``sum_i (1 - C_ii)^2`` and ``sum_{i != j} C_ij^2`` (Eq. 1 is ``invariance + lambda * redundancy``) and the
        ``(P, P)`` cross-correlation. Computed in float32, also under autocast.
    """

    def __init__(self, eps: float = BATCH_NORM_EPS) -> None:
        super().__init__()
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.eps = eps

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if z_a.shape != z_b.shape or z_a.ndim != 2 or len(z_a) < 2:
            raise ValueError(f"expected two (N, P) embeddings with N >= 2, got {tuple(z_a.shape)}, {tuple(z_b.shape)}")
        with torch.autocast(z_a.device.type, enabled=False):
            correlation = cross_correlation(z_a.float(), z_b.float(), self.eps)  # (P, P)
            invariance = (1 - correlation.diagonal()).square().sum()
            redundancy = off_diagonal(correlation).square().sum()
        return invariance, redundancy, correlation
