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
import io
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssl_engine.atomic_files import write_bytes_atomic, write_json_atomic, write_text_atomic
from ssl_engine.config import PretrainConfig, TaskSpec
from ssl_engine.data.catalog import DataSource, resolve_data
from ssl_engine.data.options import DataError, DataOptions
from ssl_engine.distributed import pick_device
from ssl_engine.eval.context import EvalContext
from ssl_engine.eval.random_init_cache import RandomInitCache, evaluated_split_sizes, random_init_key
from ssl_engine.eval.supervised import train_supervised
from ssl_engine.progress import PhaseProgress, seconds
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
    """Runs a :class:`BenchPlan` row by row (skipping finished rows) and writes the table.

    ``echo`` receives one line per row (what it does, how long it took, about how long the bench has left) and
    where the table files were written; ``progress`` reports each long phase of a row (default: on stderr);
    ``cache`` keeps the random-init row's results between benches and closing probes (default: the user cache).
    """

    def __init__(
        self,
        plan: BenchPlan,
        registry: Registry,
        echo: Callable[[str], None] = print,
        *,
        progress: PhaseProgress | None = None,
        cache: RandomInitCache | None = None,
    ) -> None:
        self.plan, self.registry, self.echo = plan, registry, echo
        self.progress = progress or PhaseProgress()
        self.cache = cache or RandomInitCache.default()
        for protocol in plan.protocols:
            registry.get("evaluator", protocol)
        for task in plan.tasks:
            registry.get("task", task)
        self.image_size = plan.image_size or resolve_image_size(
            PretrainConfig([TaskSpec(t) for t in plan.tasks]), registry
        )
        self.trained_row_seconds: list[float] = []  # rows that trained a network: the ETA of the others
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
            # Earlier versions trained it in OUT/runs/supervised and left the folder behind; it holds nothing of use.
            shutil.rmtree(runs / SUPERVISED, ignore_errors=True)
            # The reference writes nothing (no checkpoint: it is trained again when its row is missing), so its
            # run directory is a scratch folder that is removed however the row ends.
            with tempfile.TemporaryDirectory(prefix="sslx-supervised-") as scratch:
                run = build_run(self.config(self.reference_task()), self.registry, Path(scratch) / SUPERVISED)
                assert run.source is not None and run.stream is not None
                classes = count_classes(run.source.split("train", self.image_size), run.stream.labels)
                return train_supervised(run, classes, self.progress.labelled(SUPERVISED)), run
        trainer = self.trainer(method, runs / method)
        trainer.train()
        return trainer.model.representation(), trainer.run

    def describe(self, method: str) -> str:
        """What computing ``method``'s row does, in words."""
        protocols = ", ".join(self.plan.protocols)
        steps = f"for {self.plan.steps:,} steps" if self.plan.steps else "for the default budget"
        if method == RANDOM_INIT:
            return f"evaluating the backbone at its random initialisation ({protocols}); no training"
        if method == SUPERVISED:
            return f"training the backbone with the labels {steps}, then evaluating ({protocols})"
        return f"pretraining {steps}, then evaluating ({protocols})"

    def row(self, method: str, place: str = "", left: str = "") -> dict[str, Any]:
        """One row: ``{"method", "<protocol>": accuracy, ...}``, or ``n/a`` with the reason.

        ``place`` (e.g. ``"[2/5] "``) starts the line that says what the row does, ``left`` ends it (e.g. ``"; about
        3 min left for the bench"``).
        """
        path = self.plan.out / "rows" / f"{_slug(method)}.json"
        if path.exists():
            self.echo(f"{place}{method}: done before, kept ({path})")
            return dict(json.loads(path.read_text()))
        self.echo(f"{place}{method}: {self.describe(method)}{left}")
        started = time.perf_counter()
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
                              options=dict(self.plan.protocol_options),
                              progress=self.progress.labelled(method))  # fmt: skip
        recipes = {}
        for protocol in self.plan.protocols:
            result = self.evaluate(method, protocol, context)
            row[protocol] = float(result["accuracy"])
            if result.get("recipe"):
                recipes[protocol] = str(result["recipe"])
        row["recipes"] = recipes
        _write_json(path, row)
        spent = time.perf_counter() - started
        if run is not None:
            self.trained_row_seconds.append(spent)
        self.echo(f"{method}: done in {seconds(spent)}")
        return row

    def evaluate(self, method: str, protocol: str, context: EvalContext) -> dict[str, Any]:
        """``protocol``'s result on ``context``; the random-init row's is read from (or kept in) the user cache."""
        evaluate = self.registry.get("evaluator", protocol).obj
        if method != RANDOM_INIT:
            return dict(evaluate(context))
        key = random_init_key(
            context.representation,
            context.source,
            evaluated_split_sizes(context.source, self.image_size, context.split_sizes()),
            self.image_size,
            protocol=protocol,
            seed=self.plan.seed,
            device=context.device,
            backbone=self.plan.backbone,
            options=context.options,
        )
        cached = self.cache.load(key)
        if cached is not None:
            context.progress.note(f"{protocol}: read from the cache ({cached.path})")
            return cached.result
        started = time.perf_counter()
        result = dict(evaluate(context))
        self.cache.store(key, result, time.perf_counter() - started)
        return result

    def _source(self) -> DataSource:
        return resolve_data(self.plan.data, self.registry, DataOptions())

    def run(self) -> list[dict[str, Any]]:
        """Every row (tasks, then the two references), then the table files (whose paths it echoes)."""
        methods = [*self.plan.tasks, RANDOM_INIT, SUPERVISED]
        rows = []
        for index, method in enumerate(methods):
            rows.append(self.row(method, f"[{index + 1}/{len(methods)}] ", self._time_left(methods[index:])))
        written = write_table(rows, self.plan, self.image_size, draw=False)
        self.echo(f"wrote {', '.join(str(path) for path in written)}")
        chart = self.plan.out / "chart.png"
        draw_chart(rows, self.plan, chart)  # MissingExtraError without matplotlib: the tables are written
        self.echo(f"wrote {chart}")
        return rows

    def _time_left(self, methods: list[str]) -> str:
        """``"; about 3 min left for the bench"`` once a row has trained: the rows of ``methods`` still to compute
        that train a network, each taking the mean time of those trained so far (the random-init row only
        evaluates); ``""`` before."""
        rows = self.plan.out / "rows"
        training = [m for m in methods if m != RANDOM_INIT and not (rows / f"{_slug(m)}.json").exists()]
        if not self.trained_row_seconds or not training:
            return ""
        eta = sum(self.trained_row_seconds) / len(self.trained_row_seconds) * len(training)
        return f"; about {seconds(eta)} left for the bench"


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


def write_table(rows: list[dict[str, Any]], plan: BenchPlan, image_size: int, draw: bool = True) -> list[Path]:
    """``table.md``, ``table.csv`` and (with ``draw``, when matplotlib is installed) ``chart.png`` in the bench
    directory, each written atomically; the paths written."""
    write_text_atomic(plan.out / "table.md", markdown_table(rows, plan, image_size))
    lines = io.StringIO(newline="")
    writer = csv.writer(lines)
    writer.writerow(["method", *plan.protocols])
    for row in rows:
        writer.writerow([row["method"], *("" if row.get(p) is None else f"{row[p]:.4f}" for p in plan.protocols)])
    write_text_atomic(plan.out / "table.csv", lines.getvalue())
    written = [plan.out / "table.md", plan.out / "table.csv"]
    if draw:
        draw_chart(rows, plan, plan.out / "chart.png")
        written.append(plan.out / "chart.png")
    return written


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
    image = io.BytesIO()
    figure.savefig(image, dpi=120, format="png")
    pyplot.close(figure)
    write_bytes_atomic(path, image.getvalue())
