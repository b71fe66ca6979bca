"""The trainable pieces of a run: the shared backbone and, per task, its modules and auxiliary modules."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ssl_engine.backbones.base import Backbone
from ssl_engine.checkpoint import LoadedCheckpoint, load_module_state, module_tensors
from ssl_engine.config import PretrainConfig, TaskSpec
from ssl_engine.distributed import current_world
from ssl_engine.plugin_failure import PluginCodeError
from ssl_engine.registry import Registered, Registry, UnknownNameError
from ssl_engine.settings import SettingError, resolve_settings
from ssl_engine.task import ImageSizeError, PretextTask, Representation, StepClock, TaskContext


class RunSetupError(ValueError):
    """The run can't be built as asked (incompatible tasks, a head of the wrong kind, ...)."""


@dataclass
class TaskRuntime:
    """One task of the run with its networks."""

    spec: TaskSpec
    task: PretextTask
    modules: nn.ModuleDict
    aux: nn.ModuleDict
    origin: Registered | None = None  # the registry entry (plugin, distribution) the task came from


def resolve_image_size(config: PretrainConfig, registry: Registry) -> int:
    """``--image-size`` or else the largest default image size of the run's tasks."""
    if config.image_size is not None:
        return config.image_size
    return max(registry.get("task", spec.name).obj.default_image_size for spec in config.tasks)


def resolve_optimizer(config: PretrainConfig, registry: Registry) -> str:
    """``--optimizer``, or else the ``default_optimizer`` the run's tasks name, or else ``sgd``.

    A mix whose tasks name different optimisers trains with SGD, with a warning naming each task's choice.
    """
    if config.optimizer is not None:
        return config.optimizer
    named = {
        spec.name: choice
        for spec in config.tasks
        if (choice := registry.get("task", spec.name).obj.default_optimizer) is not None
    }
    if len(set(named.values())) == 1:
        return next(iter(named.values()))
    if named:
        choices = ", ".join(f"{name}: {choice}" for name, choice in named.items())
        warnings.warn(
            f"the tasks name different default optimizers ({choices}); training with sgd: pass --optimizer to choose",
            stacklevel=2,
        )
    return "sgd"


def task_classes(config: PretrainConfig, registry: Registry) -> list[type[PretextTask]]:
    """The run's task classes, checked for a valid mix (raises :class:`UnknownNameError`/:class:`RunSetupError`)."""
    if not config.tasks:
        raise RunSetupError("no task given; pass --task NAME")
    names = [spec.name for spec in config.tasks]
    if len(set(names)) != len(names):
        raise RunSetupError(f"a task is given twice: {', '.join(names)}")
    classes = [registry.get("task", name).obj for name in names]
    if len(classes) > 1:
        loners = [cls.name for cls in classes if not cls.shares_backbone]
        if loners:
            raise RunSetupError(
                f"task {loners[0]!r} cannot share the backbone with other tasks, so it can't be mixed with "
                f"{', '.join(n for n in names if n != loners[0])}"
            )
    return classes


def pinned_settings(config: PretrainConfig, registry: Registry) -> PretrainConfig:
    """A copy of ``config`` whose tasks' settings hold every declared setting's parsed value, defaults included, so
    the kept config reproduces the run whatever the defaults become (raises :class:`SettingError` on bad ones)."""
    tasks = [
        dataclasses.replace(
            spec, settings=resolve_settings(spec.name, registry.get("task", spec.name).obj.settings, spec.settings)
        )
        for spec in config.tasks
    ]
    return dataclasses.replace(config, tasks=tasks)


DEFAULT_KINDS = {"head": "classifier", "loss": "classification"}


def pick_of_kind(registry: Registry, what: str, name: str, kind: str, task: str, condition: str = "") -> Registered:
    """A registered head or loss, checked to be of the ``kind`` the task needs (else the fitting ones listed).

    ``condition`` says when the task needs that kind (" with loss_mode=..."), for tasks whose settings decide it.
    """
    entry = registry.get(what, name)
    entry_kind = entry.meta.get("kind", DEFAULT_KINDS[what])
    if entry_kind != kind:
        fitting = sorted(e.name for e in registry.entries(what) if e.meta.get("kind", DEFAULT_KINDS[what]) == kind)
        raise RunSetupError(
            f"{what} {name!r} is a {entry_kind} {what}; task {task!r} needs a {kind} {what}{condition}: "
            + ", ".join(fitting)
        )
    return entry


def pick_loss(
    registry: Registry, spec: TaskSpec, task_class: type[PretextTask], settings: dict[str, Any]
) -> Registered:
    """The registered loss of a task: ``--loss`` if given, checked to be of the kind the task takes with its
    settings (:meth:`PretextTask.loss_choice`), else the task's default for them.

    Raises:
        RunSetupError: ``--loss`` names a loss of the wrong kind, or one for a task that computes its own loss.
    """
    kind, default = task_class.loss_choice(settings)
    given = ", ".join(f"{spec.name}.{key}={value}" for key, value in spec.settings.items()) or "its default settings"
    if kind is None:
        if spec.loss is not None:
            raise RunSetupError(
                f"--loss {spec.name}={spec.loss}: task {spec.name!r} computes its own loss with {given}, so no "
                "registered loss applies; drop --loss or change the settings"
            )
        return registry.get("loss", default)
    below_base = task_class.__mro__[: task_class.__mro__.index(PretextTask)]
    settings_decide = any("loss_choice" in vars(klass) for klass in below_base)  # the task overrides loss_choice
    condition = f" with {given} (its settings decide the kind)" if settings_decide else ""
    return pick_of_kind(registry, "loss", spec.loss or default, kind, spec.name, condition)


def checked_factory(entry: Registered, returns: type) -> Any:
    """``entry.obj`` (a backbone or head factory) wrapped so that raising or returning something other than a
    ``returns`` instance is a :class:`PluginCodeError` naming the plugin that registered it."""

    def build(*args: Any, **kwargs: Any) -> Any:
        try:
            built = entry.obj(*args, **kwargs)
        except (RunSetupError, SettingError, UnknownNameError, PluginCodeError):
            raise
        except Exception as error:
            raise PluginCodeError(entry, "its factory", error) from error
        if not isinstance(built, returns):
            wrong = f"returned {type(built).__name__}, not a {returns.__name__}"
            raise PluginCodeError(entry, "its factory", problem=wrong)
        return built

    return build


def build_task(
    origin: Registered, task_class: type[PretextTask], context: TaskContext
) -> tuple[PretextTask, nn.ModuleDict, nn.ModuleDict]:
    """The task object and its modules; what the plugin's code raises or returns wrong names the plugin."""
    where = "__init__"
    try:
        task = task_class(context)
        where = "build_modules"
        modules = task.build_modules()
        where = "build_aux_modules"
        aux = task.build_aux_modules()
    except (RunSetupError, SettingError, UnknownNameError, ImageSizeError, PluginCodeError):
        raise  # the user's choice of settings, heads, losses or image size: already a message for them
    except Exception as error:
        raise PluginCodeError(origin, where, error) from error
    for where, built in (("build_modules", modules), ("build_aux_modules", aux)):
        if not isinstance(built, nn.ModuleDict):
            raise PluginCodeError(origin, where, problem=f"returned {type(built).__name__}, not an nn.ModuleDict")
    return task, modules, aux


class PretrainModel(nn.Module):
    """Backbone + tasks, built from a config through the registry.

    Args:
        config: the run's config.
        registry: where tasks, heads, losses and backbones are looked up.
        image_size: side of the training images.
    """

    def __init__(self, config: PretrainConfig, registry: Registry, image_size: int) -> None:
        super().__init__()
        backbone_entry = registry.get("backbone", config.backbone)

        def make_backbone(in_channels: int = 3) -> Backbone:
            built: Backbone = checked_factory(backbone_entry, Backbone)(in_channels, image_size)
            return built

        self.backbone = make_backbone(3)
        self.clock = StepClock()  # the run sets its total and, before each step, its step
        self.task_modules = nn.ModuleDict()
        self.aux_modules = nn.ModuleDict()
        self.runtimes: list[TaskRuntime] = []
        for spec, task_class in zip(config.tasks, task_classes(config, registry), strict=True):
            task_class.check_images(image_size)
            settings = resolve_settings(spec.name, task_class.settings, spec.settings)
            head = pick_of_kind(registry, "head", spec.head or task_class.default_head, task_class.head_kind, spec.name)
            loss = pick_loss(registry, spec, task_class, settings)
            context = TaskContext(
                settings=settings,
                image_size=image_size,
                in_channels=3,
                feature_dim=self.backbone.feature_dim,
                feature_stride=self.backbone.stride,
                make_head=checked_factory(head, nn.Module),
                loss_fn=loss.obj(),
                make_backbone=make_backbone,
                clock=self.clock,
                global_batch=config.batch_size * current_world().size,  # the process group exists by now
            )
            origin = registry.get("task", spec.name)
            task, modules, aux = build_task(origin, task_class, context)
            self.task_modules[spec.name] = modules
            self.aux_modules[spec.name] = aux
            self.runtimes.append(TaskRuntime(spec, task, modules, aux, origin))
        for runtime in self.runtimes:
            try:
                runtime.task.setup(self.backbone, runtime.modules, runtime.aux)
            except Exception as error:
                origin = runtime.origin or registry.get("task", runtime.spec.name)
                raise PluginCodeError(origin, "setup", error) from error

    def main_parameters_modules(self) -> list[nn.Module]:
        """What the main optimizer trains: the backbone and every task's modules (not aux); of these, only
        parameters with ``requires_grad`` (a momentum teacher's are not)."""
        return [self.backbone, self.task_modules]

    def representation(self, task: str | None = None) -> Representation:
        """The downstream representation of ``task`` (default: the run's first task)."""
        for runtime in self.runtimes:
            if task is None or runtime.spec.name == task:
                return runtime.task.representation(self.backbone, runtime.modules)
        raise UnknownNameError("task of this run", str(task), [r.spec.name for r in self.runtimes])

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Every module's state under the checkpoint layout's ``model/``, ``task/`` and ``aux/`` prefixes."""
        tensors = module_tensors("model", self.backbone.state_dict())
        for name in self.task_modules:
            tensors |= module_tensors(f"task/{name}", self.task_modules[name].state_dict())
            tensors |= module_tensors(f"aux/{name}", self.aux_modules[name].state_dict())
        return tensors

    def load_state(self, checkpoint: LoadedCheckpoint) -> None:
        """Load every module saved under ``model/``, ``task/`` and ``aux/`` (the inverse of :meth:`state_tensors`).

        Raises:
            CheckpointError: a module's saved state is missing keys, has extra ones or a tensor of another shape.
        """
        load_module_state(self.backbone, checkpoint, "model")
        for name in self.task_modules:
            load_module_state(self.task_modules[name], checkpoint, f"task/{name}")
            load_module_state(self.aux_modules[name], checkpoint, f"aux/{name}")


def build_model(config: PretrainConfig, registry: Registry, image_size: int, seed: int | None = None) -> PretrainModel:
    """The run's model, on the CPU; with ``seed``, initialised from ``torch.manual_seed(seed)`` (the network a run
    with that seed starts from, e.g. the random-init reference of the probe)."""
    if seed is not None:
        torch.manual_seed(seed)
    return PretrainModel(config, registry, image_size)
