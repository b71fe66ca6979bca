"""``sslx bench``: a fair, repeatable comparison of pretext tasks.

Each task is pretrained with the same backbone, data, image size, optimiser and budget, then evaluated with the
chosen protocols; two reference rows are added, the backbone at random initialisation and the same backbone
trained with the labels (supervised). The table has methods as rows and protocols as columns, like the tables of
Gidaris et al. 2018 and Chen et al. 2020, and is written as Markdown, CSV and a PNG chart; under it, a note per
protocol states what its column did (the ``recipe`` a protocol reports, e.g. the fine-tuning budget). The protocols
of a row share one evaluation context, so the frozen features are extracted once per row. Every finished row is
kept in ``OUT/rows/``, and an interrupted pretraining resumes from its checkpoint, so a bench can be re-run to
finish what is missing without recomputing anything.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssl_engine.atomic_files import write_json_atomic
from ssl_engine.config import PretrainConfig, TaskSpec
from ssl_engine.data.catalog import DataSource, resolve_data
from ssl_engine.data.options import DataError, DataOptions
from ssl_engine.distributed import pick_device
from ssl_engine.eval.context import EvalContext
from ssl_engine.eval.supervised import train_supervised
from ssl_engine.registry import Registry
from ssl_engine.run import Run, build_run
from ssl_engine.task import ImageSizeError, Representation
from ssl_engine.train.loop import Trainer
from ssl_engine.train.model import build_model, resolve_image_size
from ssl_engine.train.online_probe import count_classes

RANDOM_INIT = "random init"
SUPERVISED = "supervised"


@dataclass
class BenchPlan:
    """What to compare and how."""

    tasks: list[str]
    out: Path
    protocols: list[str] = field(default_factory=lambda: ["linear", "knn"])
    data: str = "shapes"
    backbone: str = "smallconv"
    image_size: int | None = None
    steps: int | None = None
    batch_size: int = 64
    seed: int = 0
    device: str = "auto"
    protocol_options: dict[str, str] = field(default_factory=dict)


def _slug(method: str) -> str:
    return method.replace(" ", "-")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_json_atomic(path, data)


class Bench:
    """Runs a :class:`BenchPlan` row by row (skipping finished rows) and writes the table."""

    def __init__(self, plan: BenchPlan, registry: Registry, echo: Callable[[str], None] = print) -> None:
        self.plan, self.registry, self.echo = plan, registry, echo
        for protocol in plan.protocols:
            registry.get("evaluator", protocol)
        for task in plan.tasks:
            registry.get("task", task)
        self.image_size = plan.image_size or resolve_image_size(
            PretrainConfig([TaskSpec(t) for t in plan.tasks]), registry
        )
        (plan.out / "rows").mkdir(parents=True, exist_ok=True)

    def config(self, task: str) -> PretrainConfig:
        plan = self.plan
        return PretrainConfig([TaskSpec(task)], backbone=plan.backbone, data=plan.data, image_size=self.image_size,
                              batch_size=plan.batch_size, steps=plan.steps, seed=plan.seed, device=plan.device,
                              probe=False)  # fmt: skip

    def trainer(self, task: str, run_dir: Path) -> Trainer:
        """The trainer of a task's row; a row whose pretraining was interrupted resumes it."""
        resume = (run_dir / "config.toml").exists()
        return Trainer(build_run(self.config(task), self.registry, run_dir, resume=resume))

    def reference_task(self) -> str:
        """A task of the plan that accepts the data, to build the reference rows' networks and data stream with
        (the backbone is made before any task module, so which one does not change its initialisation): on
        grayscale data, not a colour task."""
        color = self._source().color
        for task in self.plan.tasks:
            try:
                self.registry.get("task", task).obj.check_images(self.image_size, color)
            except (ImageSizeError, DataError):
                continue
            return task
        return self.plan.tasks[0]

    def representation(self, method: str) -> tuple[Representation, Run | None]:
        """Train (or resume) what ``method`` needs and return its representation and run."""
        runs = self.plan.out / "runs"
        if method == RANDOM_INIT:
            model = build_model(self.config(self.reference_task()), self.registry, self.image_size, seed=self.plan.seed)
            return Representation(model.backbone), None
        if method == SUPERVISED:
            shutil.rmtree(runs / SUPERVISED, ignore_errors=True)  # a half-trained reference starts over
            run = build_run(self.config(self.reference_task()), self.registry, runs / SUPERVISED)
            assert run.source is not None and run.stream is not None
            classes = count_classes(run.source.split("train", self.image_size), run.stream.labels)
            return train_supervised(run, classes), run
        trainer = self.trainer(method, runs / method)
        trainer.train()
        return trainer.model.representation(), trainer.run

    def row(self, method: str) -> dict[str, Any]:
        """One row: ``{"method", "<protocol>": accuracy, ...}``, or ``n/a`` with the reason."""
        path = self.plan.out / "rows" / f"{_slug(method)}.json"
        if path.exists():
            self.echo(f"{method}: done before, kept")
            return dict(json.loads(path.read_text()))
        self.echo(f"{method}: training and evaluating")
        try:
            representation, run = self.representation(method)
        except (ImageSizeError, DataError) as error:
            row: dict[str, Any] = {"method": method, "note": f"n/a: {error}"} | {p: None for p in self.plan.protocols}
            _write_json(path, row)
            return row
        source = run.source if run is not None and run.source is not None else self._source()
        device = run.device if run is not None else pick_device(self.plan.device)
        row = {"method": method, "steps": run.total_steps if run is not None else 0}
        # One context for every protocol of the row: the frozen features are extracted once (the fine-tuning
        # protocol starts from the linear probe on the same features).
        context = EvalContext(representation.to(device), source, self.image_size, device, seed=self.plan.seed,
                              options=dict(self.plan.protocol_options))  # fmt: skip
        recipes = {}
        for protocol in self.plan.protocols:
            result = self.registry.get("evaluator", protocol).obj(context)
            row[protocol] = float(result["accuracy"])
            if result.get("recipe"):
                recipes[protocol] = str(result["recipe"])
        row["recipes"] = recipes
        _write_json(path, row)
        return row

    def _source(self) -> DataSource:
        return resolve_data(self.plan.data, self.registry, DataOptions())

    def run(self) -> list[dict[str, Any]]:
        """Every row (tasks, then the two references), then the table files."""
        rows = [self.row(method) for method in [*self.plan.tasks, RANDOM_INIT, SUPERVISED]]
        write_table(rows, self.plan, self.image_size)
        return rows


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def markdown_table(rows: list[dict[str, Any]], plan: BenchPlan, image_size: int) -> str:
    """The comparison as Markdown: test top-1 accuracy (%) per method and protocol."""
    header = "| method | " + " | ".join(plan.protocols) + " |"
    lines = [
        f"Test top-1 accuracy (%) on {plan.data}; backbone {plan.backbone}, {image_size} px, batch {plan.batch_size}, "
        f"{plan.steps or 'default'} pretraining steps, seed {plan.seed}.",
        "",
        header,
        "|---" * (len(plan.protocols) + 1) + "|",
    ]
    for row in rows:
        cells = " | ".join(_cell(row.get(p)) for p in plan.protocols)
        lines.append(f"| {row['method']} | {cells} |")
    notes = [f"- {row['method']}: {row['note']}" for row in rows if row.get("note")]
    recipes = protocol_recipes(rows, plan.protocols)
    notes += [f"- {protocol}: {recipe}" for protocol, recipe in recipes.items()]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def protocol_recipes(rows: list[dict[str, Any]], protocols: list[str]) -> dict[str, str]:
    """What each protocol column did (its result's ``recipe``, e.g. the fine-tuning budget), from the first row
    that reports one: a column is only comparable to another when its budget is stated."""
    recipes: dict[str, str] = {}
    for row in rows:
        for protocol, recipe in (row.get("recipes") or {}).items():
            if protocol in protocols:
                recipes.setdefault(protocol, recipe)
    return {protocol: recipes[protocol] for protocol in protocols if protocol in recipes}


def write_table(rows: list[dict[str, Any]], plan: BenchPlan, image_size: int) -> None:
    """``table.md``, ``table.csv`` and, when matplotlib is installed, ``chart.png`` in the bench directory."""
    (plan.out / "table.md").write_text(markdown_table(rows, plan, image_size))
    with open(plan.out / "table.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", *plan.protocols])
        for row in rows:
            writer.writerow([row["method"], *("" if row.get(p) is None else f"{row[p]:.4f}" for p in plan.protocols)])
    draw_chart(rows, plan, plan.out / "chart.png")


class MissingExtraError(RuntimeError):
    """An optional dependency is needed; the message says which extra to install."""


def draw_chart(rows: list[dict[str, Any]], plan: BenchPlan, path: Path) -> None:
    """Grouped bars: one group per method, one bar per protocol."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        raise MissingExtraError("the chart needs matplotlib: pip install 'sslx[plot]'") from None
    figure, axes = pyplot.subplots(figsize=(1.6 + 1.3 * len(rows), 3.6))
    width = 0.8 / len(plan.protocols)
    for index, protocol in enumerate(plan.protocols):
        values = [100 * (row.get(protocol) or 0.0) for row in rows]
        positions = [i + (index - (len(plan.protocols) - 1) / 2) * width for i in range(len(rows))]
        axes.bar(positions, values, width, label=protocol)
    axes.set_xticks(range(len(rows)), [row["method"] for row in rows], rotation=20)
    axes.set_ylabel("test top-1 accuracy (%)")
    axes.set_ylim(0, 100)
    axes.set_title(f"{plan.data}, {plan.backbone}")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)
