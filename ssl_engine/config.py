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

Each field is declared once, with its type (the annotation) and its :class:`FieldRule` (range, choices, help,
command-line spelling, whether a resume may change it). The command line's options are generated from these
declarations (``ssl_engine.cli``) and every :class:`PretrainConfig`, from a file, a checkpoint header or the
command line, is checked against the same rules when it is built, so a config file can't hold a value the command
line refuses.

The run directory keeps the resolved config, so ``sslx pretrain --config RUN_DIR/config.toml --out NEW`` reproduces
the run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

CONFIG_FILE = "config.toml"
# Longest string a field may hold: a path (PATH_MAX on Linux) or a registry name.
MAX_PATH_LENGTH = 4096
MAX_NAME_LENGTH = 200
# A config file larger than this is not a config file (refused before parsing).
MAX_CONFIG_BYTES = 1 << 20
OPTIMIZER_NAMES = ("sgd", "adamw", "lars")
DEVICE_NAMES = ("auto", "cpu", "cuda", "mps")
DECODE_PLACES = ("auto", "workers", "device")


class ConfigError(ValueError):
    """A config file can't be read or holds an unknown or ill-typed field; the message names the file and field."""


@dataclass(frozen=True)
class FieldRule:
    """What a :class:`PretrainConfig` field accepts and how the command line spells it.

    The field's type and whether ``None`` is allowed come from its annotation (``int``, ``float | None``, ...).

    Attributes:
        help: one line for ``--help``.
        minimum, maximum: bounds for numbers (inclusive unless ``min_open``).
        min_open: the minimum itself is excluded (``lr > 0``).
        choices: the allowed strings.
        max_length: longest allowed string.
        resumable: a ``--resume`` may change it without ``--force`` (budget, logging, placement).
        flag: the command-line option (default ``--field-name``); ``--x/--no-x`` for a two-way switch.
        metavar: shown in ``--help`` for the value.
        path: the value names a directory (shown and checked as a path on the command line).
    """

    help: str
    minimum: float | None = None
    maximum: float | None = None
    min_open: bool = False
    choices: tuple[str, ...] | None = None
    max_length: int = MAX_NAME_LENGTH
    resumable: bool = False
    flag: str | None = None
    metavar: str | None = None
    path: bool = False

    def check(self, name: str, value: Any, annotation: str) -> None:
        """Raise :class:`ConfigError` naming the field unless ``value`` fits the annotation and this rule."""
        kind = annotation.split(" ")[0]
        if value is None:
            if "None" not in annotation:
                raise ConfigError(f"field {name!r} needs a value ({kind})")
            return
        accepted: tuple[type, ...] = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,)}[kind]
        if not isinstance(value, accepted) or (kind != "bool" and isinstance(value, bool)):
            raise ConfigError(f"field {name!r} should be {annotation}, got {value!r}")
        if isinstance(value, str) and len(value) > self.max_length:
            raise ConfigError(f"field {name!r} is {len(value)} characters long; at most {self.max_length} allowed")
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"field {name!r} must be one of {', '.join(self.choices)}; got {value!r}")
        if isinstance(value, int | float) and not isinstance(value, bool):
            check_number(f"field {name!r}", value, self.minimum, self.maximum, self.min_open)


def check_number(what: str, value: float, minimum: float | None, maximum: float | None, min_open: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``value`` is finite and within the bounds."""
    if not math.isfinite(value):
        raise ConfigError(f"{what} must be a finite number; got {value!r}")
    if minimum is not None and (value <= minimum if min_open else value < minimum):
        raise ConfigError(f"{what} must be {'>' if min_open else '>='} {minimum:g}; got {value!r}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{what} must be <= {maximum:g}; got {value!r}")


def declared(default: Any, rule: FieldRule) -> Any:
    """A dataclass field with its :class:`FieldRule` attached."""
    return field(default=default, metadata={"rule": rule})


@dataclass
class TaskSpec:
    """One task of the run: its name, loss weight (finite, > 0), settings and optional head/loss overrides."""

    name: str
    weight: float = 1.0
    settings: dict[str, Any] = field(default_factory=dict)
    head: str | None = None
    loss: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or len(self.name) > MAX_NAME_LENGTH:
            raise ConfigError(f"task name {str(self.name)[:40]!r} must be 1 to {MAX_NAME_LENGTH} characters")
        if not isinstance(self.weight, int | float) or isinstance(self.weight, bool):
            raise ConfigError(f"weight of task {self.name!r} should be a number, got {self.weight!r}")
        check_number(f"weight of task {self.name!r}", self.weight, 0, None, min_open=True)
        if not isinstance(self.settings, dict):
            raise ConfigError(f"settings of task {self.name!r} should be a table, got {self.settings!r}")
        for key, value in self.settings.items():
            if isinstance(value, str) and len(value) > MAX_PATH_LENGTH:
                raise ConfigError(f"setting {self.name}.{key} is {len(value)} characters long")
        for what, value in (("head", self.head), ("loss", self.loss)):
            if value is not None and (not isinstance(value, str) or not value or len(value) > MAX_NAME_LENGTH):
                raise ConfigError(f"{what} of task {self.name!r} should be a name, got {str(value)[:40]!r}")


@dataclass
class PretrainConfig:
    """Everything that defines a pretraining run (the CLI options, resolved), checked when built.

    ``steps`` wins over ``epochs`` when both are set; neither means the default budget. ``image_size`` ``None``
    means the largest default image size of the run's tasks.

    Raises:
        ConfigError: a field is of the wrong type or out of range (the message names the field).
    """

    tasks: list[TaskSpec]
    backbone: str = declared("smallconv", FieldRule("Backbone name (see `sslx plugins`)."))
    data: str = declared(
        "shapes",
        FieldRule(
            'Registered data set, a folder of images, or tar shards ("DIR/train-{000000..000127}.tar").',
            max_length=MAX_PATH_LENGTH,
            metavar="NAME|PATH",
        ),
    )
    data_dir: str | None = declared(
        None,
        FieldRule(
            "Where downloadable data sets live (DIR/NAME/ or torchvision's own layout) [default: $SSLX_DATA_DIR, "
            "else ~/.cache/sslx/data].",
            max_length=MAX_PATH_LENGTH,
            path=True,
        ),
    )
    download: bool = declared(False, FieldRule("Allow downloading the data set."))
    verify_images: bool = declared(
        False,
        FieldRule(
            "Decode every image of a folder before training and leave out unreadable ones (slow on large folders; "
            "by default a folder is only listed, and a file that fails to decode is skipped when loaded)."
        ),
    )
    image_size: int | None = declared(
        None,
        FieldRule(
            "Image side in px [default: the tasks'; for folders and shards 224 on CUDA, 96 elsewhere].",
            minimum=8,
            maximum=1024,
        ),
    )
    batch_size: int = declared(64, FieldRule("Images per step.", minimum=2, maximum=1 << 20))
    steps: int | None = declared(
        None, FieldRule("Optimisation steps (wins over --epochs) [default: 600].", minimum=1, resumable=True)
    )
    epochs: float | None = declared(
        None, FieldRule("Epochs over the pretraining split.", minimum=0, min_open=True, maximum=1e6, resumable=True)
    )
    schedule_steps: int | None = declared(
        None,
        FieldRule(
            "Steps the learning-rate and teacher-momentum schedules span [default: the budget]; pin it to the "
            "final budget to stop early and --resume with a larger --steps as one straight run.",
            minimum=1,
        ),
    )
    optimizer: str | None = declared(
        None,
        FieldRule(
            "Optimiser [default: the one the tasks name as their default_optimizer (lars for vicreg, adamw for "
            "mae), else sgd].",
            choices=OPTIMIZER_NAMES,
        ),
    )
    lr: float | None = declared(
        None, FieldRule("Peak learning rate [sgd 0.05, adamw 1e-3, lars 1].", minimum=0, min_open=True)
    )
    weight_decay: float = declared(5e-4, FieldRule("l2 on weights.", minimum=0))
    warmup_fraction: float = declared(
        0.05,
        FieldRule("Share of the steps spent warming up linearly, before the cosine decay.", 0, 1, flag="--warmup"),
    )
    seed: int = declared(
        0, FieldRule("Seeds initialisation, data order, pseudo-labels.", minimum=0, maximum=(1 << 63) - 1)
    )
    device: str = declared(
        "auto",
        FieldRule(
            "Where to train; auto picks CUDA, then MPS, then the CPU.",
            choices=DEVICE_NAMES,
            resumable=True,
        ),
    )
    precision: str = declared(
        "auto",
        FieldRule(
            "Numerics: auto is bf16 autocast on a GPU (fp16 with a gradient scaler where bf16 is missing), float32 "
            "elsewhere.",
            choices=("auto", "bf16-mixed", "16-mixed", "32"),
        ),
    )
    workers: int = declared(2, FieldRule("Data-loading processes.", minimum=0, maximum=256, resumable=True))
    decode: str = declared(
        "auto",
        FieldRule(
            "Where the training images of a folder or shards are decoded and cropped: workers (PIL, in the --workers "
            "processes) or device (JPEGs decoded in batches on the training device by torchvision's decode_jpeg, "
            "nvJPEG on CUDA; other formats still in the workers); auto is device on CUDA, workers elsewhere (where "
            "device is slower). Data held in memory is not affected.",
            choices=DECODE_PLACES,
            resumable=True,
        ),
    )
    log_every: int = declared(10, FieldRule("Steps between metric lines.", minimum=1, resumable=True))
    checkpoint_every: int = declared(
        500, FieldRule("Steps between checkpoints (one is always written at the end).", minimum=1, resumable=True)
    )
    keep_checkpoints: int = declared(
        3, FieldRule("How many of the newest checkpoints to keep.", minimum=1, resumable=True)
    )
    probe: bool = declared(
        True,
        FieldRule(
            "After training, linear-probe the backbone and a random-init one.",
            resumable=True,
            flag="--probe/--no-probe",
        ),
    )
    online_probe: bool = declared(
        False, FieldRule("Train a linear classifier on detached features during the run and log probe/accuracy.")
    )
    sync_bn: bool = declared(
        False,
        FieldRule("Under torchrun: batch-norm statistics over the global batch of all processes (SyncBatchNorm)."),
    )
    scale_lr: bool = declared(
        False,
        FieldRule(
            "Under torchrun: multiply the lr by the number of processes (linear scaling rule, Goyal et al. 2017)."
        ),
    )
    compile: bool = declared(
        False,
        FieldRule(
            "torch.compile the backbone and heads (worth it on a GPU for long runs; the first steps are slower).",
            resumable=True,
        ),
    )
    loggers: str = declared(
        "auto",
        FieldRule(
            "Where metrics go, comma-separated: auto (jsonl, and tensorboard when installed) and any registered "
            "logger (see `sslx plugins`); RUN_DIR/metrics.jsonl is always written.",
            resumable=True,
            metavar="NAME,...",
        ),
    )

    def __post_init__(self) -> None:
        if not isinstance(self.tasks, list) or not all(isinstance(task, TaskSpec) for task in self.tasks):
            raise ConfigError("field 'tasks' should be a list of tasks")
        for name, rule in FIELD_RULES.items():
            rule.check(name, getattr(self, name), FIELD_TYPES[name])
        if self.schedule_steps is not None and self.steps is not None and self.schedule_steps < self.steps:
            raise ConfigError(
                f"field 'schedule_steps' ({self.schedule_steps}) must be at least 'steps' ({self.steps}): the "
                f"schedules span the whole budget"
            )

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
        """Build and check a config from plain data (a parsed file); unknown fields are errors.

        Raises:
            ConfigError: naming ``source`` and the field.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a table of fields, got {type(data).__name__}")
        known = {"tasks", *FIELD_RULES}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown field {unknown[0][:40]!r}; valid fields: {', '.join(sorted(known))}")
        values = {key: value for key, value in data.items() if key != "tasks"}
        tasks = data.get("tasks", {})
        if not isinstance(tasks, dict):
            raise ConfigError(f"{source}: 'tasks' should be a table of [tasks.NAME] sections")
        try:
            specs = [task_from_table(name, spec) for name, spec in tasks.items()]
            return cls(tasks=specs, **values)
        except ConfigError as error:
            raise ConfigError(f"{source}: {error}") from None

    @classmethod
    def load(cls, path: Path) -> PretrainConfig:
        """Read a TOML config file (or the JSON kept in checkpoint headers)."""
        try:
            if path.stat().st_size > MAX_CONFIG_BYTES:
                raise ConfigError(f"config file {path} is larger than {MAX_CONFIG_BYTES} bytes")
            text = path.read_text()
            data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except (OSError, ValueError) as error:
            if isinstance(error, ConfigError):
                raise
            raise ConfigError(f"cannot read config file {path}: {error}") from None
        return cls.from_dict(data, str(path))

    def differences(self, other: PretrainConfig) -> list[tuple[str, Any, Any]]:
        """``(field, mine, theirs)`` for every field that differs."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [(key, mine[key], theirs[key]) for key in mine if mine[key] != theirs[key]]


def task_from_table(name: str, spec: Any) -> TaskSpec:
    """A ``[tasks.NAME]`` section as a :class:`TaskSpec` (checked)."""
    spec = spec or {}
    if not isinstance(spec, dict):
        raise ConfigError(f"[tasks.{name}] should be a table, got {spec!r}")
    stray = sorted(set(spec) - {"weight", "settings", "head", "loss"})
    if stray:
        raise ConfigError(f"[tasks.{name}] has unknown key {stray[0][:40]!r}; valid: head, loss, settings, weight")
    return TaskSpec(name, spec.get("weight", 1.0), spec.get("settings", {}), spec.get("head"), spec.get("loss"))


FIELD_RULES: dict[str, FieldRule] = {
    f.name: f.metadata["rule"] for f in dataclasses.fields(PretrainConfig) if "rule" in f.metadata
}
FIELD_TYPES: dict[str, str] = {f.name: str(f.type) for f in dataclasses.fields(PretrainConfig)}
# Fields a resumed run may change: the budget, logging and checkpoint frequency, and where it runs.
RESUMABLE_CHANGES = frozenset(name for name, rule in FIELD_RULES.items() if rule.resumable)


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
