"""The supervised reference: the same backbone trained with the labels, same data, optimiser, schedule and budget.

It is the upper reference row of a comparison table (the "ImageNet labels" row of the tables in Gidaris et al.
2018 and Pathak et al. 2016): the backbone plus a linear classifier trained with cross-entropy on the train split.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ssl_engine.data.augment import random_crop_flip
from ssl_engine.images import normalize, to_float
from ssl_engine.progress import PhaseProgress
from ssl_engine.randomness import BatchRandom
from ssl_engine.run import Run
from ssl_engine.task import Representation
from ssl_engine.train.optim import make_optimizer
from ssl_engine.train.schedule import warmup_cosine


def train_supervised(run: Run, classes: int, progress: PhaseProgress | None = None) -> Representation:
    """Train ``run``'s backbone with labels for its budget (``run.total_steps``); returns its representation.

    Only what the run built is used (backbone, batch stream, device, lr, config); its tasks are ignored.
    ``progress`` reports the steps (default: on stderr).
    """
    if run.stream is None:
        raise ValueError("the supervised reference needs a run built by build_run (with a batch stream)")
    config, device, total = run.config, run.device, run.total_steps
    backbone = run.model.backbone
    head = nn.Linear(backbone.feature_dim, classes).to(device)
    optimizer = make_optimizer(run.optimizer, [backbone, head], run.lr, config.weight_decay)
    loss = torch.zeros(())
    described = f"training with labels for {total:,} steps of {config.batch_size} images"
    with (progress or PhaseProgress()).phase(described, total, "step") as phase:
        for step, (images, labels) in zip(range(total), run.stream.batches(0), strict=False):
            for group in optimizer.param_groups:
                group["lr"] = run.lr * warmup_cosine(step, total, round(config.warmup_fraction * total))
            batch = to_float(images.to(device))
            batch = random_crop_flip(batch, BatchRandom(config.seed, step, "base-augment", len(batch), device=device))
            backbone.train()
            loss = F.cross_entropy(head(backbone.pooled(normalize(batch))), labels.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            phase.advance()
    if not torch.isfinite(loss):
        raise FloatingPointError("the supervised reference diverged; lower --lr")
    return Representation(backbone)
