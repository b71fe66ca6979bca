"""Hook specifications of sslx: the whole plugin surface, in one small file.

Every hook is called once at start-up and receives a ``register`` callback; a plugin calls it for each thing
it provides and the core owns the registry (the style of simonw/llm and tox). Specs only ever gain arguments;
an implementation takes just the arguments it needs (pluggy passes them by name).

A plugin is any module or object with functions decorated by :data:`hookimpl`, exposed through an entry point
in the group ``ssl_engine``::

    [project.entry-points.ssl_engine]
    mytask = "sslx_mytask.plugin"
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT_NAME = "ssl_engine"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_tasks(register: Callable[[type], None]) -> None:
    """Register pretext tasks.

    Args:
        register: call ``register(TaskClass)`` for each subclass of
            :class:`ssl_engine.task.PretextTask`; the class attribute ``name`` is its registry name. The task
            carries its pseudo-label generation, default head, default loss and pretext metric.
    """


@hookspec
def register_heads(register: Callable[..., None]) -> None:
    """Register heads that any task of the matching kind can be given (``--head TASK=NAME``).

    Args:
        register: call ``register(name, factory, kind="classifier", help="...")``. A ``classifier`` factory is
            ``factory(in_features: int, out_features: int) -> nn.Module`` mapping ``(N, in)`` to ``(N, out)``;
            a ``decoder`` factory is ``factory(in_channels: int, out_channels: int, scale: int) -> nn.Module``
            mapping a spatial map ``(N, C, h, w)`` to ``(N, out, h*scale, w*scale)``.
    """


@hookspec
def register_losses(register: Callable[..., None]) -> None:
    """Register losses that any task of the matching kind can be given (``--loss TASK=NAME``).

    Args:
        register: call ``register(name, factory, kind="classification", help="...")``. The factory takes no
            arguments and returns a callable ``loss(prediction, target) -> scalar tensor``. Kinds:
            ``classification`` (logits ``(N, K)``, integer targets ``(N,)``) and ``regression``
            (same-shape tensors).
    """


@hookspec
def register_backbones(register: Callable[..., None]) -> None:
    """Register backbones (``--backbone NAME``).

    Args:
        register: call ``register(name, factory, help="...")`` where
            ``factory(in_channels: int, image_size: int) -> ssl_engine.backbones.Backbone``.
    """


@hookspec
def register_datasets(register: Callable[..., None]) -> None:
    """Register data sets (``--data NAME``).

    Args:
        register: call ``register(name, factory, help="...", labelled=True, splits=("train", "val", "test"))``
            where ``factory(split: str, image_size: int, options: ssl_engine.data.DataOptions) -> Dataset`` and
            the data set yields ``(image uint8 tensor (3, S, S), label int)``; label ``-1`` when unlabelled.
    """


@hookspec
def register_evaluators(register: Callable[..., None]) -> None:
    """Register downstream evaluation protocols (``sslx evaluate RUN --protocol NAME``).

    Args:
        register: call ``register(name, evaluate, help="...")`` where
            ``evaluate(context: ssl_engine.eval.EvalContext) -> dict[str, Any]`` returns at least
            ``{"accuracy": float}``.
    """


HOOK_NAMES: tuple[str, ...] = (
    "register_tasks",
    "register_heads",
    "register_losses",
    "register_backbones",
    "register_datasets",
    "register_evaluators",
)

__all__: list[Any] = ["hookspec", "hookimpl", "HOOK_NAMES", "PROJECT_NAME"]
