"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR, over the global batch.

Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations" (ICML), Eq. 1: for a
positive pair of views ``(i, j)`` of the same image among ``2N`` views,

    l(i, j) = -log( exp(sim(z_i, z_j) / t) / sum over k != i of exp(sim(z_i, z_k) / t) )

with ``sim`` the cosine similarity and ``t`` the temperature; the loss is the mean of ``l`` over all ``2N``
views (each view is an anchor once). That is a cross-entropy over ``2N - 1`` classes, the other views, whose
right answer is the positive: so the cross-entropy is a parameter, and the task passes the one the user chose
(``--loss simclr=label_smoothing`` smooths towards the ``2N - 1`` candidates).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ssl_engine import api


def drop_self_column(
    logits: torch.Tensor, self_columns: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Remove each row's own column: ``(M, K)`` -> ``(M, K - 1)``, and renumber the targets to match.

    Removing, rather than setting ``-inf``, keeps every loss finite (a label-smoothed cross-entropy sums over all
    columns).

    Args:
        logits: ``(M, K)``.
        self_columns: ``(M,)`` int64, the column of each row's own similarity.
        targets: ``(M,)`` int64 columns, none equal to its row's ``self_columns``.

    Returns:
        ``(M, K - 1)`` logits and ``(M,)`` targets into them.
    """
    columns = torch.arange(logits.shape[1] - 1, device=logits.device).expand(len(logits), -1)
    columns = columns + (columns >= self_columns[:, None]).long()  # (M, K-1): every column but the row's own
    return logits.gather(1, columns), targets - (targets > self_columns).long()


class NTXentLoss(nn.Module):
    """NT-Xent over the views of the global batch.

    With ``torch.distributed`` initialised on ``W > 1`` processes, the candidates are every process's
    embeddings (:func:`~ssl_engine.api.gather_from_all_ranks`, gradients flowing back), and each process's
    loss is the mean over its own ``M`` anchors; with ``M`` the same on every process (``all_gather`` needs it),
    the mean of the ``W`` losses is the loss of one process on the whole batch.

    Args:
        temperature: ``t`` of Eq. 1 (paper: 0.5 on CIFAR-10, 0.1 on ImageNet with large batches).
        cross_entropy: ``(logits (M, K - 1), targets (M,)) -> scalar``; plain cross-entropy gives Eq. 1.

    Shapes:
        embeddings ``(M, E)``, this process's views in their global order; targets ``(M,)`` int64, the global
        row (over all processes, rank-major) of each view's positive. Returns the scalar loss and the logits
        ``(M, W * M)`` over every view, ``-inf`` in each row's own column, so ``logits.argmax(1) == targets``
        is the contrastive accuracy.
    """

    def __init__(self, temperature: float = 0.5, cross_entropy: api.LossFunction = F.cross_entropy) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature
        self.cross_entropy = cross_entropy

    def forward(self, embeddings: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        count = len(embeddings)
        first = torch.distributed.get_rank() * count if api.is_distributed() else 0
        self_columns = first + torch.arange(count, device=embeddings.device)  # (M,)
        # Similarities in float32 even under autocast: bfloat16's 8 bits of mantissa blur cosines divided by t.
        with torch.autocast(embeddings.device.type, enabled=False):
            anchors = F.normalize(embeddings.float(), dim=1)  # (M, E)
            candidates = api.gather_from_all_ranks(anchors)  # (W*M, E)
            logits = anchors @ candidates.T / self.temperature  # (M, W*M)
            wrong = (targets < 0) | (targets >= len(candidates)) | (targets == self_columns)
            message = (
                f"NT-Xent targets must be other rows among the {len(candidates)} views of the global batch "
                f"(this process's are rows {first}..{first + count - 1})"
            )
            if embeddings.device.type == "cpu":
                if wrong.any():
                    raise ValueError(message)
            else:  # checked on the device, without making the host wait for it every step
                torch._assert_async(~wrong.any(), message)
            loss = self.cross_entropy(*drop_self_column(logits, self_columns, targets))
        shown = logits.detach().scatter(1, self_columns[:, None], float("-inf"))
        return loss, shown
