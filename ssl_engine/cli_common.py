"""What every ``sslx`` command shares: parsing ``NAME=VALUE`` options, one-line errors, the plugin host.

Nothing here imports torch: ``sslx --help``, option errors and unknown names answer at once; the plugin host (and
with it torch) is built only when a command starts its work (:func:`host_or_exit`).
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NoReturn

import click

from ssl_engine.config import DEVICE_NAMES, ConfigError, TaskSpec
from ssl_engine.names import known_task_names, unknown_name

if TYPE_CHECKING:
    from ssl_engine.plugins import PluginHost

INTERRUPTED_EXIT = 130
"""The shell's code for a command ended by Ctrl-C (128 + SIGINT)."""

# torchvision's advice to Python callers, inside our data errors: the message gives sslx's own (--download).
_TORCHVISION_HINT = re.compile(r"\s*\((?:Dataset not found|[^()]*download=True)[^()]*\)")


def user_errors(*more: type[Exception]) -> tuple[type[Exception], ...]:
    """The errors that mean "the input can't be used as asked" (exit 2, one line), not a bug, and ``more``.

    A function, not a constant, so that their modules (some import torch) load only when an error is being
    matched: an ``except`` clause evaluates its expression only when something was raised.
    """
    from ssl_engine.checkpoint import CheckpointError
    from ssl_engine.data.options import DataError
    from ssl_engine.registry import UnknownNameError
    from ssl_engine.settings import SettingError
    from ssl_engine.task import ImageSizeError
    from ssl_engine.train.model import RunSetupError

    return (UnknownNameError, SettingError, RunSetupError, DataError, ImageSizeError, CheckpointError, *more)


def host_or_exit() -> PluginHost:
    """The plugin host, with every plugin problem shown on stderr (fatal in strict mode)."""
    from ssl_engine.plugins import PluginLoadError, get_host

    try:
        host = get_host()
    except PluginLoadError as error:
        raise click.ClickException(str(error)) from None
    for problem in host.problems:
        click.echo(f"warning: {problem}", err=True)
    return host


def parse_task(value: str) -> TaskSpec:
    """``NAME`` or ``NAME=WEIGHT`` of ``--task`` (the weight a finite number > 0)."""
    name, _, weight = value.partition("=")
    try:
        number = float(weight) if weight else 1.0
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected NAME or NAME=WEIGHT", param_hint="--task") from None
    try:
        return TaskSpec(name.strip(), number)
    except ConfigError as error:
        raise click.BadParameter(f"{value!r}: {error}", param_hint="--task") from None


def parse_pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    """``TASK=NAME`` pairs of ``--head``/``--loss``."""
    pairs = {}
    for value in values:
        task, sep, name = value.partition("=")
        if not sep or not task or not name:
            raise click.BadParameter(f"{value!r}: expected TASK=NAME", param_hint=option)
        pairs[task] = name
    return pairs


def parse_options(values: tuple[str, ...]) -> dict[str, str]:
    """``KEY=VALUE`` pairs of ``sslx evaluate --set``."""
    options = {}
    for value in values:
        key, sep, option_value = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r}: expected KEY=VALUE", param_hint="--set")
        options[key] = option_value
    return options


def parse_settings(values: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """``TASK.KEY=VALUE`` pairs of ``--set``."""
    settings: dict[str, dict[str, Any]] = {}
    for value in values:
        key, sep, setting_value = value.partition("=")
        task, dot, name = key.partition(".")
        if not sep or not dot or not task or not name:
            raise click.BadParameter(f"{value!r}: expected TASK.SETTING=VALUE", param_hint="--set")
        settings.setdefault(task, {})[name] = setting_value
    return settings


def debugging() -> bool:
    """``sslx --debug`` or ``SSLX_DEBUG=1``: show plugin tracebacks instead of one line."""
    context = click.get_current_context(silent=True)
    flag = bool(context and context.find_root().params.get("debug"))
    return flag or os.environ.get("SSLX_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


def os_error_line(error: OSError) -> str:
    """An I/O error as one line naming the path and the OS's reason."""
    if error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return str(error)


def error_line(error: Exception | str) -> str:
    """A user error's message for the terminal: without torchvision's advice to Python callers."""
    return _TORCHVISION_HINT.sub("", str(error))


def fail(error: Exception | str) -> NoReturn:
    """A user error: one line on stderr, exit code 2."""
    click.echo(f"Error: {error_line(error)}", err=True)
    sys.exit(2)


def cannot_write(what: str, error: OSError) -> NoReturn:
    """An I/O error while a command writes its output (a read-only folder, a full disk): one line naming ``what``
    it was writing and the OS's reason, exit code 1."""
    click.echo(f"Error: cannot write {what}: {error.strerror or error}", err=True)
    sys.exit(1)


def refuse_unknown_tasks(tasks: Iterable[str]) -> None:
    """Refuse an unknown task name (exit 2, naming the closest) before torch and the plugins load, when the
    installed plugins declare their task names (:mod:`ssl_engine.names`); otherwise the registry refuses it once
    the plugins are loaded."""
    known = known_task_names()
    if known is None:
        return
    for name in tasks:
        if name not in known:
            fail(unknown_name("task", name, known))


def quiet(*args: Any, **kwargs: Any) -> None:
    """``click.echo`` for ranks other than 0: says nothing."""


def device_option(help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The ``--device`` option of the commands other than ``pretrain`` (whose options come from the config): the
    config field's choices (``auto``, ``cpu``, ``cuda``, ``mps``), ``auto`` by default, ``help`` saying what runs
    there."""
    return click.option("--device", type=click.Choice(DEVICE_NAMES), default="auto", show_default=True, help=help)


def check_device(device: str, option: str = "--device") -> None:
    """Refuse ``--device cuda`` (or ``mps``) on a machine without one, suggesting what works (exit 2).

    Imports torch, so it is called when the command's work starts, never for ``--help`` or option errors.
    """
    if device not in ("cuda", "mps"):
        return
    import torch

    available = torch.cuda.is_available() if device == "cuda" else torch.backends.mps.is_available()
    if not available:
        what = "CUDA" if device == "cuda" else "MPS (an Apple GPU)"
        fail(
            f"{option} {device}: {what} is not available on this machine; use {option} auto (a GPU when there is "
            f"one, else the CPU) or {option} cpu"
        )


def shell_path(path: object) -> str:
    """A path as the user would type it in a shell (quoted when it needs to be)."""
    return shlex.quote(str(path))


def interrupted(what: str, later: str) -> NoReturn:
    """Ctrl-C during an evaluation: one line saying what stopped and how to run it later, exit 130 (rather than
    click's ``Aborted!`` and exit 1)."""
    click.echo(f"interrupted: {what}; run it later with: {later}", err=True)
    sys.exit(INTERRUPTED_EXIT)
