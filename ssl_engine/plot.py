"""``sslx plot``: loss, pretext-metric and learning-rate curves of one or several runs in one PNG.

matplotlib is an optional extra (``pip install 'sslx[plot]'``).
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from ssl_engine.bench import MissingExtraError
from ssl_engine.checkpoint import CheckpointError
from ssl_engine.registry import Registry, UnknownNameError


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The logged lines of a run, oldest first."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        raise CheckpointError(f"{run_dir} has no metrics.jsonl: not an sslx run directory, or nothing logged yet")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def metric_keys(run_dir: Path, registry: Registry) -> list[str]:
    """``<task>/<pretext metric>`` for each task of the run (the metric each task declares)."""
    tasks = tomllib.loads((run_dir / "config.toml").read_text()).get("tasks", {})
    keys = []
    for name in tasks:
        try:
            keys.append(f"{name}/{registry.get('task', name).obj.metric}")
        except UnknownNameError:  # the plugin is gone; accuracy is the usual metric
            keys.append(f"{name}/accuracy")
    return keys


def plot_runs(run_dirs: list[Path], out: Path, registry: Registry) -> Path:
    """Draw the runs' curves into ``out`` (three panels: loss, pretext metric, learning rate)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        raise MissingExtraError("sslx plot needs matplotlib: pip install 'sslx[plot]'") from None
    figure, (loss_axes, metric_axes, lr_axes) = pyplot.subplots(1, 3, figsize=(14, 3.8))
    for run_dir in run_dirs:
        lines = read_metrics(run_dir)
        steps = [line["step"] for line in lines]
        label = run_dir.name
        loss_axes.plot(steps, [line["loss"] for line in lines], label=label)
        for key in metric_keys(run_dir, registry):
            points = [(line["step"], line[key]) for line in lines if key in line]
            if points:
                metric_axes.plot(*zip(*points, strict=True), label=f"{label}: {key}")
        lr_axes.plot(steps, [line["lr"] for line in lines], label=label)
    for axes, title in ((loss_axes, "loss"), (metric_axes, "pretext metric"), (lr_axes, "learning rate")):
        axes.set_title(title)
        axes.set_xlabel("step")
        axes.legend(fontsize=7)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    pyplot.close(figure)
    return out
