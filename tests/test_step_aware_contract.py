"""The step-aware task contract, proved on a toy with a momentum teacher, a queue and multi-crop views.

:class:`EmaTeacherToy` keeps everything a BYOL/MoCo/DINO-style method keeps: a teacher (a copy of the backbone and
a projector) started from the student in ``setup``, frozen, and moved towards the student after every optimizer
step with a cosine momentum schedule read from the run's clock; a queue of teacher keys in registered buffers;
two global views and two local crops of half the size. The broken variants show each step-aware rule of the
conformance kit failing by name.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from ssl_engine.backbones.base import Backbone
from ssl_engine.images import normalize
from ssl_engine.randomness import BatchRandom
from ssl_engine.run import build_run
from ssl_engine.task import PretextBatch, PretextTask, TaskOutput
from ssl_engine.testing import (
    ConformanceError,
    check_pretext_task,
    check_step_aware,
    prepare,
    run_checkpoint,
    stop_after,
)
from ssl_engine.train.loop import Trainer

BASE_MOMENTUM = 0.9
QUEUE = 8


def momentum_at(progress: float) -> float:
    """BYOL's schedule: from the base momentum at the start to 1 at the end (Grill et al. 2020, sec. 3.2)."""
    return 1 - (1 - BASE_MOMENTUM) * (math.cos(math.pi * progress) + 1) / 2


class EmaTeacherToy(PretextTask):
    """Student and momentum teacher agree on two global views and two local crops (a toy, not a method)."""

    name = "ema_toy"
    summary = "toy: a student matches its momentum teacher across views of two resolutions"
    paper = "(toy of the step-aware contract, after Grill et al. 2020 and Caron et al. 2021)"
    views = 4
    min_image_size = 16
    loss_kind = "regression"
    default_loss = "mse"
    metric = "agreement"

    def build_modules(self) -> nn.ModuleDict:
        dim = self.context.feature_dim
        teacher_backbone = self.context.make_backbone(3)
        teacher_projector = nn.Linear(dim, 8)
        for parameter in [*teacher_backbone.parameters(), *teacher_projector.parameters()]:
            parameter.requires_grad_(False)
        modules = nn.ModuleDict(
            {
                "projector": nn.Linear(dim, 8),
                "teacher_backbone": teacher_backbone,
                "teacher_projector": teacher_projector,
            }
        )
        modules.register_buffer("queue", torch.zeros(QUEUE, 8))
        modules.register_buffer("queue_next", torch.zeros((), dtype=torch.long))
        return modules

    def setup(self, backbone: Backbone, modules: nn.ModuleDict, aux: nn.ModuleDict) -> None:
        modules["teacher_backbone"].load_state_dict(backbone.state_dict())
        modules["teacher_projector"].load_state_dict(modules["projector"].state_dict())

    def pseudo_labels(self, images: torch.Tensor, random: BatchRandom) -> PretextBatch:
        size = images.shape[-1]
        flipped = images.flip(3)
        globals_ = torch.stack([images, flipped], 1).flatten(0, 1)  # (B*2, 3, S, S), sample-major
        corner = random.randint(0, size // 2 + 1, 2, 2)  # (B, 2 crops, y/x)
        rows = torch.arange(size // 2, device=images.device)
        crops = []
        for crop in range(2):
            top, left = corner[:, crop, 0], corner[:, crop, 1]
            y = (top[:, None] + rows).clamp(max=size - 1)  # (B, S/2)
            x = (left[:, None] + rows).clamp(max=size - 1)
            crops.append(images[torch.arange(len(images))[:, None, None], :, y[:, :, None], x[:, None, :]])
        locals_ = torch.stack(crops, 1).permute(0, 1, 4, 2, 3).flatten(0, 1)  # (B*2, 3, S/2, S/2)
        targets = torch.zeros(len(images), device=images.device)
        return PretextBatch(normalize(globals_), targets, views=4, crops=(normalize(locals_.contiguous()),))

    def teacher(self, modules: nn.ModuleDict, views: torch.Tensor) -> torch.Tensor:
        return F.normalize(modules["teacher_projector"](modules["teacher_backbone"].pooled(views)), dim=1)

    def forward(
        self, backbone: Backbone, modules: nn.ModuleDict, aux: nn.ModuleDict, batch: PretextBatch
    ) -> TaskOutput:
        count = len(batch.targets)
        students = [
            F.normalize(modules["projector"](backbone.pooled(views)), dim=1).view(count, -1, 8)
            for views in batch.resolutions()
        ]  # per resolution (B, v, 8)
        with torch.no_grad():
            target = self.teacher(modules, batch.inputs).view(count, -1, 8).mean(1)  # (B, 8)
        student = torch.cat(students, 1)  # (B, 4, 8)
        loss = self.context.loss_fn(student, target[:, None].expand_as(student))
        agreement = (student.detach() * target[:, None]).sum(-1).mean()
        return TaskOutput({"match": loss}, {"agreement": agreement})

    def after_step(
        self, backbone: Backbone, modules: nn.ModuleDict, aux: nn.ModuleDict, batch: PretextBatch, output: TaskOutput
    ) -> None:
        momentum = momentum_at(self.context.clock.progress)
        students = [*backbone.parameters(), *modules["projector"].parameters()]
        teachers = [*modules["teacher_backbone"].parameters(), *modules["teacher_projector"].parameters()]
        for teacher, student in zip(teachers, students, strict=True):
            teacher.mul_(momentum).add_(student.detach(), alpha=1 - momentum)
        keys = self.teacher(modules, batch.inputs[:: batch.views // 2])  # (B, 8): first global view
        start = int(modules.queue_next)
        rows = (start + torch.arange(len(keys), device=keys.device)) % QUEUE
        modules.queue[rows] = keys.float()
        modules.queue_next.fill_((start + len(keys)) % QUEUE)


def test_the_toy_keeps_the_whole_contract_including_the_step_aware_rules() -> None:
    check_pretext_task(EmaTeacherToy)


def test_the_teacher_follows_the_momentum_formula_on_the_clocks_schedule(tmp_path: Path) -> None:
    trainer = prepare(EmaTeacherToy).trainer(tmp_path / "run", steps=5, log_every=1)
    modules = trainer.model.task_modules["ema_toy"]
    assert trainer.model.clock.total == 5
    trained = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in trained for p in modules["teacher_backbone"].parameters())
    assert all(id(p) in trained for p in modules["projector"].parameters())
    for images, _ in trainer.stream.batches(0):
        if trainer.step == 5:
            break
        step = trainer.step
        before = modules["teacher_projector"].weight.detach().clone()
        trainer.device_step(images)
        assert trainer.model.clock.step == step
        m = momentum_at(step / 5)
        expected = m * before + (1 - m) * modules["projector"].weight.detach()
        torch.testing.assert_close(modules["teacher_projector"].weight, expected, rtol=0, atol=1e-7)
    assert int(modules.queue_next) == (5 * 8) % QUEUE and modules.queue.abs().sum() > 0


def test_the_teacher_and_queue_are_checkpointed_and_a_resume_continues_bit_for_bit(tmp_path: Path) -> None:
    straight = prepare(EmaTeacherToy).trainer(tmp_path / "straight", steps=4)
    straight.train()
    stopped = prepare(EmaTeacherToy).trainer(tmp_path / "stopped", steps=4, checkpoint_every=1)
    stop_after(stopped, 2)  # preempted after step 2 of 4
    saved = run_checkpoint(tmp_path / "stopped").tensors
    assert any(key.startswith("task/ema_toy/teacher_backbone.") for key in saved)
    assert "task/ema_toy/queue" in saved and "task/ema_toy/queue_next" in saved
    resumed = Trainer(build_run(stopped.config, stopped.run.registry, tmp_path / "stopped", resume=True))
    assert resumed.step == 2
    resumed.train()
    for key, value in straight.model.state_tensors().items():
        assert torch.equal(value, resumed.model.state_tensors()[key]), key


class UnfrozenTeacherToy(EmaTeacherToy):
    """Broken: the teacher is left trainable, so the main optimizer also moves what after_step sets."""

    name = "unfrozen_toy"

    def build_modules(self) -> nn.ModuleDict:
        modules = super().build_modules()
        for parameter in modules["teacher_projector"].parameters():
            parameter.requires_grad_(True)
        return modules


class ForgetfulToy(EmaTeacherToy):
    """Broken: counts its steps in a plain attribute, which no checkpoint keeps."""

    name = "forgetful_toy"
    calls = 0

    def after_step(self, backbone, modules, aux, batch, output):  # type: ignore[no-untyped-def]
        self.calls += 1
        pairs = zip(modules["teacher_projector"].parameters(), modules["projector"].parameters(), strict=True)
        for teacher, student in pairs:
            teacher.mul_(1 - 0.5**self.calls).add_(student.detach(), alpha=0.5**self.calls)


class NoisyToy(EmaTeacherToy):
    """Broken: its momentum update draws from the global generator."""

    name = "noisy_toy"

    def after_step(self, backbone, modules, aux, batch, output):  # type: ignore[no-untyped-def]
        for teacher in modules["teacher_projector"].parameters():
            teacher.add_(torch.randn_like(teacher) * 1e-3)


class MiscountedCropsToy(EmaTeacherToy):
    """Broken: declares 4 views but returns 2 globals and 1 local crop per image."""

    name = "miscounted_toy"

    def pseudo_labels(self, images: torch.Tensor, random: BatchRandom) -> PretextBatch:
        batch = super().pseudo_labels(images, random)
        return PretextBatch(batch.inputs, batch.targets, views=4, crops=(batch.crops[0][::2],))


@pytest.mark.parametrize(
    ("toy", "rule"),
    [
        (UnfrozenTeacherToy, "teacher-not-optimized"),
        (ForgetfulToy, "state-restored"),
        (NoisyToy, "after-step-deterministic"),
    ],
)
def test_each_step_aware_rule_catches_its_fault(toy: type[PretextTask], rule: str) -> None:
    with pytest.raises(ConformanceError) as raised:
        check_step_aware(toy)
    assert raised.value.rule == rule, str(raised.value)


def test_miscounted_multi_crop_views_are_named() -> None:
    with pytest.raises(ConformanceError) as raised:
        check_pretext_task(MiscountedCropsToy)
    assert raised.value.rule == "crops-shape", str(raised.value)
