"""The k-nearest-neighbour protocol: cosine similarity on frozen features, votes weighted by ``exp(sim / T)``
(Wu et al. 2018, instance discrimination; the usual k=200, T=0.1). No training."""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F

from ssl_engine.eval.context import EvalContext


def knn_predict(
    bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, k: int, temperature: float, classes: int
) -> torch.Tensor:
    """Predicted classes ``(Q,)`` for queries ``(Q, D)`` from a labelled bank ``(N, D)``, ``(N,)``.

    Each query's ``k`` most cosine-similar bank entries vote for their class with weight ``exp(sim / T)``.
    """
    bank = F.normalize(bank, dim=1)
    predictions = []
    for chunk in F.normalize(queries, dim=1).split(1024):
        similarity, index = (chunk @ bank.T).topk(min(k, len(bank)), dim=1)  # (q, k)
        votes = torch.zeros(len(chunk), classes).scatter_add_(1, bank_labels[index], (similarity / temperature).exp())
        predictions.append(votes.argmax(1))
    return torch.cat(predictions)


def knn_protocol(context: EvalContext) -> dict[str, Any]:
    """Top-1 test accuracy of the weighted kNN classifier on the train split's features."""
    k = context.option("k", 200, int, minimum=1)
    temperature = context.option("temperature", 0.1, float, minimum=0, min_open=True)
    train_x, train_y = context.features("train")
    keep = context.train_indices(train_y)
    classes = int(train_y.max()) + 1
    result: dict[str, Any] = {"protocol": "knn", "k": k, "temperature": temperature, "train_size": len(keep)}
    for split in ("val", "test"):
        x, y = context.features(split)
        correct = knn_predict(train_x[keep], train_y[keep], x, k, temperature, classes) == y
        result["accuracy" if split == "test" else "val_accuracy"] = float(correct.float().mean())
    return result
