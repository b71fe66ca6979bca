"""The commands that use finished runs (``evaluate``, ``export``, ``plot``, ``show``) and compare tasks
(``bench``); each imports torch and the plugins only when its work starts."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ssl_engine.cli_common import (
    check_device,
    device_option,
    fail,
    host_or_exit,
    interrupted,
    os_error_line,
    parse_options,
    parse_settings,
    refuse_unknown_tasks,
    shell_path,
    user_errors,
)


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--protocol", default="linear", show_default=True, help="Evaluation protocol (see `sslx plugins`).")
@click.option("--data", help="Labelled data set or folder [default: the run's].")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), help="Where downloadable data sets live.")
@click.option("--download", is_flag=True, help="Allow downloading the data set.")
@click.option("--task", help="Whose representation, in a mixed run [default: the first task].")
@click.option(
    "--label-fraction",
    type=click.FloatRange(0, 1, min_open=True),
    help="Use only this share of the train labels, sampled per class and seeded (e.g. 0.01, 0.1).",
)
@click.option(
    "--set",
    "protocol_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Protocol option, e.g. k=20 or temperature=0.07 (knn), epochs=10, lr=0.005, optimizer=adamw or "
    "layer_decay=0.75 (finetune).",
)
@device_option("Where to compute features and train classifiers.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def evaluate(
    run_dir: Path,
    protocol: str,
    data: str | None,
    data_dir: Path | None,
    download: bool,
    task: str | None,
    label_fraction: float | None,
    protocol_options: tuple[str, ...],
    device: str,
    as_json: bool,
) -> None:
    """Evaluate a run's representation downstream (linear, finetune or knn protocol).

    \b
    Examples:
      sslx evaluate runs/jigsaw --protocol linear
      sslx evaluate runs/jigsaw --protocol knn --set k=20 --json
      sslx evaluate runs/jigsaw --protocol finetune --label-fraction 0.1
      sslx evaluate runs/jigsaw --protocol linear --data fashion-mnist --json
    """
    check_device(device)
    host = host_or_exit()
    from ssl_engine.eval.evaluate import evaluate_run

    try:
        result = evaluate_run(
            run_dir,
            protocol,
            host.registry,
            data=data,
            data_dir=data_dir,
            download=download,
            task=task,
            device=device,
            label_fraction=label_fraction,
            options=parse_options(protocol_options),
        )
    except user_errors() as error:
        fail(error)
    except KeyboardInterrupt:  # features already extracted stay cached in RUN_DIR/features
        again = f"sslx evaluate {shell_path(run_dir)}" + (f" --protocol {protocol}" if protocol != "linear" else "")
        again += f" --data {shell_path(data)}" if data else ""
        interrupted(f"the {protocol} evaluation did not finish", again)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(f"{protocol} top-1 accuracy on {result['data']} test: {result['accuracy']:.4f}")


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The .safetensors file.")
@click.option("--task", help="Whose representation, in a mixed run [default: the first task].")
def export(run_dir: Path, out: Path, task: str | None) -> None:
    """Export a run's representation for downstream use (torchvision's layout for ResNets).

    \b
    Examples:
      sslx export runs/rot --out backbone.safetensors
    """
    host = host_or_exit()
    from ssl_engine.export import export_representation

    try:
        report = export_representation(run_dir, out, host.registry, task)
    except user_errors() as error:
        fail(error)
    except OSError as error:
        fail(f"cannot write --out {out}: {os_error_line(error)}")
    click.echo(f"wrote {report.path} ({report.architecture}): {report.message}")


@click.command()
@click.option("--tasks", required=True, metavar="T1,T2,...|all", help="Tasks to compare, or all installed ones.")
@click.option("--data", default="shapes", show_default=True, metavar="NAME|PATH", help="Labelled data set.")
@click.option("--steps", type=click.IntRange(1), help="Pretraining steps of every task (the budget) [default: 600].")
@click.option("--protocols", default="linear,knn", show_default=True, help="Evaluation protocols, comma-separated.")
@click.option("--backbone", default="smallconv", show_default=True, help="The backbone every row uses.")
@click.option("--image-size", type=click.IntRange(8, 1024), help="Common image size [default: the tasks' largest].")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(2), help="Images per step.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of every row.")
@device_option("Where to train and evaluate.")
@click.option("--set", "protocol_options", multiple=True, metavar="KEY=VALUE", help="Protocol option, e.g. k=20.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Bench directory; re-running with the same one finishes what is missing.",
)
def bench(
    tasks: str,
    data: str,
    steps: int | None,
    protocols: str,
    backbone: str,
    image_size: int | None,
    batch_size: int,
    seed: int,
    device: str,
    protocol_options: tuple[str, ...],
    out: Path,
) -> None:
    """Compare pretext tasks: same backbone, data and budget; random-init and supervised reference rows.

    \b
    Writes OUT/table.md, OUT/table.csv and OUT/chart.png, and prints the table.
    Examples:
      sslx bench --tasks rotation,jigsaw --steps 300 --out bench/shapes
      sslx bench --tasks all --data fashion-mnist --image-size 32 --protocols linear,knn --out bench/fmnist
    """
    refuse_unknown_tasks([] if tasks == "all" else [t.strip() for t in tasks.split(",") if t.strip()])
    check_device(device)
    host = host_or_exit()
    from ssl_engine.bench import Bench, BenchPlan, MissingExtraError

    names = host.registry.names("task") if tasks == "all" else [t.strip() for t in tasks.split(",") if t.strip()]
    if not names:
        raise click.BadParameter(f"{tasks!r} names no task; give T1,T2,... or all", param_hint="--tasks")
    if not [p for p in protocols.split(",") if p.strip()]:
        raise click.BadParameter(f"{protocols!r} names no protocol", param_hint="--protocols")
    plan = BenchPlan(names, out, [p.strip() for p in protocols.split(",") if p.strip()], data, backbone, image_size,
                     steps, batch_size, seed, device, parse_options(protocol_options))  # fmt: skip
    try:
        runner = Bench(plan, host.registry, echo=lambda line: click.echo(line, err=True))
        runner.run()
    except MissingExtraError as error:
        click.echo(f"warning: {error}; the table was written without a chart", err=True)
    except user_errors(ValueError) as error:
        fail(error)
    click.echo((out / "table.md").read_text())


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), help="The PNG to write [default: FIRST_RUN/curves.png]."
)
def plot(run_dirs: tuple[Path, ...], out: Path | None) -> None:
    """Draw loss, pretext-metric and learning-rate curves of one or several runs into one PNG.

    \b
    Examples:
      sslx plot runs/rot
      sslx plot runs/rot runs/jigsaw --out compare.png
    """
    host = host_or_exit()
    from ssl_engine.bench import MissingExtraError
    from ssl_engine.plot import plot_runs

    try:
        written = plot_runs(list(run_dirs), out or run_dirs[0] / "curves.png", host.registry)
    except MissingExtraError as error:
        raise click.ClickException(str(error)) from None
    except user_errors(ValueError) as error:
        fail(error)
    click.echo(f"wrote {written}")


@click.command()
@click.argument("run_dir", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--task", help="The task to draw (for a RUN_DIR: one of its tasks) [default: all of the run's].")
@click.option("--data", help="Data set or folder the examples come from [default: shapes, or the run's].")
@click.option("--image-size", type=click.IntRange(8, 1024), help="Image side in px [default: the task's].")
@click.option("--count", default=6, show_default=True, type=click.IntRange(1, 64), help="Examples (rows).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the pseudo-labels drawn.")
@click.option(
    "--backbone", help="Backbone of a fresh --task (e.g. timm:vit_tiny_patch16_224 for mae) [default: smallconv]."
)
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="TASK.KEY=VALUE",
    help="A setting of the fresh --task, e.g. dino.local_crops=4 (a RUN_DIR draws with its own).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="PNG to write [default: TASK.png, or RUN_DIR/show-TASK.png].",
)
def show(
    run_dir: Path | None,
    task: str | None,
    data: str | None,
    image_size: int | None,
    count: int,
    seed: int,
    backbone: str | None,
    settings: tuple[str, ...],
    out: Path | None,
) -> None:
    """Draw real examples of a task's pretext batch (after a run: with the model's predictions).

    \b
    Examples:
      sslx show --task rotation --out rotation.png
      sslx show --task jigsaw --data cifar10 --data-dir ~/data
      sslx show runs/rot
      sslx show --task mae --backbone timm:vit_tiny_patch16_224
      sslx show --task dino --set dino.local_crops=4
    """
    if run_dir is None and task is not None:  # a fresh task's name answers before torch loads
        refuse_unknown_tasks([task])
    task_settings = parse_settings(settings)
    if task_settings and run_dir is not None:
        fail("--set is for a fresh --task: a RUN_DIR is drawn with the settings it trained with")
    others = sorted(set(task_settings) - {task}) if task is not None else []  # no --task: render says to give one
    if others:
        fail(f"--set {others[0]}.…: the task drawn is {task!r}; --set takes only its settings")
    host = host_or_exit()
    from ssl_engine.show import render

    try:
        pictures = render(host.registry, run_dir=run_dir, task=task, data=data, image_size=image_size, count=count,
                          seed=seed, backbone=backbone, settings=task_settings.get(str(task), {}))  # fmt: skip
    except user_errors(ValueError) as error:
        fail(error)
    for name, picture in pictures.items():
        path = out if out is not None and len(pictures) == 1 else None
        if path is None:
            path = run_dir / f"show-{name}.png" if run_dir is not None else Path(f"{name}.png")
        try:
            picture.save(path)
        except OSError as error:
            fail(f"cannot write {path}: {os_error_line(error)}")
        click.echo(f"wrote {path}")
