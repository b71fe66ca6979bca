"""The fine-tuning protocol: every parameter of the representation trained with a linear head on the labelled train
split (Gidaris et al. 2018 and Chen et al. 2020 report it beside the linear protocol).

The recipe is linear-probe-then-fine-tune (LP-FT, Kumar et al. 2022, "Fine-Tuning can Distort Pretrained
Features and Underperform Out-of-Distribution"):

1. The head starts at the linear probe's solution (:func:`~ssl_engine.eval.linear.solve_linear_probe`: frozen
   features of the same labelled images, weight decay chosen on val), its standardisation kept as a batch-norm
   layer (:func:`linear_probe_head`), so the network at step 0 *is* the linear probe. A fresh head would send
   large, random gradients into the pretrained features for the first hundreds of steps, and with few labels that
   is most of the budget.
2. Then every parameter is trained (:mod:`ssl_engine.eval.finetune_optimizer`: SGD with momentum 0.9 and weight
   decay 5e-4 at lr 0.01 for convnets; for ViTs, MAE's recipe, AdamW at 5e-4 x batch / 256), linear
   warm-up then cosine decay, for a budget in steps (:mod:`ssl_engine.eval.finetune_budget`: by default
   ``max(5 epochs, 500 steps)``, so 1% of the labels gets as many updates as 10%), on batches augmented on the
   device by the base augmentation (random crop with reflection padding, horizontal flip).
3. Val accuracy is checked at step 0 and about ten times during training; the best-on-val checkpoint is kept
   (ties: the earlier) and its test accuracy reported. Test is never used to choose. ``best_step`` 0 means
   fine-tuning never beat its linear-probe start on val.

Options (``sslx evaluate --set``): ``steps`` (exact budget) or ``epochs`` (exact passes), ``optimizer`` (``auto``,
``sgd``, ``adamw``), ``lr`` (default: the optimiser's), ``batch_size`` (64), ``warmup`` (share of the steps, 0.1),
``eval_every`` (steps between val checks), ``layer_decay`` (a ViT's layer-wise lr decay; 1, none, by default).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ssl_engine.data.augment import random_crop_flip
from ssl_engine.data.batches import BatchStream
from ssl_engine.data.options import DataError
from ssl_engine.eval.context import EvalContext
from ssl_engine.eval.finetune_budget import FinetuneOptions
from ssl_engine.eval.finetune_optimizer import (
    build_optimizer,
    default_lr,
    describe,
    parameter_groups,
    resolve_optimizer,
)
from ssl_engine.eval.linear import LinearSolution, solve_linear_probe
from ssl_engine.images import to_float
from ssl_engine.randomness import BatchRandom


@dataclass(frozen=True)
class LabelledImages:
    """A whole split held in memory: uint8 images ``(N, 3, S, S)`` and labels ``(N,)``, on the evaluation device."""

    images: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def of(cls, context: EvalContext, split: str) -> LabelledImages:
        images, labels = load_split(context, split)
        return cls(images.to(context.device), labels.to(context.device))


def load_split(context: EvalContext, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of ``split``, uint8 ``(N, 3, S, S)``, and its labels ``(N,)`` (on the CPU), with progress."""
    dataset = context.source.split(split, context.image_size)
    count = len(dataset)  # type: ignore[arg-type]
    images, labels = [], []
    with context.progress.phase(f"loading {count:,} {split} images", count, "img") as phase:
        for batch_images, batch_labels in DataLoader(dataset, batch_size=256, shuffle=False):
            images.append(batch_images)
            labels.append(torch.as_tensor(batch_labels))
            phase.advance(len(batch_images))
    if not images:
        raise DataError(f"the {split} split of {context.source.name!r} is empty")
    return torch.cat(images), torch.cat(labels).long()


@torch.no_grad()
def accuracy_on(model: nn.Module, split: LabelledImages, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` (float images in [0, 1] -> logits) on a whole split, in eval mode."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(split.labels), batch_size):
        logits = model(to_float(split.images[start : start + batch_size]))  # (B, classes)
        correct += int((logits.argmax(1) == split.labels[start : start + batch_size]).sum())
    model.train(was_training)
    return correct / max(len(split.labels), 1)


def linear_probe_head(solution: LinearSolution) -> nn.Sequential:
    """The linear probe as a trainable head ``(B, D) -> (B, classes)``: its standardisation, then its classifier.

    The standardisation is a batch-norm layer without learnt scale or shift, its running statistics started at the
    probe's train mean and variance: in eval mode the head computes exactly the probe's logits; while training, it
    standardises each batch with the batch's own statistics, so the classifier keeps seeing unit-scale features
    however far the backbone moves them. Folding the standardisation into the weights instead (``W / std``) makes
    the logits as sensitive to a feature as that feature's spread is small: at a random initialisation, whose
    pooled features vary by about 1% across images, the first updates then send every image to one class.
    """
    standardise = nn.BatchNorm1d(len(solution.mean), affine=False, eps=1e-12)  # eps: the probe's std has +1e-6
    statistics = {"running_mean": solution.mean, "running_var": solution.std.square()}
    standardise.load_state_dict(statistics | {"num_batches_tracked": torch.tensor(0)})
    return nn.Sequential(standardise, copy.deepcopy(solution.classifier))


def linear_probe_network(context: EvalContext) -> nn.Sequential:
    """A copy of the representation followed by the linear probe as a head (:func:`linear_probe_head`).

    In eval mode its predictions are the linear protocol's (same labelled images, same chosen weight decay).
    """
    representation = copy.deepcopy(context.representation).to(context.device)
    return nn.Sequential(representation, linear_probe_head(solve_linear_probe(context)).to(context.device))


def finetune_protocol(context: EvalContext) -> dict[str, Any]:
    """Linear probe, then every parameter trained; test accuracy of the best-on-val step."""
    options = FinetuneOptions.read(context)  # bad options fail before any work
    model = linear_probe_network(context)
    images, labels = load_split(context, "train")  # (N, 3, S, S) uint8, (N,)
    keep = context.train_indices(labels)
    if len(keep) < 2:
        raise DataError(f"fine-tuning needs at least 2 labelled train images; {len(keep)} are left")
    budget = options.budget(len(keep))
    subset: Dataset[tuple[torch.Tensor, int]] = TensorDataset(images[keep], labels[keep])  # type: ignore[assignment]
    stream = BatchStream(subset, budget.batch_size, context.seed, images=images[keep], labels=labels[keep])
    val, test = LabelledImages.of(context, "val"), LabelledImages.of(context, "test")
    optimizer_name = resolve_optimizer(options.optimizer, model[0])
    lr = options.lr if options.lr is not None else default_lr(optimizer_name, budget.batch_size)
    groups = parameter_groups(model, optimizer_name, options.layer_decay)
    optimizer = build_optimizer(optimizer_name, groups, lr)
    start_val = accuracy_on(model, val)
    best_val, best_step, best_state = start_val, 0, copy.deepcopy(model.state_dict())
    history = [(0, start_val)]  # (steps done, val accuracy)
    batches = stream.batches()
    model.train()
    described = (
        f"fine-tuning every parameter for {budget.steps:,} steps of {budget.batch_size} images "
        f"(val checked every {budget.eval_every})"
    )
    with context.progress.phase(described, budget.steps, "step") as phase:
        for step in range(budget.steps):
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"] * budget.learning_rate_factor(step)
            batch, targets = next(batches)
            batch = to_float(batch.to(context.device))  # (B, 3, S, S) in [0, 1]
            random = BatchRandom(context.seed, step, "finetune", len(batch), device=context.device)
            batch = random_crop_flip(batch, random)
            loss = F.cross_entropy(model(batch), targets.to(context.device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if budget.checks_val_after(step):
                accuracy = accuracy_on(model, val)
                history.append((step + 1, accuracy))
                if accuracy > best_val:
                    best_val, best_step, best_state = accuracy, step + 1, copy.deepcopy(model.state_dict())
            phase.advance()
    model.load_state_dict(best_state)
    return {
        "protocol": "finetune",
        "accuracy": accuracy_on(model, test),
        "val_accuracy": best_val,
        "best_step": best_step,
        "start_val_accuracy": start_val,
        "val_history": history,
        "steps": budget.steps,
        "warmup_steps": budget.warmup_steps,
        "epochs": round(budget.steps / budget.steps_per_epoch, 2),
        "batch_size": budget.batch_size,
        "optimizer": optimizer_name,
        "lr": lr,
        "layer_decay": options.layer_decay,
        "train_size": len(keep),
        "recipe": (
            f"head from the linear probe (its standardisation as batch norm), then all parameters (LP-FT): "
            f"{budget.steps} steps ({budget.warmup_steps} warm-up, then cosine), batch {budget.batch_size}, "
            f"{describe(optimizer_name, lr, options.layer_decay)}, crop+flip; step chosen on val"
        ),
    }
