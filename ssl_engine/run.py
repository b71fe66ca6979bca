"""A run, assembled once: :func:`build_run` for training, :func:`load_run` for a finished (or running) one.

Every command consumes the same :class:`Run`: ``sslx pretrain`` trains it (:class:`~ssl_engine.train.loop.Trainer`),
the closing probe and ``sslx evaluate`` evaluate its representation, ``sslx bench`` builds one per row (and the
supervised reference trains one with labels), ``sslx show`` and ``sslx export`` read a finished one, and the
conformance kit builds one for a task under test. Validation happens here, once, before anything is written::

    config ─> build_run ─> names, mix, image size, data, settings, heads and losses checked
                           process group and device
                           model built (seeded) and moved to the device; settings pinned in a resolved copy
                           run directory created, or its newest usable checkpoint found and restored (--resume)
                           batch stream over the pretraining split
"""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import torch

from ssl_engine.backbones.base import Backbone
from ssl_engine.checkpoint import CheckpointError, CheckpointScan, LoadedCheckpoint
from ssl_engine.config import CONFIG_FILE, PretrainConfig
from ssl_engine.data.batches import BatchStream
from ssl_engine.data.catalog import DataSource, resolve_data
from ssl_engine.data.device_decode import decodes_on_device, training_stream
from ssl_engine.data.options import DataOptions
from ssl_engine.distributed import World, barrier, broadcast_from_main, init_from_env, pick_device
from ssl_engine.exported_backbone import load_exported_backbone
from ssl_engine.hookspecs import LoggerFactory
from ssl_engine.plugins import get_host
from ssl_engine.registry import Registered, Registry, UnknownNameError
from ssl_engine.run_directory import (
    DAMAGED_DIR,
    RunDirectoryError,
    check_resume_changes,
    prepare_run_dir,
    saved_config,
)
from ssl_engine.settings import SettingError
from ssl_engine.task import ImageSizeError, Representation
from ssl_engine.train.memory_format import uses_channels_last
from ssl_engine.train.metrics_log import chosen_loggers
from ssl_engine.train.model import (
    PretrainModel,
    RunSetupError,
    build_model,
    pinned_settings,
    resolve_image_size,
    resolve_optimizer,
    task_classes,
)
from ssl_engine.train.optim import DEFAULT_LR
from ssl_engine.train.precision import Precision, resolve_precision
from ssl_engine.train.sync_batchnorm import convert_to_global_batchnorm

DEFAULT_STEPS = 600


@dataclass(frozen=True)
class Run:
    """Everything a command needs of one run, built once and not changed afterwards (the model's weights are, by
    training).

    Attributes:
        config: the resolved config: every task's settings pinned to their parsed values, defaults included (the
            caller's config is left as it was).
        registry: where names were looked up.
        world: the process group (one process outside torchrun).
        device: this process's device.
        image_size: side of the square images every task sees.
        model: backbone and tasks, on ``device``, with the resumed or loaded weights.
        out: the run directory (``None`` for a run that writes nothing).
        source: the data set of the config (``None`` for a loaded run until asked for).
        stream: this process's batches of the pretraining split (``None`` for a loaded run).
        total_steps: the budget (``--steps``, else ``--epochs`` worth, else :data:`DEFAULT_STEPS`).
        schedule_steps: the steps the learning-rate and teacher schedules span (``--schedule-steps``, else the
            budget): a run of ``--steps 60 --schedule-steps 100`` resumed with ``--steps 100`` is the straight
            100-step run.
        lr: the peak learning rate (scaled by the process count with ``--scale-lr``).
        checkpoint: what the model was restored from (``None``: fresh initialisation).
        damaged: checkpoints a resume had to skip; the trainer sets them aside in ``RUN_DIR/damaged/``.
        precision: the autocast dtype and loss scaling on ``device`` (``--precision``, resolved).
        loggers: where the trainer sends metrics (``--loggers``, resolved: ``jsonl`` first); none for a loaded run.
    """

    config: PretrainConfig
    registry: Registry
    world: World
    device: torch.device
    image_size: int
    model: PretrainModel
    out: Path | None = None
    source: DataSource | None = None
    stream: BatchStream | None = None
    total_steps: int = DEFAULT_STEPS
    schedule_steps: int = DEFAULT_STEPS
    lr: float = 0.05
    checkpoint: LoadedCheckpoint | None = None
    damaged: tuple[Path, ...] = ()
    precision: Precision = Precision("32", "cpu")
    loggers: tuple[Registered[LoggerFactory], ...] = ()

    @property
    def optimizer(self) -> str:
        """The optimiser's name: ``--optimizer``, else the one the tasks name (:func:`resolve_optimizer`; a run built
        by :func:`build_run` holds it in its config)."""
        return resolve_optimizer(self.config, self.registry)

    @property
    def step(self) -> int:
        """The step the model's weights are from (0: fresh)."""
        return self.checkpoint.step if self.checkpoint is not None else 0

    def data(self) -> DataSource:
        """The config's data set (resolved now for a loaded run)."""
        if self.source is not None:
            return self.source
        return resolve_data(self.config.data, self.registry, DataOptions.of_config(self.config))


def total_steps(config: PretrainConfig, steps_per_epoch: int) -> int:
    """``--steps``, else ``--epochs`` worth of steps, else :data:`DEFAULT_STEPS`."""
    if config.steps is not None:
        return config.steps
    if config.epochs is not None:
        return max(1, round(config.epochs * steps_per_epoch))
    return DEFAULT_STEPS


def default_run_dir(config: PretrainConfig, world: World) -> Path:
    """``runs/TASKS-TIME``, named by rank 0's clock for every rank."""
    stamp = broadcast_from_main(f"{datetime.now():%Y%m%d-%H%M%S}", world)
    return Path("runs") / f"{'+'.join(t.name for t in config.tasks)}-{stamp}"


def build_run(
    config: PretrainConfig,
    registry: Registry,
    out: Path | None = None,
    *,
    resume: bool = False,
    force: bool = False,
    restart: bool = False,
) -> Run:
    """Validate ``config`` and assemble its run: process group, device, data, model, stream, run directory.

    Args:
        config: the run's config (not modified).
        registry: where tasks, backbones, heads, losses and data sets are looked up.
        out: the run directory (default ``runs/TASKS-TIME``); created for a new run, read for ``resume``.
        resume: restore the newest checkpoint of ``out`` that reads back and fits the model, falling back past
            damaged ones (each reported with a warning).
        force: with ``resume``, accept config changes beyond budget, logging and placement.
        restart: with ``resume``, start again from step 0 when no checkpoint of ``out`` can be used; without it,
            that is a :class:`RunDirectoryError` listing each file and why (and nothing is touched).

    Raises:
        UnknownNameError, RunSetupError, SettingError, ImageSizeError, DataError, RunDirectoryError: the run can't
            be built as asked (each message names the option, task or file).
    """
    task_classes(config, registry)  # names and mix checked before anything is created
    optimizer = resolve_optimizer(config, registry)
    config = replace(config, optimizer=optimizer)  # kept in the config: resumes reproduce
    image_size = resolve_image_size(config, registry)
    registry.get("backbone", config.backbone)
    loggers = tuple(chosen_loggers(config.loggers, registry))  # an unknown name: refused before the run dir exists
    device = pick_device(config.device)
    world = init_from_env(device.type)
    device = pick_device(config.device, world)
    precision = resolve_precision(config.precision, device)
    source = resolve_data(config.data, registry, DataOptions.of_config(config))
    if config.image_size is None and source.file_backed:  # photographs get a size of their own, kept in the config
        image_size = source.default_image_size(image_size, device)
        config = replace(config, image_size=image_size)
    for spec in config.tasks:
        registry.get("task", spec.name).obj.check_images(image_size, source.color)
    if config.online_probe and not source.labelled:
        raise RunSetupError(f"--online-probe needs labels; data {config.data!r} has none")
    # Building the model validates settings, heads and losses; it is cheap, so it comes before the run directory
    # is touched and before the data is read.
    model = build_model(config, registry, image_size, seed=config.seed)
    random.seed(config.seed)  # Python's generator too: its state is saved, so identical runs write identical files
    if config.sync_bn and world.distributed:
        convert_to_global_batchnorm(model, device.type)
    model = model.to(device)
    if uses_channels_last(device):
        model.to(memory_format=torch.channels_last)
    resolved = pinned_settings(config, registry)
    dataset = source.split(source.pretrain_split, image_size)  # opened (and checked), not read
    on_device = decodes_on_device(config.decode, device, dataset)  # --decode checked before the run dir is made
    out = out if out is not None else default_run_dir(config, world)
    if resume:
        check_resume_changes(pinned_settings(saved_config(out), registry), resolved, force)
    prepare_run_dir(out, resume, create=world.is_main)
    barrier(world)  # every rank has checked the directory before rank 0 writes into it
    checkpoint, damaged = resumed_checkpoint(model, out, restart) if resume else (None, ())
    base_lr = config.lr if config.lr is not None else DEFAULT_LR[optimizer]
    stream = training_stream(
        dataset, config.batch_size, config.seed, decode_on_device=on_device, workers=config.workers,
        device=device, rank=world.rank, world=world.size,
    )  # fmt: skip
    budget = total_steps(config, stream.steps_per_epoch)
    schedule = config.schedule_steps if config.schedule_steps is not None else budget
    if schedule < budget:  # --epochs: the budget is known only now
        raise RunSetupError(f"--schedule-steps {schedule} is shorter than the budget of {budget} steps")
    model.clock.total = schedule
    return Run(
        config=resolved,
        registry=registry,
        world=world,
        device=device,
        image_size=image_size,
        model=model,
        out=out,
        source=source,
        stream=stream,
        total_steps=budget,
        schedule_steps=schedule,
        # Linear scaling rule (Goyal et al. 2017): the given lr is that of one process's batch.
        lr=base_lr * (world.size if config.scale_lr else 1),
        checkpoint=checkpoint,
        damaged=damaged,
        precision=precision,
        loggers=loggers,
    )


def resumed_checkpoint(
    model: PretrainModel, out: Path, restart: bool
) -> tuple[LoadedCheckpoint | None, tuple[Path, ...]]:
    """Restore ``model`` from the newest checkpoint of ``out`` that reads back and fits it; ``None`` when the run
    starts again from step 0 (said with a warning). Also returns the checkpoints it had to skip.

    Raises:
        RunDirectoryError: checkpoints exist but none can be used, and ``restart`` was not given.
    """
    scan = CheckpointScan(out)
    for checkpoint in scan:
        try:
            model.load_state(checkpoint)
        except CheckpointError as error:
            scan.skip(checkpoint, error)
            continue
        for skipped in scan.skipped:
            warnings.warn(
                f"{skipped.reason}; it is set aside in {out / DAMAGED_DIR} and the run resumes from "
                f"{checkpoint.path.name}",
                stacklevel=2,
            )
        return checkpoint, tuple(skipped.path for skipped in scan.skipped)
    problems = [skipped.reason for skipped in scan.skipped]
    if problems and not restart:
        listed = "".join(f"\n  {why}" for why in problems)
        raise RunDirectoryError(
            f"--resume: no checkpoint in {out} can be used, nothing was changed:{listed}\n"
            f"pass --restart to set them aside in {out / DAMAGED_DIR} and start again from step 0"
        )
    if problems:
        warnings.warn(
            f"--restart: none of the {len(problems)} checkpoints of {out} can be used; they are moved to "
            f"{out / DAMAGED_DIR} and the run starts again from step 0",
            stacklevel=2,
        )
    else:
        warnings.warn(
            f"{out} holds no checkpoint yet (the run stopped before its first one): starting again from step 0",
            stacklevel=2,
        )
    return None, tuple(skipped.path for skipped in scan.skipped)


def load_run(run_dir: str | Path, registry: Registry | None = None, device: str | torch.device = "cpu") -> Run:
    """A finished (or running) run read back from its newest usable checkpoint: the model in eval mode on
    ``device``; no data is opened and nothing is written.

    A checkpoint that is damaged, or whose tensors don't fit the model its config builds, is reported (a warning)
    and the next older one is used.

    Raises:
        CheckpointError: ``run_dir`` is not a run directory, holds no checkpoint, or none of its checkpoints can be
            used (the message lists each file and why).
    """
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise CheckpointError(f"{run_dir} is not an sslx run directory (no {CONFIG_FILE})")
    registry = registry or get_host().registry
    scan = CheckpointScan(run_dir)
    for checkpoint in scan:
        try:
            model = restored_model(checkpoint, registry)
        except CheckpointError as error:
            scan.skip(checkpoint, error)
            continue
        for skipped in scan.skipped:
            warnings.warn(f"{skipped.reason}; using {checkpoint.path.name} instead", stacklevel=2)
        target = pick_device(device) if isinstance(device, str) else device
        return Run(
            config=checkpoint.config,
            registry=registry,
            world=World(),
            device=target,
            image_size=checkpoint.image_size,
            model=model.to(target),
            out=run_dir,
            total_steps=checkpoint.config.steps or checkpoint.step,
            schedule_steps=checkpoint.config.schedule_steps or checkpoint.config.steps or checkpoint.step,
            checkpoint=checkpoint,
        )
    raise scan.failure()


def restored_model(checkpoint: LoadedCheckpoint, registry: Registry) -> PretrainModel:
    """The model the checkpoint's config builds, with the checkpoint's weights, in eval mode.

    Raises:
        CheckpointError: the config does not build a model here (e.g. a task that is not installed), or a saved
            module does not fit the model built.
    """
    try:
        model = build_model(checkpoint.config, registry, checkpoint.image_size)
    except (UnknownNameError, SettingError, ImageSizeError, RunSetupError) as error:
        raise CheckpointError(f"checkpoint {checkpoint.path}: its config does not build a model: {error}") from None
    model.load_state(checkpoint)
    model.eval()
    return model


def load_backbone(path_or_run_dir: str | Path, map_location: str | torch.device = "cpu") -> Backbone:
    """The trained shared backbone of a run directory, or of a file written by ``sslx export`` (read with no task
    plugin installed): images ``(B, 3, H, W)`` (normalised) -> ``(B, D, h, w)``, in eval mode on ``map_location``.

    Raises:
        CheckpointError: neither a run directory nor an export file, or nothing in it can be used.
    """
    path = Path(path_or_run_dir)
    if path.is_file():
        return load_exported_backbone(path, get_host().registry, map_location)
    return load_run(path, device=map_location).model.backbone


def load_representation(run_dir: str | Path, task: str | None = None) -> Representation:
    """The task's downstream representation: float images ``(B, 3, H, W)`` in [0, 1] -> features ``(B, D)``."""
    return load_run(run_dir).model.representation(task)
