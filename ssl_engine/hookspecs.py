"""Hook specifications of sslx: the whole plugin surface, in one small file.

Every hook is called once at start-up and receives a ``register`` callback; a plugin calls it for each thing it
provides and the core owns the registry (the style of simonw/llm and tox). Each ``register`` has one fixed, typed
signature, spelled out below as a :class:`~typing.Protocol`: the name and the object are positional, everything
else is keyword-only, and a keyword the signature lacks (a typo such as ``colour=False``) is refused at start-up
as a problem naming the plugin, never silently ignored. Specs only ever gain arguments; an implementation takes
just the arguments it needs (pluggy passes them by name).

A plugin is any module or object with functions decorated by :data:`hookimpl`, exposed through an entry point
in the group ``ssl_engine``::

    [project.entry-points.ssl_engine]
    mytask = "sslx_mytask.plugin"

Plugin authors import all of this (and the task contract) from :mod:`ssl_engine.api`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol

import pluggy

if TYPE_CHECKING:
    import torch
    from torch.utils.data import Dataset

    from ssl_engine.backbones.base import Backbone
    from ssl_engine.data.options import DataOptions
    from ssl_engine.eval.context import EvalContext
    from ssl_engine.loggers.base import MetricsLogger
    from ssl_engine.task import HeadFactory, LossFunction, PretextTask

PROJECT_NAME = "ssl_engine"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

# What each kind of registered object is (heads are ssl_engine.task.HeadFactory: a classifier factory maps
# (in_features, out_features) to a module taking (N, in) to (N, out), a decoder factory (in_channels, out_channels,
# scale) to one taking (N, C, h, w) to (N, out, h * scale, w * scale)). Strings: the types are only needed by type
# checkers, and importing them here would make this leaf module depend on the task contract, data and evaluation.
BackboneFactory = Callable[[int, int], "Backbone"]
"""``factory(in_channels, image_size) -> Backbone``."""
LossFactory = Callable[[], "LossFunction"]
"""``factory() -> loss``: a fresh loss function (it may keep state)."""
DatasetFactory = Callable[[str, int, "DataOptions"], "Dataset[tuple[torch.Tensor, int]]"]
"""``factory(split, image_size, options) -> Dataset`` yielding ``(image uint8 (3, S, S), label int)``, label ``-1``
when unlabelled."""
Evaluator = Callable[["EvalContext"], dict[str, Any]]
"""``evaluate(context) -> {"accuracy": float, ...}``."""
LoggerFactory = Callable[[], "MetricsLogger"]
"""``factory() -> MetricsLogger``: a fresh logger for one run (usually the logger class itself)."""
HeadKind = Literal["classifier", "decoder"]
LossKind = Literal["classification", "regression"]


class TaskRegister(Protocol):
    """``register(TaskClass)``: a :class:`~ssl_engine.api.PretextTask` subclass; its class attribute ``name`` is
    its registry name and ``summary`` its help line."""

    def __call__(self, task: type[PretextTask], /) -> None: ...


class HeadRegister(Protocol):
    """``register(name, factory, *, kind="classifier", help="")``.

    ``kind`` says which tasks can take the head: ``classifier`` (pooled features) or ``decoder`` (spatial map).
    """

    def __call__(
        self, name: str, factory: HeadFactory, /, *, kind: HeadKind = "classifier", help: str = ""
    ) -> None: ...


class LossRegister(Protocol):
    """``register(name, factory, *, kind="classification", help="")``.

    ``kind``: ``classification`` (logits ``(N, K)``, integer targets ``(N,)``) or ``regression`` (same-shape
    tensors).
    """

    def __call__(
        self, name: str, factory: LossFactory, /, *, kind: LossKind = "classification", help: str = ""
    ) -> None: ...


class BackboneRegister(Protocol):
    """``register(name, factory, *, help="")``."""

    def __call__(self, name: str, factory: BackboneFactory, /, *, help: str = "") -> None: ...


class DatasetRegister(Protocol):
    """``register(name, factory, *, help="", labelled=True, color=True, pretrain_split="train")``.

    ``labelled``: its splits carry labels (evaluation needs them). ``color``: its images are colour (grayscale
    ones are promoted to RGB, but tasks that need colour refuse them). ``pretrain_split``: the split pretraining
    reads (e.g. STL-10's ``"unlabeled"``); evaluation reads ``train``, ``val`` and ``test``.
    """

    def __call__(
        self,
        name: str,
        factory: DatasetFactory,
        /,
        *,
        help: str = "",
        labelled: bool = True,
        color: bool = True,
        pretrain_split: str = "train",
    ) -> None: ...


class EvaluatorRegister(Protocol):
    """``register(name, evaluate, *, help="")``."""

    def __call__(self, name: str, evaluate: Evaluator, /, *, help: str = "") -> None: ...


class LoggerRegister(Protocol):
    """``register(name, factory, *, help="", default=False)``.

    ``default``: the logger is on when ``--loggers`` is ``auto`` (its default); otherwise only when named.
    """

    def __call__(self, name: str, factory: LoggerFactory, /, *, help: str = "", default: bool = False) -> None: ...


@hookspec
def register_tasks(register: TaskRegister) -> None:
    """Register pretext tasks (``--task NAME``).

    Args:
        register: call ``register(TaskClass)`` for each subclass of :class:`ssl_engine.api.PretextTask`. The
            task carries its pseudo-label generation, default head, default loss and pretext metric.
    """


@hookspec
def register_heads(register: HeadRegister) -> None:
    """Register heads that any task of the matching kind can be given (``--head TASK=NAME``).

    Args:
        register: call ``register(name, factory, kind="classifier", help="...")``; see :class:`HeadRegister`.
            A ``classifier`` factory is ``factory(in_features: int, out_features: int) -> nn.Module`` mapping
            ``(N, in)`` to ``(N, out)``; a ``decoder`` factory is
            ``factory(in_channels: int, out_channels: int, scale: int) -> nn.Module`` mapping a spatial map
            ``(N, C, h, w)`` to ``(N, out, h*scale, w*scale)``.
    """


@hookspec
def register_losses(register: LossRegister) -> None:
    """Register losses that any task of the matching kind can be given (``--loss TASK=NAME``).

    Args:
        register: call ``register(name, factory, kind="classification", help="...")``; see
            :class:`LossRegister`. The factory takes no arguments and returns a callable
            ``loss(prediction, target) -> scalar tensor``.
    """


@hookspec
def register_backbones(register: BackboneRegister) -> None:
    """Register backbones (``--backbone NAME``).

    Args:
        register: call ``register(name, factory, help="...")`` where
            ``factory(in_channels: int, image_size: int) -> Backbone``.
    """


@hookspec
def register_datasets(register: DatasetRegister) -> None:
    """Register data sets (``--data NAME``).

    Args:
        register: call ``register(name, factory, help="...", labelled=True, color=True, pretrain_split="train")``
            where ``factory(split: str, image_size: int, options: DataOptions) -> Dataset`` and the data set
            yields ``(image uint8 tensor (3, S, S), label int)``, label ``-1`` when unlabelled. ``split`` is
            ``pretrain_split`` when pretraining, ``train``, ``val`` or ``test`` when evaluating; see
            :class:`DatasetRegister`.
    """


@hookspec
def register_evaluators(register: EvaluatorRegister) -> None:
    """Register downstream evaluation protocols (``sslx evaluate RUN --protocol NAME``).

    Args:
        register: call ``register(name, evaluate, help="...")`` where
            ``evaluate(context: EvalContext) -> dict[str, Any]`` returns at least ``{"accuracy": float}``.
    """


@hookspec
def register_loggers(register: LoggerRegister) -> None:
    """Register where a run's metrics can go: files, dashboards, experiment trackers (``--loggers NAME,...``).

    Args:
        register: call ``register(name, factory, help="...", default=False)`` where ``factory() -> MetricsLogger``
            makes a fresh :class:`ssl_engine.api.MetricsLogger` for each run (only the main process makes one);
            see :class:`LoggerRegister`.
    """


__all__ = [
    "PROJECT_NAME",
    "BackboneFactory",
    "BackboneRegister",
    "DatasetFactory",
    "DatasetRegister",
    "Evaluator",
    "EvaluatorRegister",
    "HeadKind",
    "HeadRegister",
    "LoggerFactory",
    "LoggerRegister",
    "LossFactory",
    "LossKind",
    "LossRegister",
    "TaskRegister",
    "hookimpl",
    "hookspec",
]
