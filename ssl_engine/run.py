"""Loading a finished (or running) pretraining run back: its model, backbone and representation."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from ssl_engine.backbones.base import Backbone
from ssl_engine.checkpoint import CheckpointError, CheckpointScan, LoadedCheckpoint, load_module_state
from ssl_engine.config import CONFIG_FILE, PretrainConfig
from ssl_engine.plugins import get_host
from ssl_engine.registry import Registry, UnknownNameError
from ssl_engine.settings import SettingError
from ssl_engine.task import ImageSizeError, Representation
from ssl_engine.train.model import PretrainModel, RunSetupError


@dataclass
class LoadedRun:
    """A run directory read back: config, image size, the model with the latest weights, the checkpoint."""

    run_dir: Path
    config: PretrainConfig
    image_size: int
    model: PretrainModel
    checkpoint: LoadedCheckpoint


def load_run(run_dir: str | Path, registry: Registry | None = None) -> LoadedRun:
    """Rebuild the run's model from its newest usable checkpoint (CPU, eval mode).

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
        return LoadedRun(run_dir, checkpoint.config, checkpoint.image_size, model, checkpoint)
    raise scan.failure()


def restored_model(checkpoint: LoadedCheckpoint, registry: Registry) -> PretrainModel:
    """The model the checkpoint's config builds, with the checkpoint's weights, in eval mode.

    Raises:
        CheckpointError: the config does not build a model here (e.g. a task that is not installed), or a saved
            module does not fit the model built.
    """
    try:
        model = PretrainModel(checkpoint.config, registry, checkpoint.image_size)
    except (UnknownNameError, SettingError, ImageSizeError, RunSetupError) as error:
        raise CheckpointError(f"checkpoint {checkpoint.path}: its config does not build a model: {error}") from None
    load_module_state(model.backbone, checkpoint, "model")
    for name in model.task_modules:
        load_module_state(model.task_modules[name], checkpoint, f"task/{name}")
        load_module_state(model.aux_modules[name], checkpoint, f"aux/{name}")
    model.eval()
    return model


def load_backbone(run_dir: str | Path) -> Backbone:
    """The trained shared backbone of a run: images ``(B, 3, H, W)`` (normalised) -> ``(B, D, h, w)``."""
    return load_run(run_dir).model.backbone


def load_representation(run_dir: str | Path, task: str | None = None) -> Representation:
    """The task's downstream representation: float images ``(B, 3, H, W)`` in [0, 1] -> features ``(B, D)``."""
    return load_run(run_dir).model.representation(task)
