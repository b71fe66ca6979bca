"""The resolved configuration of a pretraining run: ``RUN_DIR/config.toml``, ``sslx pretrain --config FILE``.

A config file holds everything the command-line options do; options given on the command line override it::

    backbone = "smallconv"
    data = "shapes"
    steps = 600
    optimizer = "sgd"

    [tasks.rotation]
    weight = 1.0
    head = "mlp"

    [tasks.jigsaw]
    weight = 0.5
    [tasks.jigsaw.settings]
    permutations = 30

The run directory keeps the resolved config, so ``sslx pretrain --config RUN_DIR/config.toml --out NEW`` reproduces
the run.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

CONFIG_FILE = "config.toml"
# Fields a resumed run may change: the budget, logging and checkpoint frequency, and where it runs.
RESUMABLE_CHANGES = frozenset(
    {"steps", "epochs", "log_every", "checkpoint_every", "keep_checkpoints", "probe", "device", "workers", "compile"}
)


class ConfigError(ValueError):
    """A config file can't be read or holds an unknown or ill-typed field; the message names the file and field."""


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

    ``steps`` wins over ``epochs`` when both are set; neither means the default budget. ``image_size`` ``None``
    means the largest default image size of the run's tasks.
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
    keep_checkpoints: int = 3
    probe: bool = True
    online_probe: bool = False
    sync_bn: bool = False
    scale_lr: bool = False
    compile: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain data; ``tasks`` as an ordered table keyed by task name."""
        data = dataclasses.asdict(self)
        data["tasks"] = {
            task.pop("name"): {key: value for key, value in task.items() if value not in (None, {})}
            for task in data["tasks"]
        }
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_toml(self) -> str:
        """TOML with ``None`` fields left out (they mean "the default")."""
        data = {key: value for key, value in self.to_dict().items() if value is not None}
        return tomli_w.dumps(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> PretrainConfig:
        """Build and type-check a config from plain data (a parsed file); unknown fields are errors."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(f"{source}: unknown field {unknown[0]!r}; valid fields: {', '.join(sorted(fields))}")
        values = {key: value for key, value in data.items() if key != "tasks"}
        for key, value in values.items():
            if not _fits(value, str(fields[key].type)):
                raise ConfigError(f"{source}: field {key!r} should be {fields[key].type}, got {value!r}")
        tasks = data.get("tasks", {})
        if not isinstance(tasks, dict):
            raise ConfigError(f"{source}: 'tasks' should be a table of [tasks.NAME] sections")
        specs = []
        for name, spec in tasks.items():
            spec = spec or {}
            stray = sorted(set(spec) - {"weight", "settings", "head", "loss"})
            if stray:
                raise ConfigError(
                    f"{source}: [tasks.{name}] has unknown key {stray[0]!r}; valid: head, loss, settings, weight"
                )
            specs.append(
                TaskSpec(
                    name,
                    float(spec.get("weight", 1.0)),
                    dict(spec.get("settings", {})),
                    spec.get("head"),
                    spec.get("loss"),
                )
            )
        return cls(tasks=specs, **values)

    @classmethod
    def load(cls, path: Path) -> PretrainConfig:
        """Read a TOML config file (or the JSON kept in checkpoint headers)."""
        try:
            text = path.read_text()
            data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except (OSError, ValueError) as error:
            raise ConfigError(f"cannot read config file {path}: {error}") from None
        return cls.from_dict(data, str(path))

    def differences(self, other: PretrainConfig) -> list[tuple[str, Any, Any]]:
        """``(field, mine, theirs)`` for every field that differs."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [(key, mine[key], theirs[key]) for key in mine if mine[key] != theirs[key]]


def _fits(value: Any, annotation: str) -> bool:
    """Does ``value`` fit a field annotated ``int``, ``float | None``, ...? (bools are not numbers here)."""
    if value is None:
        return "None" in annotation
    kinds = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,)}
    accepted = kinds.get(annotation.split(" ")[0])
    if accepted is None:
        return True
    return isinstance(value, accepted) and (accepted == (bool,) or not isinstance(value, bool))


def apply_overrides(
    base: PretrainConfig,
    options: dict[str, Any],
    tasks: list[TaskSpec] | None = None,
    heads: dict[str, str] | None = None,
    losses: dict[str, str] | None = None,
    settings: dict[str, dict[str, Any]] | None = None,
) -> PretrainConfig:
    """``base`` with the options given on the command line applied on top.

    Args:
        base: the defaults, a config file, or a run's saved config.
        options: config fields given explicitly (by their field names).
        tasks: ``--task`` values; replace the base's task list, keeping a same-named task's settings, head and
            loss from the base unless overridden.
        heads, losses: ``TASK -> NAME`` from ``--head``/``--loss``.
        settings: ``TASK -> {SETTING: VALUE}`` from ``--set``, merged into the task's settings.

    Raises:
        ConfigError: ``--head``/``--loss``/``--set`` name a task that is not in the run.
    """
    config = dataclasses.replace(base, **options)
    by_name = {task.name: task for task in base.tasks}
    if tasks:
        config.tasks = [
            dataclasses.replace(by_name[t.name], weight=t.weight, settings=dict(by_name[t.name].settings))
            if t.name in by_name
            else t
            for t in tasks
        ]
    else:
        config.tasks = [dataclasses.replace(t, settings=dict(t.settings)) for t in base.tasks]
    in_run = {task.name: task for task in config.tasks}
    for option, given in (("--head", heads or {}), ("--loss", losses or {}), ("--set", settings or {})):
        stray = sorted(set(given) - set(in_run))
        if stray:
            raise ConfigError(
                f"{option} names task {stray[0]!r}, which is not in this run ({', '.join(in_run) or 'no tasks'})"
            )
    for name, head in (heads or {}).items():
        in_run[name].head = head
    for name, loss in (losses or {}).items():
        in_run[name].loss = loss
    for name, values in (settings or {}).items():
        in_run[name].settings.update(values)
    return config
