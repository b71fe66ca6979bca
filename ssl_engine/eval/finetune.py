"""The fine-tuning protocol: every parameter of the representation trained, with a small learning rate, together
with a fresh linear head, on the labelled train split (Gidaris et al. 2018 and Chen et al. 2020 report it beside the
linear protocol). The epoch kept is the one best on val; its test accuracy is reported.

Options (``sslx evaluate --set``): ``epochs`` (default 5), ``lr`` (backbone, default 0.01; the head gets 10x),
``batch_size`` (default 128).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ssl_engine.data.augment import random_crop_flip
from ssl_engine.data.batches import BatchStream, materialize
from ssl_engine.eval.context import EvalContext
from ssl_engine.images import to_float
from ssl_engine.randomness import BatchRandom
from ssl_engine.train.schedule import warmup_cosine


@torch.no_grad()
def accuracy_on(model: nn.Module, context: EvalContext, split: str) -> float:
    """Top-1 accuracy of ``model`` (images in [0, 1] -> logits) on a whole split, in eval mode."""
    model.eval()
    correct = total = 0
    for images, labels in DataLoader(context.source.split(split, context.image_size), batch_size=context.batch_size):
        predictions = model(to_float(images.to(context.device))).argmax(1).cpu()
        correct += int((predictions == torch.as_tensor(labels)).sum())
        total += len(predictions)
    return correct / max(total, 1)


def finetune_protocol(context: EvalContext) -> dict[str, Any]:
    """Train representation + linear head end to end; test accuracy of the best-on-val epoch."""
    epochs = context.option("epochs", 5, int, minimum=1)
    lr = context.option("lr", 0.01, float, minimum=0, min_open=True)
    batch_size = context.option("batch_size", 128, int, minimum=1)
    images, labels = materialize(context.source.split("train", context.image_size))  # (N, 3, S, S) uint8, (N,)
    keep = context.train_indices(labels)
    subset: Dataset[tuple[torch.Tensor, int]] = TensorDataset(images[keep], labels[keep])  # type: ignore[assignment]
    stream = BatchStream(subset, min(batch_size, len(keep)), context.seed, images=images[keep], labels=labels[keep])
    representation = copy.deepcopy(context.representation).to(context.device)
    head = nn.Linear(representation.feature_dim, int(labels.max()) + 1).to(context.device)
    model = nn.Sequential(representation, head)
    optimizer = torch.optim.SGD(
        [{"params": representation.parameters(), "lr": lr}, {"params": head.parameters(), "lr": 10 * lr}],
        momentum=0.9,
        weight_decay=5e-4,
    )
    base_rates = [group["lr"] for group in optimizer.param_groups]
    total = epochs * stream.steps_per_epoch
    best: tuple[float, int, dict[str, torch.Tensor]] = (-1.0, 0, {})
    batches = stream.batches()
    for step in range(total):
        images, targets = next(batches)
        for group, rate in zip(optimizer.param_groups, base_rates, strict=True):
            group["lr"] = rate * warmup_cosine(step, total, 0)
        images = to_float(images.to(context.device))
        images = random_crop_flip(
            images, BatchRandom(context.seed, step, "finetune", len(images), device=context.device)
        )
        model.train()
        loss = F.cross_entropy(model(images), targets.to(context.device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % stream.steps_per_epoch == 0:
            val = accuracy_on(model, context, "val")
            if val > best[0]:
                best = (val, (step + 1) // stream.steps_per_epoch, copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[2])
    return {
        "protocol": "finetune",
        "accuracy": accuracy_on(model, context, "test"),
        "val_accuracy": best[0],
        "best_epoch": best[1],
        "epochs": epochs,
        "lr": lr,
        "train_size": len(keep),
    }
