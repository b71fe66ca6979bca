"""Where logged metrics go: ``RUN_DIR/metrics.jsonl`` always, TensorBoard event files when it is installed.

TensorBoard is an optional extra (``pip install 'sslx[tensorboard]'``); its event files go to
``RUN_DIR/tensorboard/`` so ``tensorboard --logdir runs`` shows every run. A resumed run adds an event file to
the same folder, which tells TensorBoard to drop what earlier sessions logged after the checkpoint it resumes
from (a ``purge_step``), so the steps trained again show once, as the resumed run logs them.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import TracebackType
from typing import Any


class MetricsLog:
    """Appends one JSON line per logged step and mirrors scalars to TensorBoard when available.

    ``enabled=False`` (ranks other than 0 under torchrun) writes nothing. ``start_step`` is the step the run
    starts from (the checkpoint's on resume): TensorBoard then hides the events earlier sessions logged after it,
    which this session logs again. ``None`` keeps every earlier event.
    """

    def __init__(self, run_dir: Path, enabled: bool = True, start_step: int | None = None) -> None:
        self.file: Any = None
        self.writer: Any = None
        if not enabled:
            return
        self.file = open(run_dir / "metrics.jsonl", "a")  # noqa: SIM115 - closed in __exit__
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is an optional extra
            return
        # purge_step P hides earlier events at steps >= P; the checkpoint's own step was logged before it was saved.
        purge_step = None if start_step is None else start_step + 1
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge_step)

    def write(self, step: int, values: dict[str, float]) -> None:
        """Log ``values`` (scalars keyed like ``rotation/accuracy``) at ``step``."""
        if self.file is None:
            return
        self.file.write(json.dumps({"step": step, **values}) + "\n")
        self.file.flush()
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, int | float):  # names (of unreadable files) go to metrics.jsonl only
                    self.writer.add_scalar(key, value, step)
            self.writer.flush()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self.file is not None:
            self.file.close()
        if self.writer is not None:
            self.writer.close()
