"""The loss choice of a task that computes its own loss (Barlow Twins, VICReg, BYOL, DINO).

Such a task scores its outputs with a loss of its paper's (a cross-correlation, three regularisers, a normalised
MSE, a cross-entropy between distributions) rather than with a registered one, so a ``--loss`` for it must be
refused, not silently ignored. It says so in one line of its class::

    class BarlowTwinsTask(PretextTask):
        loss_choice = own_loss_choice

:meth:`~ssl_engine.task.PretextTask.loss_choice` then answers a loss kind of ``None`` whatever the settings, and
the task's ``context.loss_fn`` is its ``default_loss``, unused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ssl_engine.task import PretextTask


def _own_loss(task_class: type[PretextTask], settings: Mapping[str, Any]) -> tuple[str | None, str]:
    """No loss kind: ``--loss`` for the task is refused rather than ignored."""
    return None, task_class.default_loss


own_loss_choice = classmethod(_own_loss)
""":meth:`~ssl_engine.task.PretextTask.loss_choice` for a task that computes its own loss (no registered loss
applies): ``loss_choice = own_loss_choice`` in the task's class."""
