"""The InfoNCE logits of MoCo: a query against its positive key and a queue of negatives (v1/v2), or against the
keys of the whole global batch (v3). The cross-entropy over them is the task's chosen classification loss.

He et al. 2020, "Momentum Contrast for Unsupervised Visual Representation Learning" (CVPR), Eq. 1 and
Algorithm 1::

    l_pos = q . k+                      (N, 1)
    l_neg = q . queue                   (N, K)
    loss  = CrossEntropy([l_pos, l_neg] / t, labels = 0)

Chen, Xie & He 2021, "An Empirical Study of Training Self-Supervised Vision Transformers" (ICCV), Algorithm 1: no
queue; the keys of the other view of every image in the (gathered) batch are the candidates, the positive is the
query's own image::

    logits = q . k^T / t                (N, W * N), labels = the query's row among the gathered keys
    loss   = 2 t * (CrossEntropy(q1 . k2) + CrossEntropy(q2 . k1))

Queries and keys are l2-normalised, so every logit is a cosine divided by the temperature ``t``.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ssl_engine import api


def queue_logits(queries: torch.Tensor, keys: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo v1/v2's logits: column 0 the positive key, then one column per queued negative.

    Args:
        queries: ``(N, P)`` (any norm; normalised here).
        keys: ``(N, P)`` the positive of each query (any norm; normalised here).
        queue: ``(K, P)`` the negatives, already normalised.
        temperature: ``t`` > 0.

    Returns:
        ``(N, 1 + K)`` float32 logits; the right class of every row is 0.
    """
    with torch.autocast(queries.device.type, enabled=False):
        q = F.normalize(queries.float(), dim=1)
        k = F.normalize(keys.float(), dim=1)
        positive = (q * k).sum(dim=1, keepdim=True)  # (N, 1)
        negatives = q @ queue.float().T  # (N, K)
        return torch.cat([positive, negatives], dim=1) / temperature


def batch_logits(queries: torch.Tensor, keys: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo v3's logits: every query against every key of the (gathered) batch.

    Args:
        queries: ``(N, P)`` (normalised here).
        keys: ``(M, P)``, already normalised (gathered from every process, rank by rank).
        temperature: ``t`` > 0.

    Returns:
        ``(N, M)`` float32 logits.
    """
    with torch.autocast(queries.device.type, enabled=False):
        return F.normalize(queries.float(), dim=1) @ keys.float().T / temperature


def symmetric_logits(queries: torch.Tensor, keys: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo v3's logits of both views: view ``v``'s queries against the other view's keys of every image of the
    global batch (gathered from every process in rank order; no gradient flows to the keys).

    Args:
        queries: ``(B, 2, P)``, this process's images' queries of both views (normalised here).
        keys: ``(B, 2, P)``, their keys, already normalised.
        temperature: ``t`` > 0.

    Returns:
        ``(B * 2, W * B)`` float32 logits, rows sample-major (image ``b``'s view ``v`` is row ``2 b + v``); the right
        column of row ``2 b + v`` is the image's row in the global batch.
    """
    per_view = [
        batch_logits(queries[:, view], api.gather_from_all_ranks(keys[:, 1 - view].detach()), temperature)
        for view in range(2)
    ]  # 2 x (B, W*B)
    return torch.stack(per_view, dim=1).flatten(0, 1)
