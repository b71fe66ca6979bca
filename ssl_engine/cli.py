"""The ``sslx`` command line."""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from ssl_engine import __version__
from ssl_engine.checkpoint import CheckpointError
from ssl_engine.config import FIELD_RULES, FIELD_TYPES, ConfigError, PretrainConfig, TaskSpec, apply_overrides
from ssl_engine.data.options import DataError
from ssl_engine.plugin_failure import PluginCodeError
from ssl_engine.plugins import PluginHost, PluginLoadError, get_host
from ssl_engine.registry import UnknownNameError
from ssl_engine.settings import SettingError
from ssl_engine.task import ImageSizeError
from ssl_engine.train.interrupt import TrainingInterrupted
from ssl_engine.train.model import RunSetupError

FC = TypeVar("FC", bound=Callable[..., Any])
USER_ERRORS = (UnknownNameError, SettingError, RunSetupError, DataError, ImageSizeError, CheckpointError)


def host_or_exit() -> PluginHost:
    """The plugin host, with every plugin problem shown on stderr (fatal in strict mode)."""
    try:
        host = get_host()
    except PluginLoadError as error:
        raise click.ClickException(str(error)) from None
    for problem in host.problems:
        click.echo(f"warning: {problem}", err=True)
    return host


def parse_task(value: str) -> TaskSpec:
    """``NAME`` or ``NAME=WEIGHT`` of ``--task`` (the weight a finite number > 0)."""
    name, _, weight = value.partition("=")
    try:
        number = float(weight) if weight else 1.0
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected NAME or NAME=WEIGHT", param_hint="--task") from None
    try:
        return TaskSpec(name.strip(), number)
    except ConfigError as error:
        raise click.BadParameter(f"{value!r}: {error}", param_hint="--task") from None


def parse_pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    """``TASK=NAME`` pairs of ``--head``/``--loss``."""
    pairs = {}
    for value in values:
        task, sep, name = value.partition("=")
        if not sep or not task or not name:
            raise click.BadParameter(f"{value!r}: expected TASK=NAME", param_hint=option)
        pairs[task] = name
    return pairs


def parse_options(values: tuple[str, ...]) -> dict[str, str]:
    """``KEY=VALUE`` pairs of ``sslx evaluate --set``."""
    options = {}
    for value in values:
        key, sep, option_value = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r}: expected KEY=VALUE", param_hint="--set")
        options[key] = option_value
    return options


def parse_settings(values: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """``TASK.KEY=VALUE`` pairs of ``--set``."""
    settings: dict[str, dict[str, Any]] = {}
    for value in values:
        key, sep, setting_value = value.partition("=")
        task, dot, name = key.partition(".")
        if not sep or not dot or not task or not name:
            raise click.BadParameter(f"{value!r}: expected TASK.SETTING=VALUE", param_hint="--set")
        settings.setdefault(task, {})[name] = setting_value
    return settings


def debugging() -> bool:
    """``sslx --debug`` or ``SSLX_DEBUG=1``: show plugin tracebacks instead of one line."""
    context = click.get_current_context(silent=True)
    flag = bool(context and context.find_root().params.get("debug"))
    return flag or os.environ.get("SSLX_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


def os_error_line(error: OSError) -> str:
    """An I/O error as one line naming the path and the OS's reason."""
    if error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return str(error)


class SslxGroup(click.Group):
    """The ``sslx`` group: an error in a plugin's code, or an I/O error no command expected, becomes one line
    naming the plugin (or the path) and exit 1, instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PluginCodeError as error:
            if debugging():
                raise
            click.echo(f"Error: {error}\n(the plugin's traceback: sslx --debug ... or SSLX_DEBUG=1)", err=True)
            sys.exit(1)
        except OSError as error:
            if debugging():
                raise
            click.echo(f"Error: {os_error_line(error)}", err=True)
            sys.exit(1)


@click.group(cls=SslxGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="sslx")
@click.option("--debug", is_flag=True, help="Show full tracebacks of errors raised in plugins' code.")
def main(debug: bool) -> None:
    """sslx: self-supervised pretraining for images, with pretext tasks as plugins.

    \b
    Examples:
      sslx plugins                               # what is installed
      sslx pretrain --task jigsaw                # pretrain on the embedded data, then linear probe
      sslx pretrain --task rotation --steps 200 --out runs/rot
      sslx evaluate runs/rot --protocol linear --json
    """
    warnings.showwarning = show_warning


def show_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    """Warnings as one plain line on stderr (no source lines)."""
    click.echo(f"warning: {message}", err=True)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(as_json: bool) -> None:
    """List installed plugins: distribution, version, hooks and what each registered.

    \b
    Plugin problems (failed imports, hooks that raised, names already taken) are listed too.
    Examples:
      sslx plugins
      sslx plugins --json
      SSLX_DISABLE_PLUGINS=broken sslx plugins
    """
    host = host_or_exit()
    listing = [asdict(info) for info in host.plugins.values()]
    problems = [asdict(problem) for problem in host.problems]
    if as_json:
        click.echo(json.dumps({"plugins": listing, "problems": problems}, indent=2))
        return
    for info in host.plugins.values():
        click.echo(f"{info.name}  ({info.distribution} {info.version})")
        for kind, names in info.registered.items():
            click.echo(f"  {kind + ('es' if kind.endswith('s') else 's'):<11} {', '.join(names)}")
    for problem in host.problems:
        click.echo(f"PROBLEM  {problem}")


def _quiet(*args: Any, **kwargs: Any) -> None:
    """``click.echo`` for ranks other than 0: says nothing."""


def fail(error: Exception | str) -> None:
    """A user error: message on stderr, exit code 2."""
    click.echo(f"Error: {error}", err=True)
    sys.exit(2)


def validate_field(context: click.Context, parameter: click.Parameter, value: Any) -> Any:
    """Check a command-line value against its config field's rule (the same check a config file gets)."""
    name = parameter.name or ""
    if value is None or context.get_parameter_source(name) in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP):
        return value
    try:
        FIELD_RULES[name].check(name, str(value) if isinstance(value, Path) else value, FIELD_TYPES[name])
    except ConfigError as error:
        raise click.BadParameter(str(error).replace(f"field {name!r} ", "")) from None
    return value


def field_option(name: str) -> Callable[[FC], FC]:
    """The ``click.option`` of one config field, generated from its declaration in ``ssl_engine.config``."""
    rule, annotation = FIELD_RULES[name], FIELD_TYPES[name]
    kind = annotation.split(" ")[0]
    default = next(f.default for f in fields(PretrainConfig) if f.name == name)
    settings: dict[str, Any] = {"help": rule.help, "callback": validate_field, "default": default}
    if kind == "bool":
        two_way = "/" in (rule.flag or "")  # --x/--no-x: click makes it a flag itself
        settings["show_default"] = two_way
        if not two_way:
            settings["is_flag"] = True
    else:
        settings["show_default"] = default is not None
        if rule.metavar:
            settings["metavar"] = rule.metavar
        if rule.choices is not None:
            settings["type"] = click.Choice(rule.choices)
        elif rule.path:
            settings["type"] = click.Path(file_okay=False, path_type=Path)
        elif kind == "int":
            settings["type"] = click.IntRange(rule.minimum, rule.maximum)  # type: ignore[arg-type]
        elif kind == "float":
            settings["type"] = click.FloatRange(rule.minimum, rule.maximum, min_open=rule.min_open)
    flag = rule.flag or "--" + name.replace("_", "-")
    return click.option(flag, name, **settings)


def config_field_options(command: FC) -> FC:
    """One option per :class:`PretrainConfig` field, in declaration order."""
    for name in reversed(list(FIELD_RULES)):
        command = field_option(name)(command)
    return command


def given_options(options: dict[str, Any]) -> dict[str, Any]:
    """The config fields the user set on the command line (not click's defaults)."""
    context = click.get_current_context()
    given = {}
    for name in FIELD_RULES:
        if context.get_parameter_source(name) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP):
            value = options[name]
            given[name] = str(value) if isinstance(value, Path) else value
    return given


@main.command()
@click.option(
    "--task",
    "tasks",
    multiple=True,
    metavar="NAME[=WEIGHT]",
    help="Pretext task; repeat to mix tasks on one backbone, =W weights its loss (default 1).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Experiment file (TOML) holding any of these options; options given here override it.",
)
@config_field_options
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), help="Run directory [default: runs/TASK-TIME]."
)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its latest complete checkpoint.")
@click.option("--force", is_flag=True, help="With --resume, accept changed options other than budget and logging.")
@click.option(
    "--restart",
    is_flag=True,
    help="With --resume, start again from step 0 when no checkpoint can be used (they are moved to RUN_DIR/damaged).",
)
@click.option("--head", "heads", multiple=True, metavar="TASK=NAME", help="Give a task another registered head.")
@click.option("--loss", "losses", multiple=True, metavar="TASK=NAME", help="Give a task another registered loss.")
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="TASK.KEY=VALUE",
    help="A task setting, e.g. jigsaw.permutations=30 (see `sslx plugins`).",
)
def pretrain(**options: Any) -> None:
    """Pretrain a backbone on one or more pretext tasks.

    \b
    Examples:
      sslx pretrain --task jigsaw
      sslx pretrain --task rotation --backbone resnet18 --data cifar10 --download --epochs 30
      sslx pretrain --task rotation --task jigsaw=0.5 --head rotation=mlp --set jigsaw.permutations=30
      sslx pretrain --config exp.toml --steps 100
      sslx pretrain --out runs/rot --resume --steps 2000
      torchrun --nproc-per-node 4 -m ssl_engine.cli pretrain --task simclr --sync-bn --out runs/simclr4
    """
    host = host_or_exit()
    from ssl_engine.distributed import shutdown
    from ssl_engine.eval.evaluate import probe_against_random
    from ssl_engine.run import build_run
    from ssl_engine.run_directory import RunDirectoryError, saved_config
    from ssl_engine.train.loop import CheckpointWriteError, Trainer

    tasks = [parse_task(value) for value in options["tasks"]]
    out: Path | None = options["out"]
    try:
        if options["restart"] and not options["resume"]:
            raise click.UsageError("--restart goes with --resume")
        if options["resume"]:
            if out is None:
                raise click.UsageError("--resume needs --out RUN_DIR")
            base = saved_config(out)
        elif options["config_file"] is not None:
            base = PretrainConfig.load(options["config_file"])
        else:
            base = PretrainConfig(tasks=[])
        config = apply_overrides(
            base,
            given_options(options),
            tasks,
            parse_pairs(options["heads"], "--head"),
            parse_pairs(options["losses"], "--loss"),
            parse_settings(options["settings"]),
        )
        if not config.tasks:
            raise click.UsageError("no task given: pass --task NAME (or a --config file with [tasks.NAME])")
        run = build_run(
            config, host.registry, out, resume=options["resume"], force=options["force"], restart=options["restart"]
        )
        trainer = Trainer(run)
    except click.UsageError:
        raise
    except (*USER_ERRORS, ConfigError, RunDirectoryError, ValueError) as error:
        fail(error)
    except OSError as error:  # e.g. a read-only or unwritable --out
        fail(f"cannot use run directory {out or 'runs/'}: {os_error_line(error)}")
    world, out = run.world, run.out
    say = click.echo if world.is_main else _quiet  # one voice under torchrun: rank 0 reports and probes
    say(
        f"pretraining {', '.join(t.name for t in config.tasks)} on {config.data} ({run.image_size} px), "
        f"backbone {config.backbone}, {run.total_steps} steps on {run.device} ({run.precision.name}), "
        f"run directory {out}",
        err=True,
    )
    try:
        result = trainer.train()
    except TrainingInterrupted as stop:
        say(f"{stop}; resume with: sslx pretrain --out {out} --resume", err=True)
        sys.exit(stop.exit_code)
    except (FloatingPointError, CheckpointWriteError) as error:
        say(f"Error: {error}", err=True)
        sys.exit(1)
    shutdown(world)  # the processes part here; rank 0 probes on its own
    if not world.is_main:
        return
    shown = trainer.headline(result.final) if result.final else {}
    say(f"finished {result.steps} steps: " + ", ".join(f"{k} {v:.4g}" for k, v in shown.items()))
    if config.probe and trainer.source.labelled:
        say("linear probe (frozen features, classifier chosen on val, test top-1):", err=True)
        report = probe_against_random(run, step=result.steps)
        name = "+".join(t.name for t in config.tasks)
        say(f"  {'pretrained ' + name:<30} {report['pretrained']['accuracy']:.4f}")
        say(f"  {'random init':<30} {report['random_init']['accuracy']:.4f}")


@main.command()
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
    help="Protocol option, e.g. k=20 or temperature=0.07 (knn), epochs=10 or lr=0.005 (finetune).",
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda", "mps"]),
    default="auto",
    show_default=True,
    help="Where to compute features and train classifiers.",
)
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
    except USER_ERRORS as error:
        fail(error)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(f"{protocol} top-1 accuracy on {result['data']} test: {result['accuracy']:.4f}")


@main.command()
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
    except USER_ERRORS as error:
        fail(error)
    except OSError as error:
        fail(f"cannot write --out {out}: {os_error_line(error)}")
    click.echo(f"wrote {report.path} ({report.architecture}): {report.message}")


@main.command()
@click.option("--tasks", required=True, metavar="T1,T2,...|all", help="Tasks to compare, or all installed ones.")
@click.option("--data", default="shapes", show_default=True, metavar="NAME|PATH", help="Labelled data set.")
@click.option("--steps", type=click.IntRange(1), help="Pretraining steps of every task (the budget) [default: 600].")
@click.option("--protocols", default="linear,knn", show_default=True, help="Evaluation protocols, comma-separated.")
@click.option("--backbone", default="smallconv", show_default=True, help="The backbone every row uses.")
@click.option("--image-size", type=click.IntRange(8, 1024), help="Common image size [default: the tasks' largest].")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(2), help="Images per step.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of every row.")
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda", "mps"]),
    default="auto",
    show_default=True,
    help="Where to train and evaluate.",
)
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
    except (*USER_ERRORS, ValueError) as error:
        fail(error)
    click.echo((out / "table.md").read_text())


@main.command()
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
    except (*USER_ERRORS, ValueError) as error:
        fail(error)
    click.echo(f"wrote {written}")


@main.command()
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
    out: Path | None,
) -> None:
    """Draw real examples of a task's pretext batch (after a run: with the model's predictions).

    \b
    Examples:
      sslx show --task rotation --out rotation.png
      sslx show --task jigsaw --data cifar10 --data-dir ~/data
      sslx show runs/rot
      sslx show --task mae --backbone timm:vit_tiny_patch16_224
    """
    host = host_or_exit()
    from ssl_engine.show import render

    try:
        pictures = render(host.registry, run_dir=run_dir, task=task, data=data, image_size=image_size, count=count,
                          seed=seed, backbone=backbone)  # fmt: skip
    except (*USER_ERRORS, ValueError) as error:
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


def _add_command_modules() -> None:
    """Subcommands that live in their own modules."""
    from ssl_engine.embed import embed
    from ssl_engine.scaffold import new_plugin
    from ssl_engine.shard import shard

    main.add_command(new_plugin)
    main.add_command(embed)
    main.add_command(shard)


_add_command_modules()

if __name__ == "__main__":
    main()
