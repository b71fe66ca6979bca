"""Loading a finished (or running) pretraining run back: its model, backbone and representation."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ssl_engine.backbones.base import Backbone
from ssl_engine.checkpoint import CheckpointError, LoadedCheckpoint, latest_complete_checkpoint
from ssl_engine.config import CONFIG_FILE, PretrainConfig
from ssl_engine.plugins import get_host
from ssl_engine.registry import Registry
from ssl_engine.task import Representation
from ssl_engine.train.model import PretrainModel


@dataclass
class LoadedRun:
    """A run directory read back: config, image size, the model with the latest weights, the checkpoint."""

    run_dir: Path
    config: PretrainConfig
    image_size: int
    model: PretrainModel
    checkpoint: LoadedCheckpoint


def load_run(run_dir: str | Path, registry: Registry | None = None) -> LoadedRun:
    """Rebuild the run's model from ``config.json`` and load its latest checkpoint (CPU, eval mode).

    Raises:
        CheckpointError: ``run_dir`` is not a run directory or holds no checkpoint.
    """
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise CheckpointError(f"{run_dir} is not an sslx run directory (no {CONFIG_FILE})")
    checkpoint = latest_complete_checkpoint(run_dir)
    if checkpoint is None:
        raise CheckpointError(f"run directory {run_dir} holds no readable checkpoint")
    config = PretrainConfig.from_dict(json.loads(checkpoint.metadata["config"]))
    image_size = int(checkpoint.metadata["image_size"])
    model = PretrainModel(config, registry or get_host().registry, image_size)
    model.backbone.load_state_dict(checkpoint.module_state("model"))
    for name in model.task_modules:
        model.task_modules[name].load_state_dict(checkpoint.module_state(f"task/{name}"))
        model.aux_modules[name].load_state_dict(checkpoint.module_state(f"aux/{name}"))
    model.eval()
    return LoadedRun(run_dir, config, image_size, model, checkpoint)


def load_backbone(run_dir: str | Path) -> Backbone:
    """The trained shared backbone of a run: images ``(B, 3, H, W)`` (normalised) -> ``(B, D, h, w)``."""
    return load_run(run_dir).model.backbone


def load_representation(run_dir: str | Path, task: str | None = None) -> Representation:
    """The task's downstream representation: float images ``(B, 3, H, W)`` in [0, 1] -> features ``(B, D)``."""
    return load_run(run_dir).model.representation(task)
