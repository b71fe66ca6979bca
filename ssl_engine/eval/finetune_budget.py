"""How long the fine-tuning protocol trains, how fast, and when it checks val.

The budget is counted in optimisation steps, not epochs: 1% of the labels is one batch per epoch, so a budget in
epochs alone gives it a handful of updates (the protocol then reports little more than chance, issue 23). By
default the protocol trains ``max(5 epochs, 500 steps)``; an explicit ``steps`` or ``epochs`` is taken literally.
The learning rate warms up linearly over the first 10% of the steps, then decays to zero along a cosine
(Goyal et al. 2017; Loshchilov & Hutter 2017): the head starts at the linear probe's solution, and a warm-up keeps
the first, largest updates from distorting the pretrained features (Kumar et al. 2022).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ssl_engine.data.options import DataError
from ssl_engine.eval.context import EvalContext
from ssl_engine.eval.finetune_optimizer import check_optimizer_choice
from ssl_engine.train.schedule import warmup_cosine

DEFAULT_EPOCHS = 5
MIN_STEPS = 500
DEFAULT_WARMUP = 0.1
DEFAULT_BATCH_SIZE = 64
VAL_CHECKS = 10


@dataclass(frozen=True)
class FinetuneBudget:
    """The step budget of one fine-tuning.

    Attributes:
        steps: optimisation steps.
        warmup_steps: steps of linear warm-up before the cosine decay.
        eval_every: val accuracy is checked after every ``eval_every`` steps, after the last one, and before the
            first (the linear probe's head on the pretrained network).
        batch_size: images per step (at most the number of labelled train images).
        steps_per_epoch: steps in one pass over the labelled train images.
    """

    steps: int
    warmup_steps: int
    eval_every: int
    batch_size: int
    steps_per_epoch: int

    def learning_rate_factor(self, step: int) -> float:
        """Multiplier of the base learning rate at ``step`` (0-based): linear warm-up, then cosine to zero."""
        return warmup_cosine(step, self.steps, self.warmup_steps)

    def checks_val_after(self, step: int) -> bool:
        """Whether val is checked once ``step`` (0-based) is done."""
        return (step + 1) % self.eval_every == 0 or step + 1 == self.steps


@dataclass(frozen=True)
class FinetuneOptions:
    """The protocol's options (``sslx evaluate --set KEY=VALUE``), validated before any work.

    Attributes:
        steps: exact number of optimisation steps, or ``None``.
        epochs: exact number of epochs, or ``None``; with neither, ``max(5 epochs, 500 steps)``.
        lr: base learning rate of every parameter (backbone and head), or ``None`` for the optimiser's own
            (:mod:`ssl_engine.eval.finetune_optimizer`).
        optimizer: ``auto``, ``sgd`` or ``adamw`` (:mod:`ssl_engine.eval.finetune_optimizer`).
        layer_decay: layer-wise lr decay of a ViT's parameters, in (0, 1] (1: none).
        batch_size: images per step.
        warmup: share of the steps spent warming up, in [0, 1).
        eval_every: steps between val checks, or ``None`` for about 10 checks.
    """

    steps: int | None
    epochs: int | None
    lr: float | None
    optimizer: str
    layer_decay: float
    batch_size: int
    warmup: float
    eval_every: int | None

    @classmethod
    def read(cls, context: EvalContext) -> FinetuneOptions:
        """The options of ``context``, checked.

        Raises:
            DataError: an option is not a number, out of range, or ``steps`` and ``epochs`` are both given.
        """
        given = context.options
        if "steps" in given and "epochs" in given:
            raise DataError(
                "evaluation options steps and epochs are both given; give one: steps is the exact budget, "
                "epochs a budget of that many passes over the labelled train images"
            )
        steps = context.option("steps", None, int, minimum=1) if "steps" in given else None
        epochs = context.option("epochs", None, int, minimum=1) if "epochs" in given else None
        warmup = context.option("warmup", DEFAULT_WARMUP, float, minimum=0)
        if warmup >= 1:
            raise DataError(f"evaluation option warmup (a share of the steps) must be < 1; got {warmup!r}")
        return cls(
            steps=steps,
            epochs=epochs,
            lr=context.option("lr", None, float, minimum=0, min_open=True) if "lr" in given else None,
            optimizer=check_optimizer_choice(context.option("optimizer", "auto", str).strip()),
            layer_decay=context.option("layer_decay", 1.0, float, minimum=0, min_open=True, maximum=1),
            batch_size=context.option("batch_size", DEFAULT_BATCH_SIZE, int, minimum=1),
            warmup=warmup,
            eval_every=context.option("eval_every", None, int, minimum=1) if "eval_every" in given else None,
        )

    def budget(self, train_size: int) -> FinetuneBudget:
        """The budget for ``train_size`` labelled train images."""
        batch_size = min(self.batch_size, train_size)
        steps_per_epoch = train_size // batch_size
        if self.steps is not None:
            steps = self.steps
        elif self.epochs is not None:
            steps = self.epochs * steps_per_epoch
        else:
            steps = max(DEFAULT_EPOCHS * steps_per_epoch, MIN_STEPS)
        return FinetuneBudget(
            steps=steps,
            warmup_steps=round(self.warmup * steps),
            eval_every=self.eval_every or max(1, math.ceil(steps / VAL_CHECKS)),
            batch_size=batch_size,
            steps_per_epoch=steps_per_epoch,
        )
