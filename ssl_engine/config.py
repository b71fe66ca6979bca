"""The resolved configuration of a pretraining run, as stored in ``RUN_DIR/config.json``."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TaskSpec:
    """One task of the run: its name, loss weight, settings and optional head/loss overrides."""

    name: str
    weight: float = 1.0
    settings: dict[str, Any] = field(default_factory=dict)
    head: str | None = None
    loss: str | None = None


@dataclass
class PretrainConfig:
    """Everything that defines a pretraining run (the CLI options, resolved).

    ``steps`` wins over ``epochs`` when both are set; ``image_size`` ``None`` means the largest default image
    size of the tasks in the run.
    """

    tasks: list[TaskSpec]
    backbone: str = "smallconv"
    data: str = "shapes"
    data_dir: str | None = None
    download: bool = False
    image_size: int | None = None
    batch_size: int = 64
    steps: int | None = None
    epochs: float | None = None
    optimizer: str = "sgd"
    lr: float | None = None
    weight_decay: float = 5e-4
    warmup_fraction: float = 0.05
    seed: int = 0
    device: str = "auto"
    workers: int = 2
    log_every: int = 10
    checkpoint_every: int = 500
    probe: bool = True

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PretrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        values["tasks"] = [TaskSpec(**task) for task in data.get("tasks", [])]
        return cls(**values)

    @classmethod
    def load(cls, path: Path) -> PretrainConfig:
        return cls.from_dict(json.loads(path.read_text()))
