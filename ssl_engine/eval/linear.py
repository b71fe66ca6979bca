"""The linear evaluation protocol: a linear classifier on frozen features (Zhang et al. 2016; Kolesnikov et al.
2019).

Features of the train, val and test splits are extracted once; a multinomial logistic regression is fitted on
train for each weight decay of a small grid (full-batch L-BFGS, deterministic), the weight decay is chosen on
val accuracy, never on test, and the chosen classifier's top-1 accuracy on test is reported. The chosen solution
(:class:`LinearSolution`) is also the starting head of the fine-tuning protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class LinearSolution:
    """The linear probe's chosen classifier and the standardisation of the features it was fitted on.

    Attributes:
        classifier: ``(N, D) -> (N, classes)`` on standardised features ``(x - mean) / std``.
        mean: ``(D,)`` mean of the train features used.
        std: ``(D,)`` their standard deviation (plus a small constant).
        weight_decay: the l2 penalty chosen on val.
        val_accuracy: the classifier's top-1 accuracy on val.
        train_size: how many labelled train samples it was fitted on.
    """

    classifier: torch.nn.Linear
    mean: torch.Tensor
    std: torch.Tensor
    weight_decay: float
    val_accuracy: float
    train_size: int

    def standardise(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.mean) / self.std


def solve_linear_probe(context: EvalContext) -> LinearSolution:
    """Fit the linear probe on the (label-fraction) train features; the weight decay chosen on val accuracy."""
    if not context.source.labelled:
        raise DataError(f"data set {context.source.name!r} has no labels; the linear protocol needs them")
    train_features, train_labels = context.features("train")
    keep = context.train_indices(train_labels)
    train_x, train_y = train_features[keep], train_labels[keep]
    val_x, val_y = context.features("val")
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    classes = int(max(train_labels.max(), val_y.max(), context.features("test")[1].max())) + 1
    by_decay = {}
    fits = f"fitting {len(WEIGHT_DECAYS)} linear classifiers (one per weight decay) on {len(train_y):,} images"
    with context.progress.phase(fits, len(WEIGHT_DECAYS), "fit") as phase:
        for decay in WEIGHT_DECAYS:
            classifier = fit_linear((train_x - mean) / std, train_y, classes, decay)
            by_decay[decay] = (top1(classifier, (val_x - mean) / std, val_y), classifier)
            phase.advance()
    best = max(WEIGHT_DECAYS, key=lambda decay: by_decay[decay][0])
    return LinearSolution(by_decay[best][1], mean, std, best, by_decay[best][0], len(train_y))


def linear_protocol(context: EvalContext) -> dict[str, Any]:
    """Top-1 test accuracy of the best-on-val linear classifier on frozen features."""
    solution = solve_linear_probe(context)
    test_x, test_y = context.features("test")
    return {
        "protocol": "linear",
        "accuracy": top1(solution.classifier, solution.standardise(test_x), test_y),
        "val_accuracy": solution.val_accuracy,
        "weight_decay": solution.weight_decay,
        "feature_dim": int(test_x.shape[1]),
        "train_size": solution.train_size,
        "test_size": int(len(test_y)),
        "recipe": "logistic regression (L-BFGS) on standardised frozen features; weight decay chosen on val",
    }
