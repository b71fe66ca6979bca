"""The conformance kit: the whole pretext-task contract of :mod:`ssl_engine.task`, for a plugin's own tests.

A plugin's test suite calls it on its task class, installed or not::

    from ssl_engine.testing import check_pretext_task
    from sslx_flip.task import FlipTask

    def test_flip_keeps_the_contract() -> None:
        check_pretext_task(FlipTask)

Everything runs on small inputs (4 real images of the embedded ``shapes`` data, 32 px or the task's minimum) on
the CPU, unless ``device=`` says otherwise, through the engine's own model builder
(:class:`~ssl_engine.train.model.PretrainModel` over a registry made by
:meth:`~ssl_engine.plugins.PluginHost.from_plugins`), so a task passes here exactly when the engine can run it.
Each broken rule raises :class:`ConformanceError`, an ``AssertionError`` (pytest shows it as a plain test
failure), whose message starts with the rule's name::

    rule 'targets-shape': task 'flip' returned targets of shape (3,) for a batch of 4 with 1 view(s); expected (4,)

The checks can also be run one at a time (:data:`CHECKS`, e.g. ``check_determinism(FlipTask)``), or on a prepared
:class:`TaskUnderTest` with settings, a head, a loss or the plugin object that registers the task
(:func:`prepare`). A plugin's own behaviour tests can borrow the same set-up: ``prepare(FlipTask).build()`` is a
built model and the task's runtime (its instance, modules and aux), ``prepare(FlipTask).images`` real images,
``prepare(FlipTask).trainer(tmp_path)`` the engine's trainer for whole steps on 32 images.

Helpers for the behaviour tests that every plugin writes:

- :func:`task_instance` ``(FlipTask, 48, permutations=30)``: the task object as the engine builds it (settings
  validated, its default head and loss, ``ImageSizeError``/``SettingError`` as the command line raises them), on the
  kit's 32-d convnet; ``task.context.make_backbone(3)`` is a backbone that fits it. :func:`pretext_batch`
  ``(task, images, step=3)`` is its pseudo-labels of a whole batch in one process, on images of your own or the
  kit's: :func:`block_images` ``(4, 32)``, random colours constant over 4 px squares.
- :func:`pretrain_cli` ``(tmp_path, "flip", "--steps", "5")``: ``sslx pretrain`` run in this process (click's
  ``CliRunner``) with small defaults; returns the run directory. :func:`checkpoint_keys` (``run``) names the tensors
  of its newest checkpoint, :func:`run_checkpoint` (``run``, ``step``) reads one, :func:`resumed_trainer`
  (``run``, ``steps``) is the engine's trainer as ``--resume`` starts it, :func:`assert_resumes_exactly` (``run``)
  checks that it starts with every module and optimizer state as saved, and :func:`stop_after` (``trainer``,
  ``steps``) interrupts a run of the process's own. :func:`run_cli` runs any other command (a refusal:
  ``run_cli("pretrain", ...).exit_code == 2``).
- :func:`spawn_ranks` ``(rank_result, tmp_path)``: ``rank_result(rank)`` in two processes joined in a gloo process
  group (the CPU), each one's result back in the test, for comparing a distributed computation with one process.
- :func:`check_adversarial_branch` ``(InpaintingTask, images, tmp_path)``: a task's ``adversarial`` setting adds the
  core's discriminator, its terms and its optimizer, and nothing without it; :func:`assert_adversarial_run_resumes`
  ``(tmp_path, "inpainting", sslx_inpainting.plugin)``: the same branch through the command line, checkpointed and
  resumed.
- For the Lab colour tasks: :func:`lightness_twins` ``(images)``, two colourings of one lightness;
  :func:`block_means` ``(values, 4)``, the plain reference of targets on a decoder's output grid;
  :func:`assert_nearest_ab_bins` ``(classes, ab)``, classes checked against all the ab bins.
- :class:`CommandLineTests`: the real command line on an installed task in fresh processes (``sslx show``, refused
  settings, a run mixed with rotation), inherited by a plugin's ``class TestCommandLine(CommandLineTests)``.
- For two-view tasks (:class:`~ssl_engine.api.TwoViewTask`): :func:`assert_two_view_batch` ``(task, images)``, its
  views and twin targets; :func:`rank_two_view_check` with :func:`assert_two_view_check_matches`, two processes
  against one on the loss of gathered embeddings and on a whole step. For momentum teachers:
  :func:`assert_teachers_follow` ``(trainer, pairs, momentum)``, the EMA after every step.
- :func:`cli_plugins` (``("flip", sslx_flip.plugin)``): a block in which the command line sees these plugin objects
  and the kit's own pieces (:data:`REFERENCE_TASK`, :data:`KIT_DATA`, :data:`KIT_BACKBONE`) instead of the installed
  plugins: the real command line on a task that is not installed, or the core's tests on the reference task.

The rules, grouped by the check (:data:`CHECKS`) that first enforces them:

=========================== =========================================================================================
rule                        what it asks of a task
=========================== =========================================================================================
**declaration**
``declaration``             the class attributes make a usable task (:meth:`PretextTask.check_declaration`)
``registration``            its plugin registers it under its ``name`` without problems
``description``             ``summary`` and ``paper`` are filled in
``image-size``              images below ``min_image_size`` are refused naming the minimum; the default is not below it
``color``                   a task that ``needs_color`` refuses grayscale data
**pseudo-labels**
``build``                   the engine builds it (settings, head, loss); its modules are ``nn.ModuleDict`` objects
``pseudo-labels``           ``pseudo_labels`` runs and returns a :class:`PretextBatch`
``images-untouched``        the images given are not modified in place (other tasks of a mix see them next)
``views``                   ``batch.views`` is the declared ``views`` (or 1)
``inputs-shape``            inputs are ``(B * views, C, h, w)``
``inputs-dtype``            inputs are floating point
``inputs-finite``           inputs hold no NaN or infinity
``inputs-normalised``       inputs are ready for the network (normalised), not images in [0, 1]
``targets-shape``           targets have one row per image ``(B, ...)`` or per view ``(B * views, ...)``
``targets-dtype``           classification targets are int64
``targets-finite``          floating-point targets hold no NaN or infinity
``device``                  every tensor it makes (views, targets, extras, losses, features) is on the images' device
**determinism**
``deterministic``           the same (seed, step, stream) gives identical pseudo-labels, whatever the global RNGs hold
``varies-with-step``        a task drawing from its ``BatchRandom`` gets other pseudo-labels at other steps
``global-batch``            two processes holding half the batch each make what one process with the whole batch makes
**forward**
``forward``                 ``forward`` runs and returns a :class:`TaskOutput`
``loss-terms``              at least one named loss term; ``loss_weights`` are finite numbers
``loss-scalar``             every loss term is a floating-point scalar (0-dim tensor)
``loss-finite``             every loss term is finite
``metric``                  the pretext metric (``metric``) is among the metrics; metrics are detached scalars
``predictions``             a classification task returns its logits ``(N, K, ...)`` as predictions
``targets-range``           classification targets lie in ``[0, K)``
``gradients-to-backbone``   the weighted loss back-propagates into every parameter of the backbone
**aux**
``aux-losses``              aux loss terms are finite scalars
``aux-only``                aux losses train only the aux modules (main outputs detached)
``aux-trained``             aux modules with parameters get gradients from the aux losses
**representation**
``representation``          ``representation`` returns a module with an integer ``feature_dim``
``representation-shape``    it maps ``(B, 3, S, S)`` images to ``(B, feature_dim)``
``representation-finite``   its features hold no NaN or infinity
**draw**
``draw``                    ``draw`` pictures the pretext batch (a PIL image) before training and with an output
**checkpoint**
``checkpoint-roundtrip``    modules and aux saved as a checkpoint (safetensors) and loaded into a fresh build give
                            identical pseudo-labels, losses, predictions and features
**mix**
``mix``                     the task builds and trains beside another task on one shared backbone
``mix-isolated``            in a mix it computes exactly what it computes alone
``mix-refused``             a task declaring ``shares_backbone = False`` is refused in a mix (``RunSetupError``)
**step-aware** (whole training steps through the engine's trainer on the kit's data; for tasks that override
``after_step`` or ``setup``, keep buffers or freeze parameters)
``crops-shape``             multi-crop views are ``(B * v, C, h, w)`` per resolution, their views adding up to
                            ``views`` (checked with the pseudo-labels)
``teacher-not-optimized``   parameters the task freezes (``requires_grad=False``: a momentum teacher) are not in the
                            main optimizer; every other parameter is
``after-step-deterministic`` the same run trained twice ends in the same state, buffers and teachers included,
                            whatever the global RNGs hold
``state-restored``          a run stopped after a checkpoint and resumed ends bit for bit in the state of an
                            uninterrupted one (teachers, queues, centres included)
=========================== =========================================================================================
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random as python_random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import Any, NoReturn, TypedDict, TypeVar, Unpack

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from click.testing import CliRunner, Result
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ssl_engine import plugins as plugin_host
from ssl_engine.adversarial import discriminator_loss, generator_loss
from ssl_engine.backbones.base import Backbone
from ssl_engine.backbones.smallconv import SmallConvNet
from ssl_engine.checkpoint import (
    LoadedCheckpoint,
    checkpoint_path,
    latest_checkpoint,
    optimizer_tensors,
    read_checkpoint,
)
from ssl_engine.cli import main as sslx_main
from ssl_engine.color.ab_bins import ab_bins
from ssl_engine.color.lab import lab_to_rgb, rgb_to_lab
from ssl_engine.config import PretrainConfig, TaskSpec
from ssl_engine.data.shapes import ShapesDataset
from ssl_engine.distributed import gather_from_all_ranks
from ssl_engine.hookspecs import hookimpl
from ssl_engine.images import normalize, to_float
from ssl_engine.plugins import PluginHost
from ssl_engine.randomness import BatchRandom
from ssl_engine.registry import Registry
from ssl_engine.run import build_run
from ssl_engine.run_directory import saved_config, write_config
from ssl_engine.settings import SettingError, resolve_settings
from ssl_engine.task import ImageSizeError, PretextBatch, PretextTask, TaskOutput, accuracy
from ssl_engine.train.loop import Trainer
from ssl_engine.train.model import PretrainModel, RunSetupError, TaskRuntime, build_model
from ssl_engine.train.sync_batchnorm import convert_to_global_batchnorm

__all__ = [
    "CHECKS",
    "KIT_BACKBONE",
    "KIT_DATA",
    "KitOptions",
    "REFERENCE_PLUGIN",
    "REFERENCE_TASK",
    "RULES",
    "ConformanceError",
    "ReferenceTask",
    "TaskUnderTest",
    "assert_adversarial_run_resumes",
    "assert_nearest_ab_bins",
    "assert_resumes_exactly",
    "block_images",
    "block_means",
    "check_adversarial_branch",
    "check_aux",
    "check_checkpoint",
    "check_declaration",
    "check_determinism",
    "check_draw",
    "check_forward",
    "check_mix",
    "check_pretext_task",
    "check_pseudo_labels",
    "check_representation",
    "check_step_aware",
    "checkpoint_keys",
    "cli_plugins",
    "prepare",
    "pretext_batch",
    "pretrain_cli",
    "resumed_trainer",
    "run_checkpoint",
    "run_cli",
    "TaskStep",
    "CommandLineTests",
    "Refusal",
    "assert_two_view_batch",
    "assert_two_view_check_matches",
    "rank_two_view_check",
    "assert_rank_losses_match",
    "assert_refused_before_training",
    "assert_show_draws",
    "assert_steps_match",
    "assert_teachers_follow",
    "assert_tensors_close",
    "random_images",
    "mixed_run",
    "rank_rows",
    "rank_sgd_step",
    "sgd_step",
    "spawn_ranks",
    "sslx_process",
    "stop_after",
    "lightness_twins",
    "task_instance",
    "trained_state",
    "twin_embeddings",
]

RULES: dict[str, str] = {
    "declaration": "the class attributes make a usable task",
    "registration": "its plugin registers it under its name without problems",
    "description": "summary and paper are filled in",
    "image-size": "images below min_image_size are refused naming the minimum; the default is not below it",
    "color": "a task that needs_color refuses grayscale data",
    "build": "the engine builds it; its modules are nn.ModuleDicts",
    "pseudo-labels": "pseudo_labels runs and returns a PretextBatch",
    "images-untouched": "the images given are not modified in place",
    "views": "batch.views is the declared views (or 1)",
    "inputs-shape": "inputs are (B * views, C, h, w)",
    "inputs-dtype": "inputs are floating point",
    "inputs-finite": "inputs hold no NaN or infinity",
    "inputs-normalised": "inputs are normalised, not images in [0, 1]",
    "targets-shape": "targets have one row per image or per view",
    "targets-dtype": "classification targets are int64",
    "targets-finite": "floating-point targets hold no NaN or infinity",
    "device": "every tensor made is on the images' device",
    "deterministic": "the same (seed, step, stream) gives identical pseudo-labels",
    "varies-with-step": "a task drawing from its BatchRandom gets other pseudo-labels at other steps",
    "global-batch": "two halves of the global batch make what the whole batch makes",
    "forward": "forward runs and returns a TaskOutput",
    "loss-terms": "at least one named loss term; loss_weights are finite numbers",
    "loss-scalar": "every loss term is a floating-point scalar",
    "loss-finite": "every loss term is finite",
    "metric": "the pretext metric is among the metrics; metrics are detached scalars",
    "predictions": "a classification task returns its logits (N, K, ...) as predictions",
    "targets-range": "classification targets lie in [0, K)",
    "gradients-to-backbone": "the weighted loss back-propagates into every parameter of the backbone",
    "aux-losses": "aux loss terms are finite scalars",
    "aux-only": "aux losses train only the aux modules",
    "aux-trained": "aux modules with parameters get gradients from the aux losses",
    "representation": "representation returns a module with an integer feature_dim",
    "representation-shape": "it maps (B, 3, S, S) images to (B, feature_dim)",
    "representation-finite": "its features hold no NaN or infinity",
    "draw": "draw pictures the pretext batch (a PIL image) before training and with an output",
    "checkpoint-roundtrip": "a checkpoint loaded into a fresh build gives identical outputs",
    "mix": "the task builds and trains beside another task on one shared backbone",
    "mix-isolated": "in a mix it computes exactly what it computes alone",
    "mix-refused": "a task declaring shares_backbone = False is refused in a mix",
    "crops-shape": "multi-crop views are (B * v, C, h, w) per resolution, their views adding up to views",
    "teacher-not-optimized": "parameters a task freezes (requires_grad=False, a teacher) are not in the main "
    "optimizer; every other parameter is",
    "after-step-deterministic": "the same run trained twice ends in the same state, buffers and teachers included",
    "state-restored": "a run stopped and resumed from a checkpoint ends in the state of an uninterrupted one",
}

PLUGIN_UNDER_TEST = "under-test"
TaskT = TypeVar("TaskT", bound=PretextTask)
REFERENCE_TASK = "kit_reference"
# Steps tried before concluding that a task's draws never reach its pseudo-labels: with a coin per image and
# B = 4 images, two steps agree by chance with probability 1/16, eight steps all agree with about 1e-10.
OTHER_STEPS = 8
SEED = 0
STEP = 7
# Results computed twice from the same weights may differ in the last bits (kernels pick algorithms per shape).
RTOL, ATOL = 1e-5, 1e-6


class ConformanceError(AssertionError):
    """A task broke a rule of the contract; the message starts with ``rule '<rule>': task '<name>'``.

    Attributes:
        rule: the rule broken, a key of :data:`RULES`.
        task: the task's name.
    """

    def __init__(self, rule: str, task: str, detail: str) -> None:
        self.rule, self.task = rule, task
        super().__init__(f"rule {rule!r}: task {task!r} {detail}")


class ReferenceTask(PretextTask):
    """A tiny known-good task the kit mixes the task under test with: was each image turned upside down?

    Views: 1 per image; targets ``(B,)`` int64, 1 where the image was flipped vertically; a classifier on the
    pooled features; cross-entropy term ``upside_down``; metric ``accuracy``.
    """

    name = REFERENCE_TASK
    summary = "conformance-kit reference: was the image turned upside down?"
    paper = "(none: the reference task of ssl_engine.testing)"
    views = 1
    min_image_size = 8

    def build_modules(self) -> nn.ModuleDict:
        return nn.ModuleDict({"head": self.context.make_head(self.context.feature_dim, 2)})

    def pseudo_labels(self, images: torch.Tensor, random: BatchRandom) -> PretextBatch:
        flipped = random.bernoulli(0.5)  # (B,)
        views = torch.where(flipped[:, None, None, None], images.flip(2), images)  # (B, 3, S, S)
        return PretextBatch(normalize(views), flipped.long())

    def forward(
        self, backbone: Backbone, modules: nn.ModuleDict, aux: nn.ModuleDict, batch: PretextBatch
    ) -> TaskOutput:
        logits = modules["head"](backbone.pooled(batch.inputs))  # (B, 2)
        loss = self.context.loss_fn(logits.float(), batch.targets)
        return TaskOutput({"upside_down": loss}, {"accuracy": accuracy(logits, batch.targets)}, logits)


KIT_DATA = "kit-shapes"
KIT_DATA_IMAGES = 32
KIT_BACKBONE = "kit-smallconv"
KIT_BACKBONE_WIDTH = 4  # SmallConvNet(width=4): 32-d features, stride 8


class _ReferencePlugin:
    """The kit's reference task, data (:data:`KIT_DATA`: 32 shapes images) and backbone (:data:`KIT_BACKBONE`: the
    small convnet at a width of 4, 32-d); without the task when the task under test is the reference itself."""

    def __init__(self, with_task: bool = True) -> None:
        self.with_task = with_task

    @hookimpl
    def register_tasks(self, register: Callable[[type], None]) -> None:
        if self.with_task:
            register(ReferenceTask)

    @hookimpl
    def register_datasets(self, register: Callable[..., None]) -> None:
        # A few images of the embedded data, so a trainer made by TaskUnderTest.trainer starts in a moment.
        register(KIT_DATA, lambda split, image_size, options: ShapesDataset(split, image_size, size=KIT_DATA_IMAGES))

    @hookimpl
    def register_backbones(self, register: Callable[..., None]) -> None:
        # Eight times fewer channels than `smallconv`: behaviour tests of a task build it in a moment.
        register(KIT_BACKBONE, lambda in_channels, image_size: SmallConvNet(in_channels, width=KIT_BACKBONE_WIDTH))


REFERENCE_PLUGIN: object = _ReferencePlugin()
"""The plugin object registering the kit's reference task, :data:`KIT_DATA` and :data:`KIT_BACKBONE`."""


class _PluginOf:
    """An inline plugin registering one task class (the task under test, installed or not)."""

    def __init__(self, task_class: type[PretextTask]) -> None:
        self.task_class = task_class

    @hookimpl
    def register_tasks(self, register: Callable[[type], None]) -> None:
        register(self.task_class)


class _RecordingRandom(BatchRandom):
    """A :class:`BatchRandom` that notes whether anything was drawn from it or from its split streams."""

    drawn: list[bool]

    def _slice(self, values: torch.Tensor) -> torch.Tensor:
        self.drawn[0] = True
        return super()._slice(values)

    def split(self, stream: str) -> BatchRandom:
        child = _RecordingRandom.__new__(_RecordingRandom)
        child.__dict__.update(super().split(stream).__dict__)
        child.drawn = self.drawn
        return child


@dataclass
class TaskUnderTest:
    """A task class with everything the checks need: a registry holding it, real images, the options.

    Build one with :func:`prepare`. Models are built fresh by each check (:meth:`build`), so checks don't
    depend on one another.

    Attributes:
        task_class: the task checked.
        batch: images per batch ``B``.
        image_size: side ``S`` of the images.
        settings: task settings, as ``--set`` would give them.
        head: a registered head to use instead of the task's default.
        loss: a registered loss to use instead of the task's default.
        plugin: the plugin object registering the task (default: an inline one registering just the class).
        device: where everything runs.
        backbone: the registered backbone the task runs on (default: the engine's default, ``smallconv``), e.g.
            ``timm:vit_tiny_patch16_224?depth=2`` for a task that needs a vision transformer.
    """

    task_class: type[PretextTask]
    batch: int
    image_size: int
    settings: dict[str, Any] = field(default_factory=dict)
    head: str | None = None
    loss: str | None = None
    plugin: object | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backbone: str | None = None

    def config(self, tasks: list[TaskSpec], **fields: Any) -> PretrainConfig:
        """A config of ``tasks`` on the subject's backbone (``fields``: more config fields)."""
        if self.backbone is not None:
            fields["backbone"] = self.backbone
        return PretrainConfig(tasks, **fields)

    @property
    def name(self) -> str:
        return self.task_class.name

    def fail(self, rule: str, detail: str) -> NoReturn:
        """Raise the :class:`ConformanceError` of ``rule``."""
        raise ConformanceError(rule, self.name, detail)

    def require_same(self, rule: str, difference: str | None, found: str, advice: str) -> None:
        """Raise the :class:`ConformanceError` of ``rule`` when two results that must agree differ.

        Args:
            rule: the rule they keep when they agree.
            difference: where they differ (:func:`_difference`, :func:`_batch_difference`, ...); ``None`` if nowhere.
            found: what the task did, e.g. ``"made different pseudo-labels from the same seed, step and stream"``.
            advice: how a task keeps the rule, shown after the difference.
        """
        if difference is not None:
            self.fail(rule, f"{found} ({difference}); {advice}")

    @cached_property
    def registry(self) -> Registry:
        """The core's pieces, the task's plugin and the kit's reference task."""
        plugin = self.plugin if self.plugin is not None else _PluginOf(self.task_class)
        reference = _ReferencePlugin(with_task=self.task_class is not ReferenceTask)
        host = PluginHost.from_plugins([(PLUGIN_UNDER_TEST, plugin), ("kit-reference", reference)])
        problems = [str(problem) for problem in host.problems if problem.plugin == PLUGIN_UNDER_TEST]
        if problems:
            self.fail("registration", "could not be registered: " + "; ".join(problems))
        if self.name not in host.registry.names("task"):
            self.fail("registration", "is not registered by its plugin (no register(TaskClass) call for it)")
        registered = host.registry.get("task", self.name).obj
        if registered is not self.task_class:
            self.fail("registration", f"is registered as {registered.__qualname__}, not {self.task_class.__qualname__}")
        return host.registry

    @cached_property
    def images(self) -> torch.Tensor:
        """``(B, 3, S, S)`` float images in [0, 1] of the embedded shapes data, on the device."""
        dataset = ShapesDataset("train", self.image_size, size=self.batch)
        return to_float(torch.stack([dataset[i][0] for i in range(self.batch)])).to(self.device)

    @property
    def loss_kind(self) -> str | None:
        """The kind of loss the task takes with these settings (:meth:`PretextTask.loss_choice`)."""
        return self.task_class.loss_choice(resolve_settings(self.name, self.task_class.settings, self.settings))[0]

    def spec(self) -> TaskSpec:
        return TaskSpec(self.name, settings=dict(self.settings), head=self.head, loss=self.loss)

    def trainer(self, out: Path, *, steps: int = 4, batch_size: int = 8, **options: Any) -> Trainer:
        """The engine's own :class:`~ssl_engine.train.loop.Trainer` for the task alone, writing to ``out``.

        It reads 32 images of the embedded data at :attr:`image_size` in the main process, so a behaviour test of
        whole training steps (aux optimizers, logged terms, checkpoints, resuming) starts in a moment; ``options``
        are more :class:`~ssl_engine.config.PretrainConfig` fields (``seed=1``, ``log_every=1``, ...).
        """
        config = self.config(
            [self.spec()],
            data=KIT_DATA,
            image_size=self.image_size,
            batch_size=batch_size,
            steps=steps,
            workers=0,
            device=self.device.type,
            **options,
        )
        return Trainer(build_run(config, self.registry, out))

    def build(self, seed: int = 0) -> tuple[PretrainModel, TaskRuntime]:
        """A fresh model with the task alone, its weights initialised from ``seed``, in training mode."""
        try:
            model = build_model(self.config([self.spec()]), self.registry, self.image_size, seed=seed)
        except ConformanceError:
            raise
        except Exception as error:
            self.fail("build", f"could not be built: {type(error).__name__}: {error}")
        [runtime] = model.runtimes
        for what, modules in (("build_modules", runtime.modules), ("build_aux_modules", runtime.aux)):
            if not isinstance(modules, nn.ModuleDict):
                self.fail("build", f"{what} returned {type(modules).__name__}, expected nn.ModuleDict")
        return model.to(self.device).train(), runtime

    def random(
        self, step: int = STEP, *, seed: int = SEED, local_batch: int | None = None, offset: int = 0
    ) -> _RecordingRandom:
        """The task's :class:`BatchRandom` at ``step``, as the trainer makes it (a slice with ``local_batch``)."""
        local = self.batch if local_batch is None else local_batch
        random = _RecordingRandom(
            seed, step, self.name, local, global_batch=self.batch, offset=offset, device=self.device
        )
        random.drawn = [False]
        return random

    def pseudo_labels(self, task: PretextTask, images: torch.Tensor, random: BatchRandom) -> PretextBatch:
        """``task.pseudo_labels`` with failures turned into the ``pseudo-labels`` rule."""
        try:
            batch = task.pseudo_labels(images, random)
        except Exception as error:
            self.fail("pseudo-labels", f"raised {type(error).__name__} in pseudo_labels: {error}")
        if not isinstance(batch, PretextBatch):
            self.fail("pseudo-labels", f"returned {type(batch).__name__} from pseudo_labels, expected PretextBatch")
        return batch

    def forward(self, model: PretrainModel, runtime: TaskRuntime, batch: PretextBatch) -> TaskOutput:
        """``task.forward`` (with the global RNG seeded, for dropout) with failures turned into rules."""
        torch.manual_seed(SEED)
        try:
            output = runtime.task.forward(model.backbone, runtime.modules, runtime.aux, batch)
        except Exception as error:
            self.fail("forward", f"raised {type(error).__name__} in forward: {error}")
        if not isinstance(output, TaskOutput):
            self.fail("forward", f"returned {type(output).__name__} from forward, expected TaskOutput")
        return output

    def on_device(self, what: str, tensor: torch.Tensor) -> None:
        if tensor.device != self.device:
            self.fail("device", f"made {what} on {tensor.device}, but the images are on {self.device}")


class KitOptions(TypedDict, total=False):
    """How the kit sets a task up: the keyword arguments of :func:`prepare`, which
    :func:`check_pretext_task` passes on (each described, with its default, in :func:`prepare`)."""

    image_size: int | None
    batch: int
    settings: Mapping[str, Any] | None
    head: str | None
    loss: str | None
    plugin: object | None
    device: torch.device | str
    backbone: str | None


def prepare(
    task_class: type[PretextTask],
    *,
    image_size: int | None = None,
    batch: int = 4,
    settings: Mapping[str, Any] | None = None,
    head: str | None = None,
    loss: str | None = None,
    plugin: object | None = None,
    device: torch.device | str = "cpu",
    backbone: str | None = None,
) -> TaskUnderTest:
    """Get a task class ready for the checks.

    Args:
        task_class: the :class:`PretextTask` subclass, installed or not.
        image_size: image side; default ``max(min_image_size, 32)``.
        batch: images per batch (at least 2: the global-batch check splits it in two halves).
        settings: task settings (``{"permutations": 30}``), validated as ``--set`` values are.
        head: a registered head to give the task (``--head``).
        loss: a registered loss to give the task (``--loss``).
        plugin: the plugin object that registers the task (e.g. the ``sslx_mytask.plugin`` module), needed when
            the task uses heads or losses its plugin registers; default an inline plugin registering the class.
        device: where to run (``"cuda"`` checks the device rule on a GPU).
        backbone: a registered backbone to run the task on (default ``smallconv``), e.g.
            ``"timm:vit_tiny_patch16_224?depth=2"`` for a task that needs a vision transformer (MAE).

    Returns:
        The :class:`TaskUnderTest` the ``check_*`` functions take.
    """
    if not (isinstance(task_class, type) and issubclass(task_class, PretextTask)):
        raise TypeError(f"the conformance kit checks PretextTask subclasses, got {task_class!r}")
    if batch < 2:
        raise ValueError(f"batch must be at least 2 (the global-batch check halves it), got {batch}")
    size = image_size if image_size is not None else max(task_class.min_image_size, 32)
    return TaskUnderTest(
        task_class,
        batch,
        size,
        dict(settings or {}),
        head,
        loss,
        plugin,
        device=_explicit_device(torch.device(device)),
        backbone=backbone,
    )


def _explicit_device(device: torch.device) -> torch.device:
    """``cuda`` as ``cuda:N`` (the current device), as the tensors made there say, so the device rule compares
    like with like."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


Subject = TaskUnderTest | type[PretextTask]


def _subject(task: Subject) -> TaskUnderTest:
    return task if isinstance(task, TaskUnderTest) else prepare(task)


@contextlib.contextmanager
def _global_state_kept() -> Iterator[None]:
    """Run a check on one CPU thread, restoring the caller's thread count and global RNG states afterwards.

    The checks reseed the global RNGs. One thread is as fast as several on inputs this small, and much faster when
    test processes share the cores (spinning worker threads then fight over them).
    """
    torch_state = torch.get_rng_state()
    python_state = python_random.getstate()
    numpy_state = np.random.get_state()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.set_rng_state(torch_state)
        python_random.setstate(python_state)
        np.random.set_state(numpy_state)


def _scramble_global_rngs(seed: int) -> None:
    """Put every global RNG a task might wrongly draw from into a state of its own."""
    torch.manual_seed(seed)
    python_random.seed(seed)
    np.random.seed(seed)


def _shape(tensor: torch.Tensor) -> str:
    return str(tuple(tensor.shape))


def _difference(a: torch.Tensor, b: torch.Tensor, *, exact: bool, scaled: bool = False) -> str | None:
    """How ``b`` differs from ``a`` (``None`` when equal, exactly or within the tolerances; ``scaled``: the absolute
    tolerance grows with the tensor's largest value, for values computed through intermediates of that size)."""
    if a.shape != b.shape:
        return f"shape {_shape(a)} vs {_shape(b)}"
    if a.dtype != b.dtype:
        return f"dtype {a.dtype} vs {b.dtype}"
    atol = ATOL * max(1.0, float(a.detach().abs().nan_to_num(0.0).max())) if scaled and a.numel() else ATOL
    if a.is_floating_point() and not exact:
        if torch.allclose(a, b, rtol=RTOL, atol=atol, equal_nan=True):
            return None
    elif torch.equal(a, b):
        return None
    differ = a != b if not a.is_floating_point() else ~torch.isclose(a, b, rtol=RTOL, atol=atol, equal_nan=True)
    detail = f"{int(differ.sum())} of {a.numel()} values differ"
    if a.is_floating_point():
        detail += f", by up to {float((a.float() - b.float()).abs().nan_to_num(float('inf')).max()):.3g}"
    return detail


def _batch_difference(a: PretextBatch, b: PretextBatch, *, extras: bool = True) -> str | None:
    for what, first, second in (("inputs", a.inputs, b.inputs), ("targets", a.targets, b.targets)):
        difference = _difference(first, second, exact=True)
        if difference is not None:
            return f"{what}: {difference}"
    if len(a.crops) != len(b.crops):
        return f"crops: {len(a.crops)} vs {len(b.crops)} resolutions"
    for index, (first, second) in enumerate(zip(a.crops, b.crops, strict=True)):
        difference = _difference(first, second, exact=True)
        if difference is not None:
            return f"crops[{index}]: {difference}"
    if a.views != b.views:
        return f"views: {a.views} vs {b.views}"
    if extras:
        if set(a.extras) != set(b.extras):
            return f"extras keys: {sorted(a.extras)} vs {sorted(b.extras)}"
        for key in a.extras:
            difference = _difference(a.extras[key], b.extras[key], exact=True)
            if difference is not None:
                return f"extras[{key!r}]: {difference}"
    return None


# --- declaration ---------------------------------------------------------------------------------------------------
def check_declaration(task: Subject) -> None:
    """The class attributes, the registration, and the refusal of data the task can't use.

    Rules: ``declaration``, ``registration``, ``description``, ``image-size``, ``color``.
    """
    subject = _subject(task)
    cls = subject.task_class
    try:
        cls.check_declaration()
    except Exception as error:
        subject.fail("declaration", f"has an invalid declaration: {error}")
    subject.registry  # noqa: B018 - building it checks the registration
    for attribute in ("summary", "paper"):
        if not isinstance(getattr(cls, attribute), str) or not getattr(cls, attribute).strip():
            subject.fail("description", f"has no `{attribute}` (one line for listings / the paper it implements)")
    if cls.default_image_size < cls.min_image_size:
        subject.fail(
            "image-size",
            f"has default_image_size {cls.default_image_size} below its min_image_size {cls.min_image_size}",
        )
    too_small = cls.min_image_size - 1
    try:
        cls.check_images(too_small)
    except ImageSizeError as error:
        if str(cls.min_image_size) not in str(error):
            subject.fail("image-size", f"refuses {too_small} px images without naming its minimum: {error}")
    else:
        subject.fail("image-size", f"accepts {too_small} px images, below its min_image_size {cls.min_image_size}")
    if cls.needs_color:
        try:
            cls.check_images(max(cls.min_image_size, cls.default_image_size), channels_are_color=False)
        except ImageSizeError:
            pass
        else:
            subject.fail("color", "declares needs_color but accepts grayscale data")


# --- pseudo-labels -------------------------------------------------------------------------------------------------
def check_pseudo_labels(task: Subject) -> None:
    """Shapes, dtypes, device and finiteness of what ``pseudo_labels`` makes, and the images left untouched.

    Rules: ``build``, ``pseudo-labels``, ``images-untouched``, ``views``, ``inputs-*``, ``targets-shape``,
    ``targets-dtype``, ``targets-finite``, ``device``.
    """
    subject = _subject(task)
    with _global_state_kept():
        _, runtime = subject.build()
        images = subject.images.clone()
        batch = subject.pseudo_labels(runtime.task, images, subject.random())
    if not torch.equal(images, subject.images):
        subject.fail(
            "images-untouched",
            "modified the images given to pseudo_labels in place; the other tasks of a mixed run see the same "
            "tensor next (work on a copy, e.g. `images.flip(2)` instead of `images.flip_(2)`)",
        )
    _check_pretext_batch(subject, batch, subject.batch, runtime.task.views)


def _check_pretext_batch(subject: TaskUnderTest, batch: PretextBatch, images: int, declared: int) -> None:
    """``declared``: the task's ``views``, the instance's (a setting may change it, as DINO's ``local_crops``)."""
    if batch.views not in (1, declared):
        subject.fail("views", f"returned views={batch.views}; it declares views={declared} (or 1 may be returned)")
    inputs, targets = batch.inputs, batch.targets
    for what, tensor in (("inputs", inputs), ("targets", targets)):
        if not isinstance(tensor, torch.Tensor):
            subject.fail("pseudo-labels", f"returned {what} of type {type(tensor).__name__}, expected a tensor")
    for key, value in batch.extras.items():
        if not isinstance(value, torch.Tensor):
            subject.fail("pseudo-labels", f"returned extras[{key!r}] of type {type(value).__name__}, expected a tensor")
    rows = images * batch.views
    if batch.crops:
        _check_crops(subject, batch, images)
        rows = inputs.shape[0]  # the first resolution's views: checked with the crops
    if inputs.ndim != 4 or inputs.shape[0] != rows:
        subject.fail(
            "inputs-shape",
            f"returned inputs of shape {_shape(inputs)} for a batch of {images} with {batch.views} view(s); "
            f"expected ({rows}, C, h, w), the views stacked sample-major on the batch axis",
        )
    if not inputs.is_floating_point():
        subject.fail("inputs-dtype", f"returned inputs of dtype {inputs.dtype}; the network needs floats")
    if not torch.isfinite(inputs).all():
        subject.fail("inputs-finite", f"returned inputs with {int((~torch.isfinite(inputs)).sum())} NaN/inf values")
    if inputs.min() >= 0 and inputs.max() <= 1:
        subject.fail(
            "inputs-normalised",
            "returned inputs that all lie in [0, 1], i.e. not normalised; pass them through "
            "ssl_engine.images.normalize (or standardise them) so they are ready for the network",
        )
    per_sample = sorted({images, rows})
    if targets.ndim == 0 or targets.shape[0] not in per_sample:
        if subject.loss_kind == "classification" and targets.ndim <= 1:
            expected = " or ".join(f"({n},)" for n in per_sample)
        else:
            expected = "a first axis of " + " or ".join(map(str, per_sample)) + " (one row per image or per view)"
        subject.fail(
            "targets-shape",
            f"returned targets of shape {_shape(targets)} for a batch of {images} with {batch.views} view(s); "
            f"expected {expected}",
        )
    if subject.loss_kind == "classification" and targets.dtype != torch.long:
        subject.fail("targets-dtype", f"returned classification targets of dtype {targets.dtype}, expected int64")
    if targets.is_floating_point() and not torch.isfinite(targets).all():
        subject.fail("targets-finite", f"returned targets with {int((~torch.isfinite(targets)).sum())} NaN/inf values")
    subject.on_device("its inputs", inputs)
    subject.on_device("its targets", targets)
    for key, value in batch.extras.items():
        subject.on_device(f"extras[{key!r}]", value)


def _check_crops(subject: TaskUnderTest, batch: PretextBatch, images: int) -> None:
    """Rule ``crops-shape``: every resolution's views ``(B * v, C, h, w)``, sample-major, adding up to ``views``."""
    total = 0
    for index, tensor in enumerate(batch.resolutions()):
        if not isinstance(tensor, torch.Tensor) or tensor.ndim != 4 or tensor.shape[0] % images:
            shape = _shape(tensor) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            subject.fail("crops-shape", f"returned views of resolution {index} of shape {shape} for a batch of "
                         f"{images}; expected (B * v, C, h, w)")  # fmt: skip
        if not tensor.is_floating_point() or not torch.isfinite(tensor).all():
            subject.fail("crops-shape", f"returned views of resolution {index} that are not finite floats")
        subject.on_device(f"its views of resolution {index}", tensor)
        total += tensor.shape[0] // images
    if total != batch.views:
        subject.fail("crops-shape", f"returned {total} views per image over its resolutions; views={batch.views}")


# --- determinism ---------------------------------------------------------------------------------------------------
def check_determinism(task: Subject) -> None:
    """Pseudo-labels depend only on (seed, step, stream, place in the global batch).

    Rules: ``deterministic``, ``varies-with-step``, ``global-batch``.
    """
    subject = _subject(task)
    with _global_state_kept():
        _, runtime = subject.build()
        images = subject.images
        first_random = subject.random()
        _scramble_global_rngs(1)
        first = subject.pseudo_labels(runtime.task, images, first_random)
        _scramble_global_rngs(2)
        again = subject.pseudo_labels(runtime.task, images, subject.random())
        subject.require_same(
            "deterministic",
            _batch_difference(first, again),
            "made different pseudo-labels from the same seed, step and stream",
            "draw every random number from the BatchRandom given (not torch.rand, random or numpy)",
        )
        if first_random.drawn[0]:
            for step in range(STEP + 1, STEP + 1 + OTHER_STEPS):
                other = subject.pseudo_labels(runtime.task, images, subject.random(step))
                if _batch_difference(first, other, extras=False) is not None:
                    break
            else:
                subject.fail(
                    "varies-with-step",
                    f"draws from its BatchRandom, yet steps {STEP} to {STEP + OTHER_STEPS} all gave identical inputs "
                    f"and targets: the draws never reach the pseudo-labels",
                )
        half = subject.batch // 2
        parts = [
            subject.pseudo_labels(
                runtime.task, images[start:stop], subject.random(local_batch=stop - start, offset=start)
            )
            for start, stop in ((0, half), (half, subject.batch))
        ]
    for what in ("inputs", "targets"):
        whole: torch.Tensor = getattr(first, what)
        try:
            joined = torch.cat([getattr(part, what) for part in parts])
        except RuntimeError as error:
            subject.fail("global-batch", f"made {what} for two halves of the batch that don't concatenate: {error}")
        # Scaled: a GPU picks kernels by tensor size, so a value computed through intermediates of the tensor's
        # size (colour conversions) can differ by their rounding between the halves and the whole.
        subject.require_same(
            "global-batch",
            _difference(whole, joined, exact=not whole.is_floating_point(), scaled=True),
            f"made {what} for two halves of the batch (BatchRandom with global_batch={subject.batch} and offsets 0, "
            f"{half}) that differ from the whole batch's",
            "draw per sample from the BatchRandom (its rows are the global batch's) and don't mix samples in "
            "pseudo_labels",
        )


# --- forward -------------------------------------------------------------------------------------------------------
def check_forward(task: Subject) -> None:
    """Named finite scalar losses, the pretext metric, targets in range, gradients reaching the backbone.

    Rules: ``forward``, ``loss-terms``, ``loss-scalar``, ``loss-finite``, ``metric``, ``predictions``,
    ``targets-range``, ``gradients-to-backbone``, ``device``.
    """
    subject = _subject(task)
    with _global_state_kept():
        model, runtime = subject.build()
        batch = subject.pseudo_labels(runtime.task, subject.images, subject.random())
        output = subject.forward(model, runtime, batch)
        _check_output(subject, runtime.task, batch, output)
        model.zero_grad(set_to_none=True)
        total = runtime.task.weighted_total(output.losses)
        if not total.requires_grad:
            subject.fail(
                "gradients-to-backbone",
                "returned loss terms that depend on no parameter (detached from the networks)",
            )
        total.backward()
    gradients = dict(model.backbone.named_parameters())
    missing = [name for name, parameter in gradients.items() if parameter.grad is None]
    if missing:
        listed = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        subject.fail(
            "gradients-to-backbone",
            f"gives no gradient to {len(missing)} backbone parameter(s) ({listed}); the loss must come from the "
            f"backbone's features, not detached ones",
        )
    if not any(bool(parameter.grad.any()) for parameter in gradients.values() if parameter.grad is not None):
        subject.fail("gradients-to-backbone", "gives the backbone gradients that are all zero")


def _check_output(subject: TaskUnderTest, task: PretextTask, batch: PretextBatch, output: TaskOutput) -> None:
    losses = output.losses
    if not isinstance(losses, dict) or not losses:
        subject.fail("loss-terms", "returned no loss terms; TaskOutput.losses must name at least one")
    for name, term in losses.items():
        if not isinstance(name, str) or not isinstance(term, torch.Tensor):
            subject.fail("loss-terms", f"returned loss term {name!r} of type {type(term).__name__}; expected a tensor")
        if term.ndim != 0 or not term.is_floating_point():
            subject.fail(
                "loss-scalar",
                f"returned loss term {name!r} of shape {_shape(term)} and dtype {term.dtype}; expected a "
                f"floating-point scalar (reduce it, e.g. with .mean())",
            )
        if not torch.isfinite(term):
            subject.fail("loss-finite", f"returned a non-finite loss term {name!r} = {float(term.detach())}")
        subject.on_device(f"loss term {name!r}", term)
    for name, weight in task.loss_weights.items():
        if not isinstance(weight, int | float) or not np.isfinite(weight):
            subject.fail("loss-terms", f"has loss_weights[{name!r}] = {weight!r}; expected a finite number")
    metric = subject.task_class.metric
    if metric not in output.metrics:
        subject.fail(
            "metric",
            f"declares metric {metric!r} but its forward returned metrics {sorted(output.metrics)}",
        )
    for name, value in output.metrics.items():
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            subject.fail("metric", f"returned metric {name!r} that is not a one-value tensor")
        if value.requires_grad:
            subject.fail("metric", f"returned metric {name!r} attached to the graph; detach metrics (.detach())")
        subject.on_device(f"metric {name!r}", value)
    if not torch.isfinite(output.metrics[metric]).all():
        subject.fail("metric", f"returned a non-finite pretext metric {metric!r} = {float(output.metrics[metric])}")
    predictions = output.predictions
    if predictions is not None:
        subject.on_device("its predictions", predictions)
    if subject.loss_kind != "classification":
        return
    targets = batch.targets
    if predictions is None or predictions.ndim != targets.ndim + 1 or predictions.shape[0] != targets.shape[0]:
        got = "none" if predictions is None else f"shape {_shape(predictions)}"
        subject.fail(
            "predictions",
            f"returned predictions ({got}) that are not logits (N, K, ...) for its targets of shape "
            f"{_shape(targets)}; a classification task returns its logits as TaskOutput.predictions",
        )
    classes = predictions.shape[1]
    low, high = int(targets.min()), int(targets.max())
    if low < 0 or high >= classes:
        subject.fail(
            "targets-range",
            f"returned classification targets in [{low}, {high}] for {classes} classes; expected [0, {classes - 1}]",
        )


# --- aux -----------------------------------------------------------------------------------------------------------
def check_aux(task: Subject) -> None:
    """Aux losses are finite scalars that train the aux modules and nothing else.

    Rules: ``aux-losses``, ``aux-only``, ``aux-trained``.
    """
    subject = _subject(task)
    with _global_state_kept():
        model, runtime = subject.build()
        batch = subject.pseudo_labels(runtime.task, subject.images, subject.random())
        output = subject.forward(model, runtime, batch)
        # As in the trainer: the main step first (freeing its graph), then the aux losses.
        runtime.task.weighted_total(output.losses).backward()
        model.zero_grad(set_to_none=True)
        try:
            terms = runtime.task.aux_losses(runtime.aux, batch, output)
        except Exception as error:
            subject.fail("aux-losses", f"raised {type(error).__name__} in aux_losses: {error}")
        aux_parameters = [parameter for parameter in runtime.aux.parameters() if parameter.requires_grad]
        if not terms:
            if aux_parameters:
                subject.fail(
                    "aux-trained",
                    "has aux modules with parameters but aux_losses returned no terms, so they never train",
                )
            return
        for name, term in terms.items():
            if not isinstance(term, torch.Tensor) or term.ndim != 0 or not term.is_floating_point():
                subject.fail("aux-losses", f"returned aux loss term {name!r} that is not a floating-point scalar")
            if not torch.isfinite(term):
                subject.fail("aux-losses", f"returned a non-finite aux loss term {name!r} = {float(term.detach())}")
            subject.on_device(f"aux loss term {name!r}", term)
        try:
            sum(terms.values(), torch.zeros((), device=subject.device)).backward()
        except RuntimeError as error:
            subject.fail(
                "aux-only",
                f"has aux losses that back-propagate into the main step's graph ({error}); detach what comes from "
                f"the main networks (output.predictions.detach())",
            )
    main = [*model.backbone.named_parameters(), *runtime.modules.named_parameters()]
    touched = [name for name, parameter in main if parameter.grad is not None and bool(parameter.grad.any())]
    if touched:
        subject.fail(
            "aux-only",
            f"has aux losses giving gradients to the main networks ({', '.join(touched[:3])}); detach what comes "
            f"from them (output.predictions.detach())",
        )
    if aux_parameters and not any(p.grad is not None and bool(p.grad.any()) for p in aux_parameters):
        subject.fail("aux-trained", "has aux losses that give its aux modules no gradient")


# --- representation ------------------------------------------------------------------------------------------------
def check_representation(task: Subject) -> None:
    """The downstream features: ``(B, 3, S, S)`` images to finite ``(B, feature_dim)`` on the images' device.

    Rules: ``representation``, ``representation-shape``, ``representation-finite``, ``device``.
    """
    subject = _subject(task)
    with _global_state_kept():
        model, _ = subject.build()
        features = _features(subject, model)
    representation = model.representation()
    dim = representation.feature_dim
    if features.shape != (subject.batch, dim):
        subject.fail(
            "representation-shape",
            f"has a representation giving features of shape {_shape(features)} for {subject.batch} images; expected "
            f"({subject.batch}, {dim}) with its feature_dim {dim}",
        )
    if not torch.isfinite(features).all():
        subject.fail("representation-finite", "has a representation giving NaN/inf features")
    subject.on_device("its features", features)


def _features(subject: TaskUnderTest, model: PretrainModel) -> torch.Tensor:
    try:
        representation = model.representation()
    except Exception as error:
        subject.fail("representation", f"raised {type(error).__name__} in representation: {error}")
    if not isinstance(representation, nn.Module):
        subject.fail("representation", f"returned {type(representation).__name__}, expected an nn.Module")
    dim = getattr(representation, "feature_dim", None)
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        subject.fail("representation", f"returned a representation whose feature_dim is {dim!r}, not a positive int")
    representation.eval()
    try:
        with torch.no_grad():
            features = representation(subject.images)
    except Exception as error:
        subject.fail("representation", f"has a representation that raised {type(error).__name__}: {error}")
    if not isinstance(features, torch.Tensor):
        subject.fail("representation", f"has a representation returning {type(features).__name__}, not a tensor")
    return features


# --- draw ----------------------------------------------------------------------------------------------------------
def check_draw(task: Subject) -> None:
    """``draw`` (what ``sslx show`` displays) gives a picture with no output (before training) and with one.

    Rule: ``draw``.
    """
    subject = _subject(task)
    with _global_state_kept():
        model, runtime = subject.build()
        batch = subject.pseudo_labels(runtime.task, subject.images, subject.random())
        with torch.no_grad():
            output = subject.forward(model.eval(), runtime, batch)
        for when, given in (("before training (output None)", None), ("with the model's output", output)):
            try:
                picture = runtime.task.draw(subject.images, batch, given)
            except Exception as error:
                subject.fail("draw", f"raised {type(error).__name__} in draw {when}: {error}")
            if not isinstance(picture, Image.Image):
                subject.fail("draw", f"returned {type(picture).__name__} from draw {when}, expected a PIL image")


# --- checkpoint ----------------------------------------------------------------------------------------------------
def check_checkpoint(task: Subject) -> None:
    """Modules and aux saved with the checkpoint layout and loaded into a fresh build behave identically.

    Rule: ``checkpoint-roundtrip``.
    """
    subject = _subject(task)
    name = subject.name
    with _global_state_kept(), tempfile.TemporaryDirectory(prefix="sslx-conformance-") as folder:
        saved, saved_runtime = subject.build(seed=1)
        # One forward first, so running statistics and any state the task keeps have moved from their start.
        subject.forward(
            saved, saved_runtime, subject.pseudo_labels(saved_runtime.task, subject.images, subject.random())
        )
        path = Path(folder) / "checkpoint.safetensors"
        tensors = saved.state_tensors()  # what the trainer saves: model/, task/<name>/, aux/<name>/ (module_tensors)
        try:
            save_file({key: value.cpu() for key, value in tensors.items()}, str(path))
        except Exception as error:
            subject.fail("checkpoint-roundtrip", f"has state that safetensors can't save: {error}")
        loaded = load_file(str(path))
        fresh, fresh_runtime = subject.build(seed=2)
        parts = (
            ("model", fresh.backbone),
            (f"task/{name}", fresh_runtime.modules),
            (f"aux/{name}", fresh_runtime.aux),
        )
        for prefix, module in parts:
            state = {key[len(prefix) + 1 :]: value for key, value in loaded.items() if key.startswith(prefix + "/")}
            try:
                module.load_state_dict(state)
            except Exception as error:
                subject.fail(
                    "checkpoint-roundtrip",
                    f"has state saved under {prefix}/ that does not load into a fresh build: {error}",
                )
        batch = subject.pseudo_labels(saved_runtime.task, subject.images, subject.random())
        fresh_batch = subject.pseudo_labels(fresh_runtime.task, subject.images, subject.random())
        subject.require_same(
            "checkpoint-roundtrip",
            _batch_difference(batch, fresh_batch),
            "makes other pseudo-labels once rebuilt",
            "it keeps state outside its modules (not saved) or sets it up from the global RNG: keep state in module "
            "buffers",
        )
        outputs = [subject.forward(saved, saved_runtime, batch), subject.forward(fresh, fresh_runtime, fresh_batch)]
        features = [_features(subject, saved), _features(subject, fresh)]
    comparisons = [
        *((f"loss term {term!r}", outputs[0].losses[term], outputs[1].losses.get(term)) for term in outputs[0].losses),
        ("predictions", outputs[0].predictions, outputs[1].predictions),
        ("representation features", features[0], features[1]),
    ]
    for what, before, after in comparisons:
        if before is None and after is None:
            continue
        if before is None or after is None:
            subject.fail("checkpoint-roundtrip", f"gives {what} only before or only after the round trip")
        subject.require_same(
            "checkpoint-roundtrip",
            _difference(before.detach(), after.detach(), exact=False),
            f"gives other {what} after a checkpoint round trip",
            "everything the task learns or updates must live in its modules (parameters or buffers)",
        )


# --- mix -----------------------------------------------------------------------------------------------------------
def check_mix(task: Subject) -> None:
    """Beside the kit's reference task on one backbone, the task trains and computes what it computes alone;
    a task that can't share the backbone is refused.

    Rules: ``mix``, ``mix-isolated``, ``mix-refused``.
    """
    subject = _subject(task)
    name = subject.name
    if subject.name == REFERENCE_TASK:
        return  # the reference would be mixed with itself
    config = subject.config([TaskSpec(REFERENCE_TASK), subject.spec()])
    with _global_state_kept():
        if not subject.task_class.shares_backbone:
            try:
                build_model(config, subject.registry, subject.image_size)
            except RunSetupError as error:
                if name not in str(error):
                    subject.fail("mix-refused", f"was refused in a mix with a message not naming it: {error}")
                return
            except Exception as error:
                subject.fail(
                    "mix-refused", f"made the mix fail with {type(error).__name__}, not RunSetupError: {error}"
                )
            subject.fail("mix-refused", "declares shares_backbone = False, yet a mixed run with it was built")
        alone, alone_runtime = subject.build()
        try:
            mixed = build_model(config, subject.registry, subject.image_size, seed=3).to(subject.device).train()
        except Exception as error:
            subject.fail("mix", f"could not be built beside another task: {type(error).__name__}: {error}")
        reference, runtime = mixed.runtimes
        try:
            mixed.backbone.load_state_dict(alone.backbone.state_dict())
            runtime.modules.load_state_dict(alone_runtime.modules.state_dict())
            runtime.aux.load_state_dict(alone_runtime.aux.state_dict())
        except Exception as error:
            subject.fail("mix", f"builds different modules beside another task than alone: {error}")
        expected = subject.forward(
            alone, alone_runtime, subject.pseudo_labels(alone_runtime.task, subject.images, subject.random())
        )
        # The trainer's step: every task on the same images, each with its own stream, losses summed.
        images = subject.images
        reference_batch = reference.task.pseudo_labels(
            images, BatchRandom(SEED, STEP, REFERENCE_TASK, subject.batch, device=subject.device)
        )
        reference_output = subject.forward(mixed, reference, reference_batch)
        batch = subject.pseudo_labels(runtime.task, images, subject.random())
        output = subject.forward(mixed, runtime, batch)
        total = reference.task.weighted_total(reference_output.losses) + runtime.task.weighted_total(output.losses)
        if not torch.isfinite(total):
            subject.fail("mix", f"gives a non-finite summed loss in a mix ({float(total)})")
        mixed.zero_grad(set_to_none=True)
        try:
            total.backward()
        except Exception as error:
            subject.fail("mix", f"breaks the backward pass of a mix: {type(error).__name__}: {error}")
    if any(parameter.grad is None for parameter in mixed.backbone.parameters()):
        subject.fail("mix", "leaves backbone parameters without gradient in a mix")
    for term, value in expected.losses.items():
        subject.require_same(
            "mix-isolated",
            _difference(value.detach(), output.losses.get(term, torch.tensor(float("nan"))).detach(), exact=False),
            f"computes loss term {term!r} differently beside another task than alone",
            "it must not depend on the other tasks of the run",
        )


# --- step-aware ----------------------------------------------------------------------------------------------------
def _is_step_aware(subject: TaskUnderTest, model: PretrainModel, runtime: TaskRuntime) -> bool:
    """Does the task keep state across steps (so the whole-training-step rules apply)?"""
    overrides = any(
        getattr(subject.task_class, method) is not getattr(PretextTask, method) for method in ("after_step", "setup")
    )
    frozen = any(not parameter.requires_grad for parameter in runtime.modules.parameters())
    return overrides or frozen


def _final_state(trainer: Trainer) -> dict[str, torch.Tensor]:
    """Everything a checkpoint keeps of the model: backbone, task modules, aux modules (buffers included)."""
    return {key: value.detach().cpu().clone() for key, value in trainer.model.state_tensors().items()}


def _state_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> str | None:
    if a.keys() != b.keys():
        return f"state keys differ: {sorted(set(a) ^ set(b))[:3]}"
    for key in a:
        difference = _difference(a[key], b[key], exact=True)
        if difference is not None:
            return f"{key}: {difference}"
    return None


STEP_AWARE_STEPS = 4


def _stop_after(trainer: Trainer, steps: int) -> None:
    """Train ``steps`` steps of ``trainer``'s budget and checkpoint, as a run stopped there (e.g. preempted)."""
    write_config(trainer.out, trainer.config)
    for images, labels in trainer.stream.batches(trainer.step):
        if trainer.step >= steps:
            break
        trainer.device_step(images, labels)
    trainer.checkpoint()


def check_step_aware(task: Subject) -> None:
    """Whole training steps through the engine's own trainer (on the kit's 32 images): frozen parameters stay out
    of the main optimizer, ``after_step`` and ``setup`` are deterministic, and a resumed run ends where an
    uninterrupted one does, teachers, queues and centres included. Tasks with no state across steps pass at once.

    Rules: ``teacher-not-optimized``, ``after-step-deterministic``, ``state-restored``.
    """
    subject = _subject(task)
    with _global_state_kept():
        model, runtime = subject.build()
        if not _is_step_aware(subject, model, runtime):
            return
        batch = subject.pseudo_labels(runtime.task, subject.images, subject.random())
        output = subject.forward(model, runtime, batch)
        trainable = {name: p.detach().clone() for name, p in runtime.modules.named_parameters() if p.requires_grad}
        with torch.no_grad():
            runtime.task.after_step(model.backbone, runtime.modules, runtime.aux, batch, output)
        for name, parameter in runtime.modules.named_parameters():
            if name in trainable and not torch.equal(trainable[name], parameter.detach()):
                subject.fail("teacher-not-optimized", f"changes parameter {name!r} in after_step while the main "
                             "optimizer trains it too; freeze it (requires_grad=False) like a teacher")  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="sslx-conformance-") as folder:
            root = Path(folder)
            first = subject.trainer(root / "first", steps=STEP_AWARE_STEPS, log_every=1, probe=False)
            optimized = {id(p) for group in first.optimizer.param_groups for p in group["params"]}
            for name, owned in first.model.task_modules[subject.name].named_parameters():
                if owned.requires_grad != (id(owned) in optimized):
                    state = "a frozen" if not owned.requires_grad else "a trainable"
                    where = "is" if id(owned) in optimized else "is not"
                    subject.fail("teacher-not-optimized", f"has {state} parameter {name!r} that {where} in the "
                                 "main optimizer; freeze what after_step updates (requires_grad=False)")  # fmt: skip
            _scramble_global_rngs(11)
            first.train()
            _scramble_global_rngs(12)
            second = subject.trainer(root / "second", steps=STEP_AWARE_STEPS, log_every=1, probe=False)
            second.train()
            subject.require_same(
                "after-step-deterministic",
                _state_difference(_final_state(first), _final_state(second)),
                "ends two identical runs in different states",
                "after_step and setup may use only the run's tensors",
            )
            stopped = subject.trainer(root / "resumed", steps=STEP_AWARE_STEPS, checkpoint_every=1, probe=False)
            _stop_after(stopped, STEP_AWARE_STEPS // 2)
            _scramble_global_rngs(13)
            resumed = Trainer(build_run(stopped.config, subject.registry, root / "resumed", resume=True))
            resumed.train()
            subject.require_same(
                "state-restored",
                _state_difference(_final_state(first), _final_state(resumed)),
                "ends a stopped-and-resumed run in another state than an uninterrupted one",
                "keep every state in module parameters or registered buffers",
            )


CHECKS: dict[str, Callable[[Subject], None]] = {
    "declaration": check_declaration,
    "pseudo_labels": check_pseudo_labels,
    "determinism": check_determinism,
    "forward": check_forward,
    "aux": check_aux,
    "representation": check_representation,
    "draw": check_draw,
    "checkpoint": check_checkpoint,
    "mix": check_mix,
    "step_aware": check_step_aware,
}


def check_pretext_task(task_class: type[PretextTask], **options: Unpack[KitOptions]) -> None:
    """Check the whole contract of :mod:`ssl_engine.task` on a task class; raise at the first broken rule.

    Args:
        task_class: the :class:`PretextTask` subclass, installed or not.
        **options: how to set it up (:class:`KitOptions`: ``image_size``, ``batch``, ``settings``, ``head``,
            ``loss``, ``plugin``, ``device``, ``backbone``), as :func:`prepare` takes them.

    Raises:
        ConformanceError: naming the first rule broken (see the module's table of rules).
    """
    subject = prepare(task_class, **options)
    for check in CHECKS.values():
        check(subject)


# --- helpers for a plugin's behaviour tests --------------------------------------------------------------------------
def task_instance(task_class: type[TaskT], image_size: int | None = None, **settings: Any) -> TaskT:
    """The task object as the engine builds it for a run of the task alone, for tests of its own behaviour.

    The settings are validated and resolved as ``--set`` values are, the context gets the task's default head and
    loss (registered, as the command line picks them) and the kit's small convnet (:data:`KIT_BACKBONE`, 32-d
    features, stride 8); ``task.context.make_backbone(3)`` builds a fresh one of those, ``task.build_modules()``
    fresh heads. Nothing is seeded: seed the global RNG first where weights matter.

    Args:
        task_class: the :class:`PretextTask` subclass, installed or not.
        image_size: image side ``S``; default ``max(min_image_size, 32)``.
        **settings: task settings (``permutations=30``).

    Raises:
        ImageSizeError: ``image_size`` is below what the task (with these settings) takes.
        SettingError: a setting is unknown or out of range.
    """
    subject = prepare(task_class, image_size=image_size, settings=settings)
    config = PretrainConfig([subject.spec()], backbone=KIT_BACKBONE)
    [runtime] = build_model(config, subject.registry, subject.image_size).runtimes
    assert isinstance(runtime.task, task_class)
    return runtime.task


def block_images(batch: int = 4, size: int = 32, *, block: int = 4, seed: int = 0) -> torch.Tensor:
    """Random colour images ``(B, 3, S, S)`` in [0, 1], constant over ``block x block`` squares.

    Colours fill regions, so averages over blocks are exact (output grids of decoders, Lab conversions of whole
    regions); the same ``seed`` gives the same images.
    """
    coarse = torch.rand(batch, 3, size // block, size // block, generator=torch.Generator().manual_seed(seed))
    return nn.functional.interpolate(coarse, size=size, mode="nearest")


def pretext_batch(task: PretextTask, images: torch.Tensor, *, step: int = 0, seed: int = 0) -> PretextBatch:
    """``task.pseudo_labels(images, random)`` as one process holding the whole batch makes it at ``step``.

    ``random`` is the task's own stream (:class:`BatchRandom` named after the task) of ``seed`` and ``step``, for
    ``images`` ``(B, 3, H, W)`` in [0, 1] on their device: the same pseudo-labels the trainer draws at that step.
    """
    return task.pseudo_labels(images, BatchRandom(seed, step, task.name, len(images), device=images.device))


@contextlib.contextmanager
def cli_plugins(*plugins: tuple[str, object] | type[PretextTask], reference: bool = True) -> Iterator[PluginHost]:
    """Within the block, the ``sslx`` commands run in this process see the core's pieces and these plugins only.

    What reads the process-wide plugin host (click's ``CliRunner`` on :data:`ssl_engine.cli.main`,
    :func:`pretrain_cli`, ``load_backbone``) gets one made from ``plugins``, ``(name, plugin object)`` pairs such as
    ``("flip", sslx_flip.plugin)`` or task classes, instead of the installed entry points; a fresh process
    (``subprocess``) still sees the installed ones. So a plugin's tests run the real command line on a task that is
    not installed, and the core's tests run it on the kit's reference task (or a subclass of it)::

        with cli_plugins():
            run = pretrain_cli(tmp_path, REFERENCE_TASK, "--data", KIT_DATA)

    Args:
        *plugins: the plugin objects, each with the name problems are reported under, or :class:`PretextTask`
            subclasses (each registered by a plugin of its own, named after the task).
        reference: also register :data:`REFERENCE_PLUGIN` (the task :data:`REFERENCE_TASK`, the data
            :data:`KIT_DATA` and the backbone :data:`KIT_BACKBONE`).

    Yields:
        The host the commands see (its ``registry``, its ``problems``).
    """
    pairs = [plugin if isinstance(plugin, tuple) else (plugin.name, _PluginOf(plugin)) for plugin in plugins]
    if reference:
        pairs.append(("kit-reference", REFERENCE_PLUGIN))
    host = PluginHost.from_plugins(pairs)
    kept = plugin_host._host
    plugin_host._host = host
    try:
        yield host
    finally:
        plugin_host._host = kept


def run_cli(*words: object) -> Result:
    """``sslx WORDS`` in this process (click's ``CliRunner``; exceptions other than the command's exit propagate).

    The result has the ``exit_code``, the ``stdout``, the ``stderr`` and both as ``output``. The installed plugins
    are used, or those of an enclosing :func:`cli_plugins` block.
    """
    return CliRunner().invoke(sslx_main, [str(word) for word in words], catch_exceptions=False)


PRETRAIN_DEFAULTS = ("--steps", "3", "--batch-size", "8", "--no-probe")


def pretrain_cli(folder: Path, task: str, *options: object) -> Path:
    """Run ``sslx pretrain --task TASK`` in this process (click's ``CliRunner``) and return the run directory.

    Small defaults come first (:data:`PRETRAIN_DEFAULTS`: 3 steps of 8 images, no closing probe), then ``options``,
    so an option given again wins (``"--steps", "20"``); the run goes to ``folder / "run"`` unless ``--out`` is
    among the options. The installed plugins are used, or those of an enclosing :func:`cli_plugins` block.

    Args:
        folder: a directory of the test's own (pytest's ``tmp_path``).
        task: the task, ``NAME`` or ``NAME=WEIGHT`` (more with ``"--task", "other"`` in ``options``).
        *options: more command-line words (``"--image-size", 48``); each is passed through ``str``.

    Raises:
        AssertionError: the command exited with another status than 0, with its output.
    """
    words = [str(option) for option in options]
    out = Path(words[words.index("--out") + 1]) if "--out" in words else folder / "run"
    command = ["pretrain", "--task", task, *PRETRAIN_DEFAULTS, *words]
    if "--out" not in words:
        command += ["--out", str(out)]
    result = run_cli(*command)
    if result.exit_code != 0:
        raise AssertionError(f"sslx {' '.join(command)} exited {result.exit_code}:\n{result.output}")
    return out


def run_checkpoint(run: Path, step: int | None = None) -> LoadedCheckpoint:
    """The checkpoint of ``step`` (default: the newest) in the run directory ``run``, read and verified.

    Raises:
        AssertionError: the run directory holds no checkpoint.
        CheckpointError: the file is unusable (damaged, not an sslx checkpoint, ...).
    """
    path = latest_checkpoint(run) if step is None else checkpoint_path(run, step)
    if path is None:
        raise AssertionError(f"run directory {run} holds no checkpoint")
    return read_checkpoint(path)


def checkpoint_keys(run: Path) -> list[str]:
    """The tensor names (``model/...``, ``task/<name>/...``, ``aux/...``, ``optim/...``, ``rng/...``) of the newest
    checkpoint in the run directory ``run``, or of the checkpoint file ``run``, in the file's order.

    Raises:
        AssertionError: the run directory holds no checkpoint.
    """
    path = run if run.is_file() else latest_checkpoint(run)
    if path is None:
        raise AssertionError(f"run directory {run} holds no checkpoint")
    with safe_open(str(path), framework="pt") as handle:
        return list(handle.keys())


def resumed_trainer(run: Path, steps: int) -> Trainer:
    """The engine's trainer resuming the run directory ``run`` with a budget of ``steps``, before its first step.

    What ``sslx pretrain --out RUN --resume --steps STEPS`` starts from: its ``step``, ``model``, ``optimizer`` and
    ``aux_optimizers`` as the newest usable checkpoint left them. The plugins are those the command line sees (the
    installed ones, or those of an enclosing :func:`cli_plugins` block).
    """
    config = saved_config(run)
    config.steps = steps
    return Trainer(build_run(config, plugin_host.get_host().registry, run, resume=True))


def stop_after(trainer: Trainer, steps: int) -> None:
    """Train the first ``steps`` steps of ``trainer``'s budget and checkpoint, as a run stopped there (preempted,
    killed): its run directory then resumes (:func:`resumed_trainer`, ``sslx pretrain --resume``)."""
    _stop_after(trainer, steps)


RESUMED_PREFIXES = ("model/", "task/", "aux/", "optim/main/", "optim/aux/")


def assert_resumes_exactly(run: Path) -> Trainer:
    """The engine's trainer resuming the run directory ``run`` (:func:`resumed_trainer`, for one more step), checked
    to start where the newest checkpoint left off, and returned.

    Checked: its step, the state of every module (``model/``, ``task/<name>/``, ``aux/<name>/``: heads, teachers,
    queues, discriminators) and of every optimizer (the main one and each task's aux one: momentum buffers, ...), each
    tensor equal to the one saved.

    Raises:
        AssertionError: naming the run and the first tensor restored otherwise, or missing on either side.
    """
    saved = run_checkpoint(run)
    trainer = resumed_trainer(run, steps=saved.step + 1)
    if trainer.step != saved.step:
        raise AssertionError(f"resuming {run} starts at step {trainer.step}, its newest checkpoint is of {saved.step}")
    restored = trainer.model.state_tensors() | optimizer_tensors("optim/main", trainer.optimizer)[0]
    for name, optimizer in trainer.aux_optimizers.items():
        restored |= optimizer_tensors(f"optim/aux/{name}", optimizer)[0]
    expected = {key: value for key, value in saved.tensors.items() if key.startswith(RESUMED_PREFIXES)}
    if restored.keys() != expected.keys():
        differing = sorted(set(restored) ^ set(expected))
        raise AssertionError(f"resuming {run} restores other tensors than saved: {differing}")
    for key, value in expected.items():
        if not torch.equal(restored[key].detach().cpu(), value):
            raise AssertionError(f"resuming {run} restores {key} other than saved")
    return trainer


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _rank_main(
    rank: int, target: Callable[..., Any], port: int, world: int, out: Path, args: tuple[Any, ...], group: bool
) -> None:
    torch.set_num_threads(1)  # the ranks share a small machine
    if group:
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timedelta(seconds=120)
        )
    else:  # what torchrun gives each process: the engine joins the group itself
        os.environ.update(
            {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "LOCAL_RANK": str(rank),
             "WORLD_SIZE": str(world), "OMP_NUM_THREADS": "1"}
        )  # fmt: skip
    try:
        torch.save(target(rank, *args), out / f"rank{rank}.pt")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def spawn_ranks(
    target: Callable[..., Any],
    out: Path,
    *args: Any,
    world: int = 2,
    deadline_s: float = 300.0,
    group: bool = True,
) -> list[Any]:
    """``target(rank, *args)`` in ``world`` fresh processes joined in one gloo process group, their results in order.

    Each process (``torch.multiprocessing.spawn``, one thread each) joins the group on a free local port, calls
    ``target`` (a function defined at module level, so that it can be sent to the process) and saves what it returns
    (tensors, numbers, strings, in lists and dicts) to ``out / f"rank{rank}.pt"``; the group is destroyed whatever
    happens. So a test compares a computation on ``world`` processes (``all_gather_with_grad``, DDP, a global batch
    norm) with the same computation on the whole batch in one process. With ``group=False`` the processes get
    torchrun's environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) instead and ``target`` joins
    the group itself, as the engine's trainer (:func:`trained_state`) does.

    Raises:
        TimeoutError: the processes did not all finish within ``deadline_s`` seconds (they are killed).
        ProcessRaisedException: a process raised (its traceback is in the message).
    """
    context = mp.spawn(_rank_main, args=(target, _free_port(), world, out, args, group), nprocs=world, join=False)
    deadline = time.monotonic() + deadline_s
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise TimeoutError(f"the {world} ranks did not finish in {deadline_s:.0f} s")
    return [torch.load(out / f"rank{rank}.pt") for rank in range(world)]


def rank_rows(rank: int, per_rank: int) -> slice:
    """The rows of process ``rank`` in a global batch split rank-major, ``per_rank`` rows a process."""
    return slice(rank * per_rank, (rank + 1) * per_rank)


def random_images(count: int, size: int = 32, *, seed: int = 1) -> torch.Tensor:
    """Uniform random images ``(count, 3, size, size)`` in [0, 1]; the same ``seed`` gives the same images."""
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


def twin_embeddings(count: int, dim: int, *, seed: int = 0, noise: float = 0.7) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings of two views ``(count, dim)``: normal rows, and the same rows plus ``noise`` times normal noise."""
    generator = torch.Generator().manual_seed(seed)
    z_a = torch.randn(count, dim, generator=generator)
    return z_a, z_a + noise * torch.randn(count, dim, generator=generator)


class TaskStep(nn.Module):
    """A task's forward over the shared backbone and its modules as one module, so that DistributedDataParallel can
    wrap it (what the trainer's model does), for comparing a step on several processes with one process."""

    def __init__(self, task: PretextTask, backbone: nn.Module, modules: nn.ModuleDict) -> None:
        super().__init__()
        self.task, self.backbone, self.task_modules = task, backbone, modules

    @classmethod
    def seeded(cls, task: PretextTask, seed: int) -> TaskStep:
        """A fresh backbone (``task.context.make_backbone(3)``) and fresh modules, drawn after seeding with ``seed``."""
        torch.manual_seed(seed)
        return cls(task, task.context.make_backbone(3), task.build_modules())

    def forward(self, batch: PretextBatch) -> TaskOutput:
        return self.task.forward(self.backbone, self.task_modules, nn.ModuleDict(), batch)  # type: ignore[arg-type]


def sgd_step(model: nn.Module, batch: PretextBatch, *, lr: float = 0.1, momentum: float = 0.9) -> dict[str, Any]:
    """One SGD step of a :class:`TaskStep`, bare or in DistributedDataParallel, on ``batch``.

    Returns:
        ``loss``, the task's weighted total; ``terms``, its loss terms and metrics; ``predictions``; ``grads``, every
        parameter's gradient, and ``parameters``, every parameter after the step, by name without DDP's ``module.``.
    """
    step: Any = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    output: TaskOutput = model(batch)
    loss = step.task.weighted_total(output.losses)
    loss.backward()
    grads = {name: parameter.grad.clone() for name, parameter in step.named_parameters() if parameter.grad is not None}
    optimizer.step()
    assert output.predictions is not None
    return {
        "loss": loss.detach(),
        "terms": {name: value.detach() for name, value in {**output.losses, **output.metrics}.items()},
        "predictions": output.predictions.detach(),
        "grads": grads,
        "parameters": {name: parameter.detach().clone() for name, parameter in step.named_parameters()},
    }


def assert_rank_losses_match(
    ranks: list[dict[str, Any]], terms: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], *, atol: float = 1e-5
) -> None:
    """Each rank's loss ``terms`` on its rows, gathered (``gather_from_all_ranks``), are the one-process ``terms`` on
    the whole batch, and its ``grads`` on its rows, divided by ``W``, are the one-process ``grads`` ``(W * B, ...)``
    on those rows (the gather's backward sums what all ``W`` identical losses send back; DDP divides by ``W``).

    Args:
        ranks: from :func:`spawn_ranks`, each with ``terms`` and ``grads`` in the order of the arguments.
    """
    world = len(ranks)
    for rank, result in enumerate(ranks):
        for got, expected in zip(result["terms"], terms, strict=True):
            torch.testing.assert_close(got, expected.detach(), atol=atol, rtol=1e-5)
        for got, expected in zip(result["grads"], grads, strict=True):
            rows = rank_rows(rank, len(expected) // world)
            torch.testing.assert_close(got / world, expected[rows], atol=atol, rtol=1e-5)


def rank_sgd_step(
    task: PretextTask, images: torch.Tensor, rank: int, world: int, *, seed: int, step: int, init_seed: int = 5
) -> dict[str, Any]:
    """On process ``rank`` of :func:`spawn_ranks`: :func:`sgd_step` of the task on its share of the global batch
    ``images`` ``(W * B, 3, S, S)``, as the trainer takes it with ``--sync-bn``: the pseudo-labels of rows
    ``rank * B ...`` (drawn for the global batch, at ``seed`` and ``step``), a :class:`TaskStep` seeded with
    ``init_seed`` with its batch norms over the global batch, in DistributedDataParallel.

    Returns:
        ``batch``, the rank's inputs, and ``step``, what :func:`sgd_step` returns; :func:`assert_steps_match`
        compares them with :func:`sgd_step` on the whole batch in one process.
    """
    per_rank = len(images) // world
    random = BatchRandom(seed, step, task.name, per_rank, global_batch=len(images), offset=rank * per_rank)
    batch = task.pseudo_labels(images[rank_rows(rank, per_rank)], random)
    model = nn.parallel.DistributedDataParallel(convert_to_global_batchnorm(TaskStep.seeded(task, init_seed), "cpu"))
    return {"batch": batch.inputs, "step": sgd_step(model, batch)}


def assert_steps_match(
    ranks: list[dict[str, Any]],
    task: PretextTask,
    images: torch.Tensor,
    *,
    seed: int,
    step: int,
    terms: tuple[str, ...],
    averaged: tuple[str, ...] = (),
    init_seed: int = 5,
    grad_atol: float = 1e-5,
) -> None:
    """Each rank's :func:`rank_sgd_step` is the one-process :func:`sgd_step` on the whole batch ``images``: its
    slice of the views, the loss, the named ``terms``, its rows of the predictions, and the gradients (``grad_atol``)
    and parameters after the step (1e-5), both relative to the tensor's scale (batch norm sums in another order);
    and the mean over the ranks of each of the terms ``averaged`` (a monitor of each rank's views among the global
    batch's, such as an accuracy) is the one-process value.
    """
    batch = pretext_batch(task, images, step=step, seed=seed)
    whole = sgd_step(TaskStep.seeded(task, init_seed), batch)
    for rank, result in enumerate(ranks):
        views = rank_rows(rank, len(batch.inputs) // len(ranks))
        torch.testing.assert_close(result["batch"], batch.inputs[views])  # each rank's slice of the same views
        got = result["step"]
        torch.testing.assert_close(got["loss"], whole["loss"], atol=1e-5, rtol=1e-5)
        for name in terms:
            torch.testing.assert_close(got["terms"][name], whole["terms"][name], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got["predictions"], whole["predictions"][views], atol=1e-5, rtol=1e-5)
        for what, atol in (("grads", grad_atol), ("parameters", 1e-5)):
            assert_tensors_close(got[what], whole[what], atol=atol, rtol=1e-5, scaled=True, what=what)
    for name in averaged:
        mean = sum(result["step"]["terms"][name] for result in ranks) / len(ranks)
        torch.testing.assert_close(mean, whole["terms"][name])


# A two-view task's check on two processes: their images, embeddings and step (any step but 0 draws other views).
TWO_VIEW_PER_RANK, TWO_VIEW_DIM, TWO_VIEW_SEED, TWO_VIEW_STEP = 4, 6, 3, 11


def assert_two_view_batch(task: PretextTask, images: torch.Tensor) -> PretextBatch:
    """``task``'s pseudo-labels of ``images`` ``(B, 3, S, S)`` are a two-view task's
    (:class:`~ssl_engine.api.TwoViewTask`): inputs ``(B * 2, 3, S, S)`` in 2 views, each view's target its twin's
    row (``1, 0, 3, 2, ...``); and a second process holding the batch's second half makes the same views and
    targets as the whole batch's second half.

    Returns:
        The whole batch's pseudo-labels (:func:`pretext_batch`), for checks of the task's own.
    """
    count, half = len(images), len(images) // 2
    batch = pretext_batch(task, images)
    assert batch.inputs.shape == (2 * count, *images.shape[1:]) and batch.views == 2
    assert batch.targets.tolist() == (torch.arange(2 * count) ^ 1).tolist()
    random = BatchRandom(0, 0, task.name, count - half, global_batch=count, offset=half, device=images.device)
    second_half = task.pseudo_labels(images[half:], random)
    assert torch.equal(second_half.targets, batch.targets[2 * half :])
    torch.testing.assert_close(second_half.inputs, batch.inputs[2 * half :])
    return batch


def _weighted_sum(terms: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    return sum((weight * term for weight, term in zip(weights, terms, strict=True)), torch.tensor(0.0))


def rank_two_view_check(
    task: PretextTask,
    loss: Callable[[torch.Tensor, torch.Tensor], Sequence[torch.Tensor]],
    weights: Sequence[float],
    rank: int,
    world: int,
) -> dict[str, Any]:
    """On process ``rank`` of :func:`spawn_ranks`: both halves of the check that a two-view task whose loss sees the
    global batch (Barlow Twins, VICReg) trains on ``world`` processes as one process does on the whole batch.

    * the loss on fixed embeddings: ``loss`` of the global batch's :func:`twin_embeddings` (``W * 4`` rows of 6),
      this rank holding its rows and gathering every rank's (:func:`~ssl_engine.distributed.gather_from_all_ranks`);
      its first ``len(weights)`` terms weighted by ``weights`` and back-propagated;
    * a whole training step of ``task`` on its share of :func:`random_images` ``(W * 4)`` (:func:`rank_sgd_step`).

    Returns:
        :func:`rank_sgd_step`'s ``batch`` and ``step``, with ``terms``, the loss's terms, and ``grads``, their
        weighted sum's gradients on this rank's rows of both views: :func:`assert_two_view_check_matches` compares
        them with one process.
    """
    rows = rank_rows(rank, TWO_VIEW_PER_RANK)
    z_a, z_b = (z[rows].clone().requires_grad_() for z in twin_embeddings(world * TWO_VIEW_PER_RANK, TWO_VIEW_DIM))
    terms = loss(gather_from_all_ranks(z_a), gather_from_all_ranks(z_b))[: len(weights)]
    _weighted_sum(terms, weights).backward()
    images = random_images(world * TWO_VIEW_PER_RANK)
    step = rank_sgd_step(task, images, rank, world, seed=TWO_VIEW_SEED, step=TWO_VIEW_STEP)
    return step | {"terms": [term.detach() for term in terms], "grads": (z_a.grad, z_b.grad)}


def assert_two_view_check_matches(
    ranks: list[dict[str, Any]],
    task: PretextTask,
    loss: Callable[[torch.Tensor, torch.Tensor], Sequence[torch.Tensor]],
    weights: Sequence[float],
    *,
    terms: tuple[str, ...],
    grad_atol: float = 1e-5,
) -> Sequence[torch.Tensor]:
    """The ranks' :func:`rank_two_view_check` are what one process computes on the whole batch: the loss's terms and
    each rank's gradients on its rows (:func:`assert_rank_losses_match`), and the training step with its named
    ``terms``, its gradients to ``grad_atol`` and the ranks' mean ``accuracy`` (the monitor of each rank's views among
    the global batch's; :func:`assert_steps_match`).

    Returns:
        The one-process loss terms on the fixed embeddings (for checks of their own, e.g. that a hinge is active).
    """
    world = len(ranks)
    z_a, z_b = (z.requires_grad_() for z in twin_embeddings(world * TWO_VIEW_PER_RANK, TWO_VIEW_DIM))
    expected = loss(z_a, z_b)[: len(weights)]
    assert_rank_losses_match(ranks, expected, torch.autograd.grad(_weighted_sum(expected, weights), (z_a, z_b)))
    images = random_images(world * TWO_VIEW_PER_RANK)
    assert_steps_match(
        ranks,
        task,
        images,
        seed=TWO_VIEW_SEED,
        step=TWO_VIEW_STEP,
        terms=terms,
        averaged=("accuracy",),
        grad_atol=grad_atol,
    )
    return expected


def assert_teachers_follow(
    trainer: Trainer, pairs: Sequence[tuple[nn.Module, nn.Module]], momentum: Callable[[int, int], float]
) -> list[float]:
    """Train ``trainer``'s whole run (:meth:`TaskUnderTest.trainer`) one step at a time, checking after each that
    every parameter of each teacher of ``pairs`` ``(teacher, online)`` moved to ``m * before + (1 - m) * online``
    (1e-6), the EMA towards the online module just updated (He et al. 2020, Eq. 2; Grill et al. 2020, Sec. 3.1).

    Args:
        momentum: ``m`` of the step just taken, ``momentum(step, steps)`` (``steps``: the run's budget).

    Returns:
        Each step's ``m``.
    """
    steps, momenta = trainer.run.total_steps, []
    for images, _ in trainer.stream.batches(0):
        if trainer.step == steps:
            break
        step = trainer.step
        before = [[p.detach().clone() for p in teacher.parameters()] for teacher, _ in pairs]
        trainer.device_step(images)
        m = momentum(step, steps)
        momenta.append(m)
        for (teacher, online), old in zip(pairs, before, strict=True):
            for t, o, previous in zip(teacher.parameters(), online.parameters(), old, strict=True):
                torch.testing.assert_close(t, m * previous + (1 - m) * o.detach(), rtol=0, atol=1e-6)
    return momenta


def trained_state(
    task_class: type[PretextTask],
    out: Path,
    *,
    steps: int,
    batch_size: int,
    settings: Mapping[str, Any],
    **options: Any,
) -> dict[str, torch.Tensor]:
    """Every tensor a checkpoint keeps after ``steps`` steps of the engine's trainer (:meth:`TaskUnderTest.trainer`,
    no probe, sync-bn and other trainer ``options`` as given), and ``world``: how many processes trained.

    Called in each process of :func:`spawn_ranks` ``(..., group=False)`` with the global batch's share, and once in
    the test's process with the whole batch: the states should match.
    """
    trainer = prepare(task_class, settings=dict(settings)).trainer(
        out, steps=steps, batch_size=batch_size, log_every=1, probe=False, **options
    )
    trainer.train()
    state = {key: value.detach().cpu().clone() for key, value in trainer.model.state_tensors().items()}
    return state | {"world": torch.tensor(trainer.world.size)}


def _prefixed(detail: str) -> Callable[[str], str]:
    return lambda message: f"{detail}: {message}"


def assert_tensors_close(
    got: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    *,
    atol: float,
    rtol: float,
    scaled: bool = False,
    what: str = "",
) -> None:
    """The same names; floating-point tensors close (``atol`` times ``max(1, |expected|)`` with ``scaled``, for
    sums over processes in another order), the others (counters, indices) equal. Messages name ``what`` and the
    tensor."""
    assert got.keys() == expected.keys(), f"{what}: {sorted(set(got) ^ set(expected))}"
    for name, value in expected.items():
        detail = f"{what} {name}".strip()
        if not value.is_floating_point():
            assert torch.equal(got[name], value), detail
            continue
        tolerance = atol * max(1.0, float(value.abs().max())) if scaled and value.numel() else atol
        torch.testing.assert_close(got[name], value, atol=tolerance, rtol=rtol, msg=_prefixed(detail))


def sslx_process(*arguments: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``sslx ARGUMENTS`` in a fresh process (``python -m ssl_engine.cli``, one thread) in folder ``cwd``: the real
    command line with the installed plugins, its exit code, stdout and stderr."""
    command = [sys.executable, "-m", "ssl_engine.cli", *map(str, arguments)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=cwd, env=env)


def assert_show_draws(task: str, folder: Path, *, rows: int = 3, columns: int = 3) -> None:
    """``sslx show --task TASK --count ROWS`` in a fresh process writes a picture of at least ``columns`` x ``rows``
    cells of 64 px (each image and its views)."""
    out = folder / f"{task}.png"
    result = sslx_process("show", "--task", task, "--count", rows, "--out", out, cwd=folder)
    assert result.returncode == 0, result.stderr
    with Image.open(out) as picture:
        width, height = picture.size
    assert width >= columns * 64 and height >= rows * 64, picture.size


def assert_refused_before_training(task: str, folder: Path, *options: str, message: str) -> None:
    """``sslx pretrain --task TASK OPTIONS`` in a fresh process exits 2 with ``message`` in its stderr, before
    making the run directory."""
    run = folder / "refused"
    result = sslx_process("pretrain", "--task", task, *options, "--steps", "2", "--out", run, cwd=folder)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert not run.exists()  # refused before the run directory was made


def mixed_run(task: str, folder: Path, *, other: str = "rotation=0.5") -> tuple[dict[str, torch.Tensor], str]:
    """``sslx pretrain --task TASK --task OTHER`` (2 steps of 8 images, no probe) in a fresh process.

    Returns:
        The tensors of its last checkpoint and the text of its ``metrics.jsonl``.
    """
    run = folder / "mix"
    result = sslx_process("pretrain", "--task", task, "--task", other, "--steps", "2", "--batch-size", "8",
                          "--log-every", "1", "--no-probe", "--out", run, cwd=folder)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return run_checkpoint(run).tensors, (run / "metrics.jsonl").read_text()


Refusal = tuple[tuple[str, ...], Mapping[str, Any] | None]
"""The ``sslx pretrain`` options of a :class:`CommandLineTests` refusal, and the task settings they carry (``None``:
a ``--loss`` for a task that computes its own)."""


class CommandLineTests:
    """The real command line on a plugin's installed task, each command in a fresh process (:func:`sslx_process`):
    tests a plugin's test module inherits, as pandas' extension arrays inherit its base tests. A module of their own
    (every command starts a process: the module is slow) declares a subclass whose name starts with ``Test``, which
    pytest collects, naming the task class and the settings ``sslx pretrain`` must refuse::

        pytestmark = pytest.mark.slow

        class TestCommandLine(CommandLineTests):
            task_class = FlipTask
            refused = ({"k": 0}, {"k": 9, "other": 1})

    Its tests:

    - ``test_show_draws``: ``sslx show --task NAME`` draws each image and its views (:func:`assert_show_draws`);
    - ``test_refused_before_training``, one per refusal: ``sslx pretrain --task NAME --set NAME.KEY=VALUE ...`` with
      each settings of :attr:`refused` exits 2 before making the run directory, saying what the task raises in
      process (:func:`task_instance`); for a task that computes its own loss (:func:`~ssl_engine.api.own_loss_choice`)
      so does ``--loss NAME=mse``, saying the task computes its own loss;
    - ``test_trains_mixed_with_rotation``: ``--task NAME --task rotation=0.5`` trains two steps (:func:`mixed_run`);
      its last checkpoint holds every tensor of the task's modules under ``task/NAME/`` and rotation's under
      ``task/rotation/``, its ``metrics.jsonl`` every loss term of both (``NAME/TERM``); :meth:`check_mixed_run` is
      for what else a task's run must hold.

    Attributes:
        task_class: the task, installed under its ``name``.
        refused: settings (each a mapping of setting names to values) the task refuses.
    """

    task_class: type[PretextTask]
    refused: tuple[Mapping[str, Any], ...] = ()

    def pytest_generate_tests(self, metafunc: Any) -> None:
        """pytest's hook: ``test_refused_before_training`` once per :meth:`refusals`, named by its options."""
        if "refusal" in metafunc.fixturenames:
            refusals = self.refusals()
            metafunc.parametrize("refusal", refusals, ids=[" ".join(options) for options, _ in refusals])

    def refusals(self) -> list[Refusal]:
        """A ``--set`` per setting of each of :attr:`refused`; then ``--loss NAME=mse`` for a task that computes its
        own loss."""
        name = self.task_class.name
        refusals: list[Refusal] = []
        for settings in self.refused:
            options = tuple(word for key, value in settings.items() for word in ("--set", f"{name}.{key}={value}"))
            refusals.append((options, settings))
        if self.task_class.loss_choice(resolve_settings(name, self.task_class.settings, {}))[0] is None:
            refusals.append((("--loss", f"{name}=mse"), None))
        return refusals

    def test_show_draws(self, tmp_path: Path) -> None:
        assert_show_draws(self.task_class.name, tmp_path)  # the original and its views, three rows

    def test_refused_before_training(self, tmp_path: Path, refusal: Refusal) -> None:
        options, settings = refusal
        name = self.task_class.name
        message = f"task {name!r} computes its own loss"
        if settings is not None:
            try:
                task_instance(self.task_class, **settings)
            except SettingError as error:
                message = str(error)
            else:
                raise AssertionError(f"task {name!r} takes the settings {dict(settings)} it is to refuse")
        assert_refused_before_training(name, tmp_path, *options, message=message)

    def test_trains_mixed_with_rotation(self, tmp_path: Path) -> None:
        tensors, metrics = mixed_run(self.task_class.name, tmp_path)
        subject = prepare(self.task_class)  # the task alone, built as the run builds it: its modules and loss terms
        model, runtime = subject.build()
        output = subject.forward(model, runtime, subject.pseudo_labels(runtime.task, subject.images, subject.random()))
        missing = [key for key in runtime.modules.state_dict() if f"task/{subject.name}/{key}" not in tensors]
        assert not missing, f"the checkpoint has no task/{subject.name}/ tensors {missing}"
        assert all(f"{subject.name}/{term}" in metrics for term in output.losses), sorted(output.losses)
        assert any(key.startswith("task/rotation/") for key in tensors) and "rotation/rotation" in metrics
        self.check_mixed_run(tensors, metrics)

    def check_mixed_run(self, tensors: dict[str, torch.Tensor], metrics: str) -> None:
        """What else the mixed run's last checkpoint (``tensors``) and ``metrics.jsonl`` text must hold; nothing by
        default."""


# --- helpers for tasks with the core's adversarial branch (inpainting, super-resolution) -----------------------------
def check_adversarial_branch(
    task_class: type[PretextTask], images: torch.Tensor, out: Path, *, plugin: object | None = None
) -> None:
    """A task's adversarial branch (:mod:`ssl_engine.adversarial`), switched by its bool setting ``adversarial``.

    Checked on ``images`` ``(B, 3, S, S)`` in [0, 1], then in one training step of the engine's trainer on the kit's
    data (writing to ``out / "off"`` and ``out / "on"``):

    - off, the default: no aux modules, no ``adversarial`` loss term, no aux losses; in a step no aux optimizer, no
      ``NAME/adversarial`` or ``NAME/discriminator`` logged; its checkpoint holds every module of the task under
      ``task/NAME/`` and nothing under ``aux/`` or ``optim/aux/``;
    - on: the ``adversarial`` term is ``-log D(prediction)`` (:func:`~ssl_engine.adversarial.generator_loss`) and
      reaches the task's modules; the aux term is ``-log D(original) - log(1 - D(prediction))``
      (:func:`~ssl_engine.adversarial.discriminator_loss`) on detached predictions, so it trains the discriminator
      alone;
    - on, in a step: the task has an aux optimizer, every parameter of the discriminator moves, both terms are
      logged (the adversarial one above 0), and the logged ``NAME/loss`` is the logged terms weighted by the task's
      ``loss_weights``.

    Args:
        task_class: the :class:`PretextTask` subclass, installed or not.
        images: the batch the terms are checked on.
        out: a directory of the test's own (pytest's ``tmp_path``).
        plugin: the plugin object that registers the task (see :func:`prepare`).

    Raises:
        AssertionError: naming what the branch does otherwise.
    """
    name = task_class.name
    task = task_instance(task_class, images.shape[-1])
    assert len(task.build_aux_modules()) == 0, "the discriminator is there without adversarial=true"
    batch = pretext_batch(task, images)
    output = task.forward(task.context.make_backbone(3), task.build_modules(), nn.ModuleDict(), batch)
    assert "adversarial" not in output.losses and task.aux_losses(nn.ModuleDict(), batch, output) == {}
    _check_adversarial_terms(task_instance(task_class, images.shape[-1], adversarial=True), images)

    trainer = prepare(task_class, plugin=plugin).trainer(out / "off")
    [runtime] = trainer.model.runtimes
    assert len(runtime.aux) == 0 and trainer.aux_optimizers == {}
    logged = trainer.train_step(next(iter(trainer.stream.batches(0)))[0])
    assert f"{name}/adversarial" not in logged and f"{name}/discriminator" not in logged
    keys = checkpoint_keys(trainer.save_checkpoint())
    for module in runtime.modules:
        assert any(key.startswith(f"task/{name}/{module}.") for key in keys), f"{module} is not checkpointed"
    assert not any(key.startswith(("aux/", "optim/aux/")) for key in keys), "aux state is checkpointed"

    trainer = prepare(task_class, settings={"adversarial": True}, plugin=plugin).trainer(out / "on")
    [runtime] = trainer.model.runtimes
    discriminator = runtime.aux["discriminator"]
    assert name in trainer.aux_optimizers, "the discriminator has no optimizer"
    before = {key: parameter.detach().clone() for key, parameter in discriminator.named_parameters()}
    logged = trainer.train_step(next(iter(trainer.stream.batches(0)))[0])
    moved = [not torch.equal(before[key], parameter) for key, parameter in discriminator.named_parameters()]
    assert all(moved), "a step left parameters of the discriminator as they were"
    assert {f"{name}/adversarial", f"{name}/discriminator"} <= set(logged) and logged[f"{name}/adversarial"] > 0
    weights = runtime.task.loss_weights
    terms = [term for term in weights if f"{name}/{term}" in logged]
    expected = sum(weights[term] * logged[f"{name}/{term}"] for term in terms)
    assert math.isclose(logged[f"{name}/loss"], expected, rel_tol=1e-5), (logged, weights)


def _check_adversarial_terms(task: PretextTask, images: torch.Tensor) -> None:
    """The ``adversarial`` term and the discriminator's aux term of a task built with ``adversarial=true``."""
    backbone, modules, aux = task.context.make_backbone(3), task.build_modules(), task.build_aux_modules()
    aux.eval()  # spectral norm's power iteration stays put, so re-evaluating the discriminator gives the same logits
    batch = pretext_batch(task, images)
    output = task.forward(backbone, modules, aux, batch)
    assert output.predictions is not None
    discriminator = aux["discriminator"]
    fake_logits = discriminator(output.predictions)
    torch.testing.assert_close(output.losses["adversarial"], -nn.functional.logsigmoid(fake_logits).mean())
    torch.testing.assert_close(generator_loss(fake_logits), output.losses["adversarial"])
    output.losses["adversarial"].backward()
    assert any(float(p.grad.abs().sum()) > 0 for p in modules.parameters() if p.grad is not None)
    for parameter in [*modules.parameters(), *backbone.parameters(), *aux.parameters()]:
        parameter.grad = None
    [term] = task.aux_losses(aux, batch, output).values()
    real_logits = discriminator(batch.targets)
    fake = -nn.functional.logsigmoid(-discriminator(output.predictions)).mean()
    expected = -nn.functional.logsigmoid(real_logits).mean() + fake
    torch.testing.assert_close(term, expected)
    torch.testing.assert_close(discriminator_loss(real_logits, fake_logits), expected)
    term.backward()
    assert all(p.grad is None for p in [*modules.parameters(), *backbone.parameters()]), "the fakes were not detached"
    assert all(p.grad is not None for p in aux.parameters()), "the aux term does not train the discriminator"


def assert_adversarial_run_resumes(folder: Path, task: str, plugin: object) -> Path:
    """``sslx pretrain --task TASK --set TASK.adversarial=true`` in this process with ``plugin`` (:func:`cli_plugins`):
    2 steps of 16 px images on the kit's data with a checkpoint after each, then ``--resume`` to a third step.

    Checked: both checkpoints hold the task's modules, the discriminator (``aux/TASK/discriminator.``) and its
    optimizer's state (``optim/aux/TASK/``); every step logs ``TASK/adversarial`` and ``TASK/discriminator``; the
    discriminator moved between the two checkpoints (trained, not just carried); resuming restores everything
    exactly (:func:`assert_resumes_exactly`), the discriminator's optimizer state included; the resumed run logs
    and checkpoints step 3.

    Returns:
        The run directory.
    """
    common = ["--set", f"{task}.adversarial=true", "--data", KIT_DATA, "--log-every", 1, "--image-size", 16]
    with cli_plugins((task, plugin)):
        run = pretrain_cli(folder, task, *common, "--steps", 2, "--checkpoint-every", 1)
        saved = run_checkpoint(run, 2)
        for prefix in (f"task/{task}/", f"aux/{task}/discriminator.", f"optim/aux/{task}/"):
            assert any(key.startswith(prefix) for key in saved.tensors), f"nothing under {prefix} is checkpointed"
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [line["step"] for line in lines] == [1, 2]
        assert all({f"{task}/adversarial", f"{task}/discriminator"} <= set(line) for line in lines)
        earlier = run_checkpoint(run, 1).module_state(f"aux/{task}")
        later = saved.module_state(f"aux/{task}")
        moved = any(not torch.equal(earlier[key], value) for key, value in later.items())
        assert moved, "the discriminator is the same in both checkpoints: it is not trained"
        resumed = assert_resumes_exactly(run)
        assert resumed.aux_optimizers[task].state_dict()["state"], "the discriminator's optimizer has no state"
        pretrain_cli(folder, task, *common, "--steps", 3, "--resume")
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3]
    assert run_checkpoint(run).step == 3
    return run


# --- helpers for the Lab colour tasks (colorization, split-brain) ----------------------------------------------------
def lightness_twins(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two colourings of one CIE lightness, for tests of what a colour task's networks see.

    Args:
        images: ``(B, 3, H, W)`` in [0, 1].

    Returns:
        ``0.25 + 0.5 * images`` (kept off black and white, where colour fades out) and the images of the same
        lightness with other colours: their ab halved, mirrored and shifted by 3 Lab units (inside the sRGB gamut for
        :func:`block_images`); both ``(B, 3, H, W)``.
    """
    twin = 0.25 + 0.5 * images
    lab = rgb_to_lab(twin)
    lab[:, 1:] = -0.5 * lab[:, 1:] + 3.0
    return twin, lab_to_rgb(lab, clip=False)


def block_means(values: torch.Tensor, block: int) -> torch.Tensor:
    """Plain loops: the mean of each ``block x block`` square, ``(B, C, S, S)`` -> ``(B, C, S/block, S/block)``; the
    reference for targets area-averaged to a colour decoder's output grid (:func:`ssl_engine.api.to_output_grid`)."""
    side = values.shape[-1] // block
    out = torch.empty(*values.shape[:2], side, side)
    for i in range(side):
        for j in range(side):
            out[:, :, i, j] = values[:, :, i * block : (i + 1) * block, j * block : (j + 1) * block].mean(dim=(2, 3))
    return out


def assert_nearest_ab_bins(classes: torch.Tensor, ab: torch.Tensor) -> None:
    """Each pixel's class is its nearest in-gamut ab bin (:func:`ssl_engine.api.ab_bins`), by brute force over all
    ``Q`` bins.

    Args:
        classes: ``(B, h, w)`` int64.
        ab: ``(B, 2, h, w)`` in Lab units.
    """
    pixels = ab.permute(0, 2, 3, 1).reshape(-1, 2)  # (B*h*w, 2)
    distances = (pixels[:, None] - ab_bins().centres[None]).square().sum(-1)  # (B*h*w, Q)
    torch.testing.assert_close(distances.gather(1, classes.reshape(-1, 1))[:, 0], distances.min(1).values)
