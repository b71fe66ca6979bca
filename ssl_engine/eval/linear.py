"""The linear evaluation protocol: a linear classifier on frozen features (Zhang et al. 2016; Kolesnikov et al.
2019).

Features of the train, val and test splits are extracted once; a multinomial logistic regression is fitted on
train for each weight decay of a small grid (full-batch L-BFGS, deterministic), the weight decay is chosen on
val accuracy, never on test, and the chosen classifier's top-1 accuracy on test is reported.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F

from ssl_engine.data.options import DataError
from ssl_engine.eval.context import EvalContext

WEIGHT_DECAYS: tuple[float, ...] = (0.0, 1e-4, 1e-3, 1e-2)


def fit_linear(
    features: torch.Tensor, labels: torch.Tensor, classes: int, weight_decay: float, iterations: int = 100
) -> torch.nn.Linear:
    """Multinomial logistic regression ``(N, D) -> (N, classes)`` with an l2 penalty, by full-batch L-BFGS."""
    torch.manual_seed(0)
    classifier = torch.nn.Linear(features.shape[1], classes)
    optimizer = torch.optim.LBFGS(classifier.parameters(), lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(classifier(features), labels) + weight_decay * classifier.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return classifier


def top1(classifier: torch.nn.Linear, features: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float((classifier(features).argmax(1) == labels).float().mean())


def linear_protocol(context: EvalContext) -> dict[str, Any]:
    """Top-1 test accuracy of the best-on-val linear classifier on frozen features."""
    if not context.source.labelled:
        raise DataError(f"data set {context.source.name!r} has no labels; the linear protocol needs them")
    splits = {split: context.features(split) for split in ("train", "val", "test")}
    keep = context.train_indices(splits["train"][1])
    train_x, train_y = splits["train"][0][keep], splits["train"][1][keep]
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    normalised = {split: ((x - mean) / std, y) for split, (x, y) in splits.items()}
    normalised["train"] = ((train_x - mean) / std, train_y)
    classes = int(max(y.max() for _, y in splits.values())) + 1
    by_decay = {}
    for decay in WEIGHT_DECAYS:
        classifier = fit_linear(*normalised["train"], classes, decay)
        by_decay[decay] = (top1(classifier, *normalised["val"]), classifier)
    best = max(WEIGHT_DECAYS, key=lambda decay: by_decay[decay][0])
    return {
        "protocol": "linear",
        "accuracy": top1(by_decay[best][1], *normalised["test"]),
        "val_accuracy": by_decay[best][0],
        "weight_decay": best,
        "feature_dim": int(train_x.shape[1]),
        "train_size": int(len(train_y)),
        "test_size": int(len(splits["test"][1])),
    }
