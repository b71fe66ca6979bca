"""Momentum (exponential moving average) teachers: BYOL's target network, MoCo's key encoder, DINO's teacher.

A teacher is a copy of the student with ``requires_grad=False`` (so the main optimizer leaves it alone, and the
checkpoint still saves it as part of the task's modules), started equal to the student in
:meth:`~ssl_engine.task.PretextTask.setup` and moved towards it after every optimizer step in
:meth:`~ssl_engine.task.PretextTask.after_step`::

    teacher = m * teacher + (1 - m) * student        (He et al. 2020, Eq. 2; Grill et al. 2020, Sec. 3.1)

Only parameters follow the student; buffers (batch-norm running statistics) are the teacher's own, computed by its
own forward passes, as in the reference implementations.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def freeze(module: nn.Module) -> nn.Module:
    """``module`` with every parameter's ``requires_grad`` off (a teacher); returned for chaining."""
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


@torch.no_grad()
def copy_weights(teacher: nn.Module, student: nn.Module) -> None:
    """Start ``teacher`` as ``student``: every parameter and buffer copied (the modules must match)."""
    teacher.load_state_dict(student.state_dict())


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher = momentum * teacher + (1 - momentum) * student`` for every parameter, in place, fused.

    Args:
        teacher: the frozen copy.
        student: the trained module of the same structure.
        momentum: in [0, 1]; 1 leaves the teacher as it is, 0 copies the student.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    teachers = [parameter.data for parameter in teacher.parameters()]
    students = [parameter.data for parameter in student.parameters()]
    if len(teachers) != len(students):
        raise ValueError(f"teacher has {len(teachers)} parameters, student {len(students)}")
    torch._foreach_mul_(teachers, momentum)
    torch._foreach_add_(teachers, students, alpha=1.0 - momentum)


def cosine_momentum(base: float, progress: float) -> float:
    """BYOL's schedule: ``1 - (1 - base) * (cos(pi * progress) + 1) / 2``, from ``base`` at the start of training
    (``progress`` 0) to 1 at its end (``progress`` 1) (Grill et al. 2020, Sec. 3.2; DINO uses the same)."""
    progress = min(max(progress, 0.0), 1.0)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0
