"""Tasks with a momentum teacher: BYOL's target network, MoCo's key encoder, DINO's teacher.

:class:`MomentumTeacherTask` holds the teacher's life cycle that these tasks share, as solo-learn's
``BaseMomentumMethod`` does: the teacher starts as the online network (:meth:`~MomentumTeacherTask.setup`) and,
after every optimizer step, follows it as an exponential moving average (:meth:`~MomentumTeacherTask.after_step`)::

    teacher = m * teacher + (1 - m) * online        (He et al. 2020, Eq. 2; Grill et al. 2020, Sec. 3.1)

A task names its teacher's modules and the online module each follows (:attr:`~MomentumTeacherTask.teachers`)
and the momentum at the clock's step (:meth:`~MomentumTeacherTask.momentum`); state that follows the step's
outputs besides the teacher (MoCo's queue, DINO's centre) moves in :meth:`~MomentumTeacherTask.update_buffers`.
The teacher's modules are the task's own, built frozen in ``build_modules`` (:func:`~ssl_engine.momentum.freeze`),
so the checkpoint keeps them and the main optimizer leaves them alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from torch import nn

from ssl_engine.backbones.base import Backbone
from ssl_engine.momentum import copy_weights, ema_update
from ssl_engine.task import PretextBatch, PretextTask, TaskOutput

SHARED_BACKBONE = "backbone"
"""In :attr:`MomentumTeacherTask.teachers`: the online module is the shared backbone (not one of the task's)."""


class MomentumTeacherTask(PretextTask):
    """A task whose frozen teacher follows the online network as an exponential moving average.

    A subclass declares :attr:`teachers` and implements :meth:`momentum` (and :meth:`update_buffers` if it keeps
    more state); :meth:`setup` and :meth:`after_step` are done::

        teachers = {"target_backbone": SHARED_BACKBONE, "target_projector": "projector"}  # BYOL

    Attributes:
        teachers: each frozen teacher module, by its path in the task's modules (``"teacher.head"`` inside a
            ``ModuleDict``), and the online module it starts as and follows: its path, or :data:`SHARED_BACKBONE`.
            They move in this order.
    """

    teachers: ClassVar[Mapping[str, str]]

    def teacher_pairs(self, backbone: Backbone, modules: nn.ModuleDict) -> list[tuple[nn.Module, nn.Module]]:
        """The modules of :attr:`teachers`, ``(teacher, online)`` pairs in its order.

        Args:
            backbone: the shared (online) backbone.
            modules: the task's modules, the frozen teacher's among them.
        """
        return [
            (modules.get_submodule(teacher), backbone if online == SHARED_BACKBONE else modules.get_submodule(online))
            for teacher, online in self.teachers.items()
        ]

    def momentum(self) -> float:
        """The teacher's momentum ``m`` in [0, 1] at the clock's step (``self.context.clock``)."""
        raise NotImplementedError

    def update_buffers(self, modules: nn.ModuleDict, output: TaskOutput) -> None:
        """Move the task's buffers that follow the step's outputs (a queue, a centre), after the teacher moved.

        Args:
            modules: the task's modules, the buffers among them.
            output: the step's :class:`TaskOutput`; ``extras`` carries what the buffers take.

        The default has none.
        """

    def setup(self, backbone: Backbone, modules: nn.ModuleDict, aux: nn.ModuleDict) -> None:
        """The teacher starts as the online network (each paper's Algorithm 1): every pair's weights copied."""
        for teacher, online in self.teacher_pairs(backbone, modules):
            copy_weights(teacher, online)

    def after_step(
        self, backbone: Backbone, modules: nn.ModuleDict, aux: nn.ModuleDict, batch: PretextBatch, output: TaskOutput
    ) -> None:
        """Move the teacher towards the online network just updated, ``teacher = m teacher + (1 - m) online`` with
        ``m = self.momentum()``; then :meth:`update_buffers`."""
        momentum = self.momentum()
        for teacher, online in self.teacher_pairs(backbone, modules):
            ema_update(teacher, online, momentum)
        self.update_buffers(modules, output)
