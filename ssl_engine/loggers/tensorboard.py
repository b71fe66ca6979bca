"""TensorBoard event files in ``RUN_DIR/tensorboard/``, so ``tensorboard --logdir runs`` shows every run.

TensorBoard is an optional extra (``pip install 'sslx[tensorboard]'``); ``--loggers auto`` (the default) uses it
when it is installed. A resumed run adds an event file to the same folder, which tells TensorBoard to drop what
earlier sessions logged after the checkpoint it resumes from (a ``purge_step``), so the steps trained again show
once, as the resumed run logs them.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ssl_engine.loggers.base import MetricsLogger, RunOutcome

TENSORBOARD_DIR = "tensorboard"
INSTALL_HINT = "pip install 'sslx[tensorboard]'"


def tensorboard_installed() -> bool:
    """Whether TensorBoard can be imported (looked up, not imported: every command loads the core's plugin)."""
    return importlib.util.find_spec("tensorboard") is not None


class TensorBoardLogger(MetricsLogger):
    """Mirrors the numeric values to TensorBoard scalars, one tag per metric name (``rotation/accuracy``)."""

    def __init__(self) -> None:
        self.writer: Any = None

    def open(self, run_dir: Path, start_step: int, config: Mapping[str, Any]) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise ModuleNotFoundError(f"TensorBoard is not installed ({INSTALL_HINT})") from error
        # purge_step P hides earlier events at steps >= P; the checkpoint's own step was logged before it was saved.
        self.writer = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR), purge_step=start_step + 1)

    def log(self, step: int, values: Mapping[str, object]) -> None:
        for key, value in self.scalars(values).items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self, outcome: RunOutcome = "finished") -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
