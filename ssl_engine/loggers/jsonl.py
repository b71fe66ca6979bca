"""``RUN_DIR/metrics.jsonl``: one JSON line per logged step, the run's own record.

Always on: ``--resume`` truncates it to the checkpoint's step, ``sslx plot`` and the tests read it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from ssl_engine.loggers.base import MetricsLogger, RunOutcome
from ssl_engine.run_directory import METRICS_FILE


class JsonlLogger(MetricsLogger):
    """Appends ``{"step": STEP, ...values}`` to ``RUN_DIR/metrics.jsonl``, flushed at every line."""

    def __init__(self) -> None:
        self.file: IO[str] | None = None

    def open(self, run_dir: Path, start_step: int, config: Mapping[str, Any]) -> None:
        self.file = open(run_dir / METRICS_FILE, "a")  # noqa: SIM115 - closed in close()

    def log(self, step: int, values: Mapping[str, object]) -> None:
        assert self.file is not None, "log before open"
        self.file.write(json.dumps({"step": step, **values}) + "\n")
        self.file.flush()

    def close(self, outcome: RunOutcome = "finished") -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
