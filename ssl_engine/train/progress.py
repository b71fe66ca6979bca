"""The progress display: a tqdm bar on a terminal, plain lines (no control characters) otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm


class Progress:
    """Shows step, loss, pretext metric, images/s and ETA.

    Args:
        total: steps of the run.
        start: step resumed from.
        every: on a non-terminal, print one line every ``every`` steps.
        enabled: False on ranks other than 0 (one display under torchrun).
    """

    def __init__(
        self, total: int, start: int = 0, every: int = 10, enabled: bool = True, stream: TextIO | None = None
    ) -> None:
        self.stream = stream or sys.stderr
        self.total, self.every, self.enabled = total, every, enabled
        self.interactive = enabled and self.stream.isatty()
        self.started = time.perf_counter()
        self.start = start
        self.bar = tqdm(total=total, initial=start, file=self.stream, dynamic_ncols=True) if self.interactive else None

    def update(self, step: int, summary: dict[str, float], images_per_s: float) -> None:
        """Report that ``step`` (1-based count of finished steps) is done."""
        if not self.enabled:
            return
        shown = {key: f"{value:.4g}" for key, value in summary.items()}
        shown["img/s"] = f"{images_per_s:.0f}"
        if self.bar is not None:
            self.bar.set_postfix(shown, refresh=False)
            self.bar.update(step - self.bar.n)
        elif step % self.every == 0 or step == self.total:
            elapsed = time.perf_counter() - self.started
            done = step - self.start
            eta = elapsed / done * (self.total - step) if done else 0.0
            fields = " ".join(f"{key}={value}" for key, value in shown.items())
            print(f"step {step}/{self.total} {fields} eta={eta:.0f}s", file=self.stream, flush=True)

    def advance(self, step: int) -> None:
        """Move the bar to ``step`` without new figures (steps between two read-backs of the metrics)."""
        if self.bar is not None:
            self.bar.update(step - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
