"""The one object the training loop logs to: it hands each logged step to the run's loggers (``--loggers``).

Loggers are registered by plugins through ``register_loggers`` (the core's own: ``jsonl``, writing
``RUN_DIR/metrics.jsonl``, and ``tensorboard``; see :mod:`ssl_engine.loggers`). ``--loggers`` names the ones a run
uses, comma-separated; ``auto`` stands for those registered with ``default=True`` (the core's ``tensorboard`` when
TensorBoard is installed), and ``jsonl`` is always among them: resuming, ``sslx plot`` and the tests read
``metrics.jsonl``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from ssl_engine.hookspecs import LoggerFactory
from ssl_engine.loggers.base import MetricsLogger, RunOutcome
from ssl_engine.names import CORE_PLUGIN, env_flag
from ssl_engine.plugin_failure import PluginCodeError
from ssl_engine.registry import Registered, Registry, UnknownNameError
from ssl_engine.train.interrupt import TrainingInterrupted

AUTO = "auto"
"""In ``--loggers``: every logger registered with ``default=True``."""
ALWAYS = "jsonl"
"""The logger every run has, whatever ``--loggers`` says."""


def chosen_loggers(names: str, registry: Registry) -> list[Registered[LoggerFactory]]:
    """The loggers ``--loggers NAMES`` asks for: ``jsonl`` first, then the others in the order given, once each.

    Raises:
        UnknownNameError: a name nobody registered (the message names the closest and every valid one).
    """
    table = registry.loggers
    chosen = [ALWAYS]
    for name in (part.strip() for part in names.split(",")):
        wanted = [entry.name for entry in table if entry.meta.get("default")] if name == AUTO else [name]
        for logger in wanted:
            if logger and logger not in chosen:
                chosen.append(logger)
    for name in chosen:
        if name not in table:
            raise UnknownNameError("logger", name, [AUTO, *table.names()])
    return [table[name] for name in chosen]


def outcome_of(kind: type[BaseException] | None) -> RunOutcome:
    """How a session ended, from the exception leaving the loop (``None``: it ran to the end)."""
    if kind is None:
        return "finished"
    return "stopped" if issubclass(kind, TrainingInterrupted | KeyboardInterrupt) else "failed"


class MetricsLog:
    """Hands each logged step to the chosen loggers, opened on entering the ``with`` block and closed on leaving it.

    A logger that raises while opening stops the run before it trains (:class:`PluginCodeError`, naming its
    plugin). One that raises later is named in a warning and left out for the rest of the run, so a tracker's
    hiccup does not end a long run; ``SSLX_STRICT_PLUGINS=1`` makes it fatal, and so is any failure of the core's
    own loggers (``metrics.jsonl`` is the run's record).

    Args:
        loggers: the run's loggers (:func:`chosen_loggers`).
        run_dir: the run directory.
        start_step: the step training starts from (the checkpoint's on resume; see :meth:`MetricsLogger.open`).
        config: the run's config as plain data.
        enabled: ``False`` (ranks other than 0 under torchrun) makes no logger and writes nothing.
    """

    def __init__(
        self,
        loggers: list[Registered[LoggerFactory]],
        run_dir: Path,
        *,
        start_step: int = 0,
        config: Mapping[str, Any] | None = None,
        enabled: bool = True,
    ) -> None:
        self.chosen = loggers if enabled else []
        self.run_dir, self.start_step, self.config = run_dir, start_step, dict(config or {})
        self.active: list[tuple[Registered[LoggerFactory], MetricsLogger]] = []

    def __enter__(self) -> MetricsLog:
        try:
            for entry in self.chosen:
                logger = self._call(entry, "its factory", entry.obj)
                if not isinstance(logger, MetricsLogger):
                    wrong = f"returned {type(logger).__name__}, not a MetricsLogger"
                    raise PluginCodeError(entry, "its factory", problem=wrong)
                self._call(entry, "open", logger.open, self.run_dir, self.start_step, self.config)
                self.active.append((entry, logger))
        except BaseException as error:
            self._close_all(outcome_of(type(error)))
            raise
        return self

    def write(self, step: int, values: Mapping[str, object]) -> None:
        """Log ``values`` (scalars keyed like ``rotation/accuracy``) at ``step`` to every logger still working."""
        for entry, logger in list(self.active):
            try:
                logger.log(step, values)
            except Exception as error:
                self._drop(entry, logger, "log", error)

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._close_all(outcome_of(kind), raising=kind is None)

    def _close_all(self, outcome: RunOutcome, raising: bool = False) -> None:
        """Close every open logger; a failure is dropped with a warning (raised when ``raising`` and it must be)."""
        while self.active:
            entry, logger = self.active.pop(0)
            try:
                logger.close(outcome)
            except Exception as error:
                if raising:
                    self._drop(entry, logger, "close", error)
                else:  # an error is already on its way out: say this one, don't replace it
                    warnings.warn(str(PluginCodeError(entry, "close", error)), stacklevel=2)

    def _drop(self, entry: Registered[LoggerFactory], logger: MetricsLogger, where: str, error: Exception) -> None:
        """A logger failed after opening: fatal for the core's loggers and in strict mode, else warned and left out."""
        failure = PluginCodeError(entry, where, error)
        if entry.plugin == CORE_PLUGIN or env_flag("SSLX_STRICT_PLUGINS"):
            raise failure from error
        warnings.warn(f"{failure}; it logs nothing more in this run", stacklevel=3)
        self.active = [(other, kept) for other, kept in self.active if kept is not logger]
        if where == "log":
            try:
                logger.close("failed")
            except Exception:  # already reported once; its resources go with the process
                pass

    @staticmethod
    def _call(entry: Registered[LoggerFactory], where: str, function: Any, *args: Any) -> Any:
        """``function(*args)``, an error named after the plugin that registered ``entry``."""
        try:
            return function(*args)
        except PluginCodeError:
            raise
        except Exception as error:
            raise PluginCodeError(entry, where, error) from error
