"""Stopping cleanly on SIGTERM/SIGINT: finish the current step, save a checkpoint, exit.

Preemption (a scheduler's SIGTERM) or Ctrl-C then loses at most the step in flight.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class TrainingInterrupted(Exception):
    """Raised after the checkpoint of an interrupted run is safely written."""

    def __init__(self, signal_number: int, step: int) -> None:
        self.signal_number, self.step = signal_number, step
        self.exit_code = 128 + signal_number  # the shell's convention for "ended by signal N"
        super().__init__(f"stopped by {signal.Signals(signal_number).name} after step {step}; checkpoint saved")


class StopRequest:
    """Remembers the first SIGTERM/SIGINT received while installed; a second SIGINT interrupts at once."""

    def __init__(self) -> None:
        self.signal_number: int | None = None

    def _handle(self, signal_number: int, frame: FrameType | None) -> None:
        if self.signal_number is not None and signal_number == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_number = signal_number

    @contextmanager
    def installed(self) -> Iterator[StopRequest]:
        """Handle the signals inside the block (main thread only; elsewhere a no-op)."""
        try:
            previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}
        except ValueError:  # not the main thread: leave signals alone
            yield self
            return
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
