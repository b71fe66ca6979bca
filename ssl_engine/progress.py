"""Progress of a long phase outside the training loop (feature extraction, classifier fits, reference training).

Like the training loop's display (:mod:`ssl_engine.train.progress`): on a terminal, a tqdm bar with an ETA that is
cleared when the phase ends; anywhere else (a log file, a pipe, a test's captured stderr), plain lines without
control characters: one when the phase starts, saying what it does ("extracting features of 10,000 train
images"), then one every :data:`LOG_INTERVAL` seconds with the count done and the ETA, and a closing one with the
time taken when the phase lasted long enough to print progress lines.
"""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TextIO

from tqdm import tqdm

LOG_INTERVAL = 10.0


def seconds(value: float) -> str:
    """A duration as people say it: ``"8s"``, ``"2 min 5s"``, ``"1 h 3 min"``."""
    value = max(0, round(value))
    if value < 60:
        return f"{value}s"
    if value < 3600:
        return f"{value // 60} min {value % 60}s"
    return f"{value // 3600} h {value % 3600 // 60} min"


class Phase:
    """One phase in progress; :meth:`advance` it as the work gets done (see :meth:`PhaseProgress.phase`)."""

    def __init__(self, description: str, total: int, unit: str, stream: TextIO, interactive: bool,
                 interval: float) -> None:  # fmt: skip
        self.description, self.total, self.unit = description, total, unit
        self.stream, self.interval = stream, interval
        self.done = 0
        self.started = self.last_line = time.perf_counter()
        self.lines = 0
        self.bar = (
            tqdm(total=total, desc=description, unit=unit, file=stream, dynamic_ncols=True, leave=False)
            if interactive
            else None
        )
        if self.bar is None:
            self._say(description)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def eta(self) -> float | None:
        """Seconds left at the pace so far (``None`` before the first unit is done)."""
        if self.done <= 0:
            return None
        return self.elapsed / self.done * max(self.total - self.done, 0)

    def advance(self, count: int = 1) -> None:
        """``count`` more units are done."""
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
            return
        now = time.perf_counter()
        if now - self.last_line >= self.interval and self.done < self.total:
            self.last_line = now
            self.lines += 1
            eta = self.eta()
            left = f", about {seconds(eta)} left" if eta is not None else ""
            self._say(f"{self.description}: {self.done:,}/{self.total:,} {self.unit}{left}")

    def close(self, finished: bool = True) -> None:
        if self.bar is not None:
            self.bar.close()
        elif finished and self.lines:
            self._say(f"{self.description}: done in {seconds(self.elapsed)}")

    def _say(self, line: str) -> None:
        print(line, file=self.stream, flush=True)


@dataclass(frozen=True)
class PhaseProgress:
    """Reports phases on ``stream`` (default: ``sys.stderr`` as it is when a phase starts, so a CLI runner that
    captures it sees the lines).

    Attributes:
        enabled: False to say nothing (ranks other than 0, library use that wants silence).
        prefix: put before every line, naming what the phases work on (``"random init: "``).
        stream: where to write; ``None``: the current ``sys.stderr``.
        interval: seconds between two progress lines when not on a terminal.
    """

    enabled: bool = True
    prefix: str = ""
    stream: TextIO | None = None
    interval: float = LOG_INTERVAL

    def labelled(self, label: str) -> PhaseProgress:
        """The same reporter with ``label: `` added to the prefix (what the coming phases work on)."""
        return replace(self, prefix=f"{self.prefix}{label}: ")

    def note(self, message: str) -> None:
        """One plain line (what is about to happen, where a result came from)."""
        if self.enabled:
            tqdm.write(f"{self.prefix}{message}", file=self._stream())

    @contextmanager
    def phase(self, description: str, total: int, unit: str = "it") -> Iterator[Phase]:
        """A phase of ``total`` units (``unit``: ``"img"``, ``"fit"``, ``"step"``) described by ``description``.

        The bar (or the closing line) is finished however the phase ends; an interrupted phase prints no
        "done" line.
        """
        stream = self._stream() if self.enabled else io.StringIO()  # disabled: written nowhere that is read
        phase = Phase(f"{self.prefix}{description}", total, unit, stream, stream.isatty(), self.interval)
        finished = False
        try:
            yield phase
            finished = True
        finally:
            phase.close(finished)

    def _stream(self) -> TextIO:
        return self.stream if self.stream is not None else sys.stderr
