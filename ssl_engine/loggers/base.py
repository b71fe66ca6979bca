"""The logger contract: what an experiment tracker plugin implements (``register_loggers``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

RunOutcome = Literal["finished", "stopped", "failed"]
"""How the session that logged ended: ``finished`` (the budget is trained), ``stopped`` (Ctrl-C or SIGTERM; a
checkpoint was saved and ``--resume`` continues), ``failed`` (an error)."""


class MetricsLogger:
    """Where a run's logged metrics go: a file, a dashboard, an experiment tracker (``--loggers NAME``).

    A plugin registers a factory making one (usually the subclass itself) with ``register_loggers``; a run makes a
    fresh logger, in the main process only (rank 0 under torchrun). The training loop calls :meth:`open` once
    before the first step, :meth:`log` at every logged step (each ``--log-every`` steps and the last one), and
    :meth:`close` once at the end, also when training stops early. Only :meth:`log` must be written.

    A logger that raises in :meth:`open` stops the run before it trains, naming the plugin; one that raises later is
    named in a warning and left out for the rest of the run (``SSLX_STRICT_PLUGINS=1``: the run stops).

    Example::

        class PrintLogger(MetricsLogger):
            def log(self, step: int, values: Mapping[str, object]) -> None:
                print(step, self.scalars(values))
    """

    def open(self, run_dir: Path, start_step: int, config: Mapping[str, Any]) -> None:
        """Start logging the run kept in ``run_dir``.

        Args:
            run_dir: the run directory; a tracker may keep its own files there (the id of its run, so that a
                ``--resume`` continues the same one).
            start_step: the step training starts from: 0 for a new run, the checkpoint's step on ``--resume``.
                Steps after it that an earlier session logged are trained, and logged, again.
            config: the run's resolved config as plain data (what ``RUN_DIR/config.toml`` holds: fields, and the
                tasks under ``"tasks"``), e.g. for a tracker's parameters.
        """

    def log(self, step: int, values: Mapping[str, object]) -> None:
        """Log ``values`` at ``step``.

        Args:
            step: the optimisation step the values were measured at (1 for the first step).
            values: metric name -> value. Numbers (``"loss"``, ``"rotation/accuracy"``, ``"lr"``,
                ``"images_per_s"``), and at the end of a run that skipped unreadable files their names (strings);
                :meth:`scalars` keeps the numbers.
        """
        raise NotImplementedError

    def close(self, outcome: RunOutcome = "finished") -> None:
        """Flush and let go of what :meth:`open` took (files, connections); ``outcome`` says how the session ended."""

    @staticmethod
    def scalars(values: Mapping[str, object]) -> dict[str, float]:
        """The numeric values of ``values``, as floats (for trackers that take numbers only)."""
        return {
            key: float(value)
            for key, value in values.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        }
