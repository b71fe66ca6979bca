"""TensorBoard after a resume: the steps trained again after the checkpoint show once, with the resumed values.

A first session logs steps 2, 4, ..., 12 and is checkpointed at step 6; the resumed session starts from step 6
and logs 8, 10, ..., 16 into the same run directory. TensorBoard's own reader (``EventAccumulator``) must see
each step once: 2..6 from the first session, 8..16 from the second.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ssl_engine.plugins import PluginHost
from ssl_engine.train.metrics_log import MetricsLog, chosen_loggers

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

CHECKPOINT_STEP = 6


def logged_steps(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    """``(step, value)`` of every scalar event of ``tag`` TensorBoard shows for the run, in its order."""
    accumulator = event_accumulator.EventAccumulator(str(run_dir / "tensorboard"))
    accumulator.Reload()
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


def test_a_resumed_run_shows_every_step_once_in_tensorboard(tmp_path: Path) -> None:
    loggers = chosen_loggers("tensorboard", PluginHost.from_plugins([]).registry)
    with MetricsLog(loggers, tmp_path, start_step=0) as first:
        for step in range(2, 14, 2):  # interrupted after step 12; its last checkpoint is step 6's
            first.write(step, {"loss": 1.0})
    with MetricsLog(loggers, tmp_path, start_step=CHECKPOINT_STEP) as resumed:
        for step in range(CHECKPOINT_STEP + 2, 18, 2):
            resumed.write(step, {"loss": 2.0})

    shown = logged_steps(tmp_path, "loss")
    steps = [step for step, _ in shown]
    assert len(steps) == len(set(steps)), f"steps shown twice: {sorted(steps)}"
    assert shown == [(step, 1.0) for step in (2, 4, 6)] + [(step, 2.0) for step in range(8, 18, 2)]
