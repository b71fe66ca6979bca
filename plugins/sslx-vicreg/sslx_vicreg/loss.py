"""The three terms of VICReg: invariance, variance and covariance, over the global batch.

Bardes, Ponce & LeCun 2022, "VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised Learning"
(ICLR), Sec. 3 and Algorithm 1: for the embeddings ``Z``, ``Z'`` ``(N, P)`` of the two views of ``N`` images,

    s(Z, Z') = mean over the N x P entries of (Z - Z')^2          invariance (Algorithm 1's F.mse_loss)
    v(Z)     = 1/P sum_j max(0, gamma - sqrt(Var(z_j) + eps))      variance: a hinge on each dimension's std
    c(Z)     = 1/P sum_{i != j} Cov(Z)_ij^2                         covariance: decorrelate the dimensions
    loss     = lambda s(Z, Z') + mu [v(Z) + v(Z')] + nu [c(Z) + c(Z')]

with ``Var`` and ``Cov`` over the batch, unbiased (``1 / (N - 1)``), ``gamma = 1``, ``eps = 1e-4`` and the
weights ``lambda = mu = 25``, ``nu = 1``. The released code halves the variance term (``std_loss / 2``); this
follows the paper's Eq. 6 and Algorithm 1, which don't. Under torchrun the caller gathers every process's
embeddings first (:func:`~ssl_engine.api.gather_from_all_ranks`), as the paper's code does, so the variance and
covariance are those of the global batch.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def off_diagonal(matrix: torch.Tensor) -> torch.Tensor:
    """The ``P * (P - 1)`` off-diagonal entries of a square ``(P, P)`` matrix, flattened (no copy)."""
    size = len(matrix)
    # Row-major, the diagonal entries are every (P + 1)-th one; dropping the first and cutting rows of P + 1
    # leaves each diagonal entry at the end of a row.
    return matrix.flatten()[1:].view(size - 1, size + 1)[:, :-1].flatten()


def variance_term(embeddings: torch.Tensor, gamma: float, eps: float) -> torch.Tensor:
    """``v(Z)``: ``(N, P)`` -> scalar, the mean over dimensions of ``max(0, gamma - sqrt(Var + eps))``."""
    std = torch.sqrt(embeddings.var(dim=0) + eps)  # (P,), unbiased
    return F.relu(gamma - std).mean()


def covariance_term(embeddings: torch.Tensor) -> torch.Tensor:
    """``c(Z)``: ``(N, P)`` -> scalar, the sum of the squared off-diagonal covariances divided by ``P``."""
    centred = embeddings - embeddings.mean(dim=0)
    covariance = centred.T @ centred / (len(embeddings) - 1)  # (P, P)
    return off_diagonal(covariance).square().sum() / embeddings.shape[1]


class VICRegLoss(nn.Module):
    """The unweighted terms of VICReg on the embeddings of the whole (global) batch.

    Args:
        gamma: target standard deviation of each dimension (paper: 1).
        eps: added to the variance under the square root, for stability (paper: 1e-4).

    Shapes:
        ``z_a``, ``z_b``: ``(N, P)``, ``N >= 2``, the two views' embeddings of the same images in the same order
        (under torchrun, every process's rows: gather them first). Returns ``(invariance, variance, covariance)``:
        ``s(Z, Z')``, ``v(Z) + v(Z')`` and ``c(Z) + c(Z')``, scalars computed in float32, also under autocast.
    """

    def __init__(self, gamma: float = 1.0, eps: float = 1e-4) -> None:
        super().__init__()
        if gamma <= 0 or eps <= 0:
            raise ValueError(f"gamma and eps must be positive, got {gamma} and {eps}")
        self.gamma = gamma
        self.eps = eps

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if z_a.shape != z_b.shape or z_a.ndim != 2 or len(z_a) < 2:
            raise ValueError(f"expected two (N, P) embeddings with N >= 2, got {tuple(z_a.shape)}, {tuple(z_b.shape)}")
        with torch.autocast(z_a.device.type, enabled=False):
            z_a, z_b = z_a.float(), z_b.float()
            invariance = F.mse_loss(z_a, z_b)
            variance = variance_term(z_a, self.gamma, self.eps) + variance_term(z_b, self.gamma, self.eps)
            covariance = covariance_term(z_a) + covariance_term(z_b)
        return invariance, variance, covariance
