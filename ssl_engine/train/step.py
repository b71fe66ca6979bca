"""The forward half of a training step as one module, so ``DistributedDataParallel`` can wrap it.

Tasks call the backbone and their heads as often as they like (four rotations, nine tiles, two towers); DDP
needs exactly one forward call per backward. :class:`PretextStep` is that call: it runs every task of the run
on one augmented batch and returns the weighted total loss with everything the loop logs, as tensors on the
device (nothing is read back to the host here).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ssl_engine.plugin_failure import PluginCodeError
from ssl_engine.randomness import BatchRandom
from ssl_engine.task import PretextBatch, TaskOutput
from ssl_engine.train.model import PretrainModel, TaskRuntime


@dataclass
class StepSlice:
    """Which rows of the global batch this process holds: ``global_batch`` samples, ours from ``offset``."""

    seed: int
    step: int
    global_batch: int
    offset: int

    def random(self, stream: str, local_batch: int, device: torch.device) -> BatchRandom:
        """The stream's draws for the global batch, this process's rows (the same on 1 or N processes)."""
        return BatchRandom(
            self.seed, self.step, stream, local_batch, global_batch=self.global_batch, offset=self.offset, device=device
        )


@dataclass
class StepResult:
    """What one forward of every task gave: the total, per-task losses and what the loop logs (0-d tensors)."""

    total: torch.Tensor
    task_losses: dict[str, torch.Tensor]
    logged: dict[str, torch.Tensor]
    outputs: list[tuple[TaskRuntime, PretextBatch, TaskOutput]]


class PretextStep(nn.Module):
    """Pseudo-labels, forward and losses of every task of the run on one batch.

    Registers the backbone and the task modules (what the main optimizer trains, and what DDP synchronises);
    auxiliary modules (discriminators) are reached through the runtimes but are not part of this module.

    Args:
        model: the run's networks.
    """

    def __init__(self, model: PretrainModel) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.task_modules = model.task_modules
        self._runtimes = list(model.runtimes)  # a plain list: aux modules stay outside

    def forward(self, images: torch.Tensor, where: StepSlice) -> StepResult:
        """``images`` float ``(B, 3, S, S)`` in [0, 1], already augmented; ``where`` fixes the random draws."""
        total = torch.zeros((), device=images.device)
        task_losses: dict[str, torch.Tensor] = {}
        logged: dict[str, torch.Tensor] = {}
        outputs = []
        for runtime in self._runtimes:
            name = runtime.spec.name
            call = "pseudo_labels"
            try:
                pretext = runtime.task.pseudo_labels(images, where.random(name, len(images), images.device))
                call = "forward"
                output = runtime.task.forward(self.backbone, runtime.modules, runtime.aux, pretext)
                call = "weighted_total"
                task_loss = runtime.task.weighted_total(output.losses)
            except Exception as error:
                if runtime.origin is None:
                    raise
                raise PluginCodeError(runtime.origin, call, error) from error
            total = total + runtime.spec.weight * task_loss
            task_losses[name] = task_loss
            logged[f"{name}/loss"] = task_loss.detach()
            logged |= {f"{name}/{term}": value.detach() for term, value in output.losses.items()}
            logged |= {
                f"{name}/{metric}": torch.as_tensor(value, device=images.device).detach()
                for metric, value in output.metrics.items()
            }
            outputs.append((runtime, pretext, output))
        logged["loss"] = total.detach()
        return StepResult(total, task_losses, logged, outputs)
