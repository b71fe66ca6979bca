"""``sslx pretrain``: its options (generated from :mod:`ssl_engine.config`), the checks that need no torch, the run,
and the closing summary."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from click.core import ParameterSource

from ssl_engine.cli_common import (
    check_device,
    fail,
    host_or_exit,
    interrupted,
    os_error_line,
    parse_pairs,
    parse_settings,
    parse_task,
    quiet,
    refuse_unknown_tasks,
    shell_path,
    user_errors,
)
from ssl_engine.config import (
    FIELD_RULES,
    FIELD_TYPES,
    RESUMABLE_CHANGES,
    ConfigError,
    PretrainConfig,
    apply_overrides,
)

if TYPE_CHECKING:
    from ssl_engine.registry import Registry
    from ssl_engine.run import Run

FC = TypeVar("FC", bound=Callable[..., Any])


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


def resolved_config(options: dict[str, Any]) -> PretrainConfig:
    """The run's config: the saved one (``--resume``), a ``--config`` file or the defaults, with the options given
    on the command line on top (no torch needed).

    Raises:
        click.UsageError: options that don't go together, or no task.
        ConfigError, RunDirectoryError: a config file or run directory that can't be used.
    """
    from ssl_engine.run_directory import saved_config

    tasks = [parse_task(value) for value in options["tasks"]]
    if options["restart"] and not options["resume"]:
        raise click.UsageError("--restart goes with --resume")
    if options["resume"]:
        if options["out"] is None:
            raise click.UsageError("--resume needs --out RUN_DIR")
        base = saved_config(options["out"])
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
    return config


def shown_value(key: str, value: Any, config: PretrainConfig, registry: Registry) -> str:
    """A config value as a resume message shows it: a field left to its default says which value that is."""
    if value is not None:
        return repr(value)
    if key in ("lr", "optimizer"):
        from ssl_engine.train.model import resolve_optimizer
        from ssl_engine.train.optim import DEFAULT_LR

        optimizer = resolve_optimizer(config, registry)
        if key == "optimizer":
            return f"{optimizer!r} (the default)"
        return f"{DEFAULT_LR[optimizer]!r} ({optimizer}'s default)"
    if key == "image_size":
        from ssl_engine.train.model import resolve_image_size

        return f"{resolve_image_size(config, registry)} (the tasks' default)"
    if key == "data_dir":
        from ssl_engine.data.options import DataOptions

        return f"'{DataOptions().root}' (the default)"
    return "the default"


def check_resume_changes(saved: PretrainConfig, config: PretrainConfig, registry: Registry, force: bool) -> None:
    """Refuse a ``--resume`` changing options other than budget, logging and placement (unless ``--force``), each
    change shown with the values in force (``lr: 0.05 (sgd's default) -> 0.1``, not ``None -> 0.1``).

    Task changes are left to :func:`ssl_engine.run.build_run`, which compares them with their settings resolved.
    """
    changed = [
        f"{key}: {shown_value(key, old, saved, registry)} -> {shown_value(key, new, config, registry)}"
        for key, old, new in saved.differences(config)
        if key not in RESUMABLE_CHANGES and key != "tasks"
    ]
    if changed and not force:
        fail(f"--resume would change the run ({'; '.join(changed)}); pass --force to accept")


def first_line(run: Run, resume: bool) -> str:
    """What the run is about to do, and, for ``--resume``, from which step and checkpoint."""
    config = run.config
    if not resume:
        start = "pretraining"
    elif run.checkpoint is not None:
        start = f"resuming from step {run.checkpoint.step} ({run.checkpoint.path.name}): pretraining"
    else:
        start = "resuming from step 0 (no checkpoint to restore): pretraining"
    return (
        f"{start} {', '.join(t.name for t in config.tasks)} on {config.data} ({run.image_size} px), "
        f"backbone {config.backbone}, {run.total_steps} steps on {run.device} ({run.precision.name}), "
        f"run directory {run.out}"
    )


def next_steps(out: Path | None, probed: bool) -> list[str]:
    """The closing summary's lines: where the run is, and the commands that use it next."""
    run = shell_path(out)
    evaluate = (f"sslx evaluate {run} --protocol knn", "kNN; --protocol finetune trains everything") if probed else (
        f"sslx evaluate {run}", "linear probe; --protocol knn or finetune")  # fmt: skip
    commands = [
        evaluate,
        (f"sslx show {run}", "the pretext task's examples with the model's predictions"),
        (f"sslx plot {run}", "loss, metric and learning-rate curves"),
        (f"sslx export {run} --out backbone.safetensors", "the representation, for your own code"),
    ]
    width = max(len(command) for command, _ in commands)
    lines = [f"run directory: {out}", "next:"]
    return lines + [f"  {command:<{width}}  # {what}" for command, what in commands]


@click.command()
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
    help="A task setting, e.g. jigsaw.permutations=30 (see `sslx plugins --settings`).",
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
    from ssl_engine.run_directory import RunDirectoryError

    out: Path | None = options["out"]
    try:
        config = resolved_config(options)
    except (ConfigError, RunDirectoryError) as error:
        fail(error)
    except OSError as error:
        fail(f"cannot use run directory {out or 'runs/'}: {os_error_line(error)}")
    refuse_unknown_tasks(spec.name for spec in config.tasks)  # before torch loads: an answer at once
    check_device(config.device)
    run, trainer = start(config, options)
    world, out = run.world, run.out
    say = click.echo if world.is_main else quiet  # one voice under torchrun: rank 0 reports and probes
    say(first_line(run, options["resume"]), err=True)
    result = train(trainer, out, say)
    from ssl_engine.distributed import shutdown

    shutdown(world)  # the processes part here; rank 0 probes on its own
    if not world.is_main:
        return
    shown = trainer.headline(result.final) if result.final else {}
    say(f"finished {result.steps} steps: " + ", ".join(f"{k} {v:.4g}" for k, v in shown.items()))
    probed = bool(config.probe and trainer.source.labelled)
    if probed:
        closing_probe(run, result.steps)
    for line in next_steps(out, probed):
        say(line, err=True)


def start(config: PretrainConfig, options: dict[str, Any]) -> tuple[Run, Any]:
    """Load the plugins, build the run and its trainer; a run that can't be built as asked exits 2."""
    host = host_or_exit()
    from ssl_engine.run import build_run
    from ssl_engine.run_directory import RunDirectoryError, saved_config
    from ssl_engine.train.loop import Trainer

    out: Path | None = options["out"]
    try:
        if options["resume"] and out is not None:
            check_resume_changes(saved_config(out), config, host.registry, options["force"])
        run = build_run(
            config, host.registry, out, resume=options["resume"], force=options["force"], restart=options["restart"]
        )
        return run, Trainer(run)
    except user_errors(ConfigError, RunDirectoryError, ValueError) as error:
        fail(error)
    except OSError as error:  # e.g. a read-only or unwritable --out
        fail(f"cannot use run directory {out or 'runs/'}: {os_error_line(error)}")


def train(trainer: Any, out: Path | None, say: Callable[..., None]) -> Any:
    """Run the training loop; a stop (Ctrl-C, SIGTERM: the loop saves a checkpoint first) says how to resume."""
    from ssl_engine.train.interrupt import TrainingInterrupted
    from ssl_engine.train.loop import CheckpointWriteError

    try:
        return trainer.train()
    except TrainingInterrupted as stop:
        say(f"{stop}; resume with: sslx pretrain --out {shell_path(out)} --resume", err=True)
        sys.exit(stop.exit_code)
    except (FloatingPointError, CheckpointWriteError) as error:
        say(f"Error: {error}", err=True)
        sys.exit(1)


def closing_probe(run: Run, steps: int) -> None:
    """The linear probe of the pretrained backbone beside a random-init one; Ctrl-C skips it (exit 130), the
    trained checkpoints stay, and the line says how to run the evaluation later."""
    from ssl_engine.eval.evaluate import probe_against_random

    click.echo("linear probe (frozen features, classifier chosen on val, test top-1):", err=True)
    try:
        report = probe_against_random(run, step=steps)
    except KeyboardInterrupt:
        interrupted(
            f"the closing linear probe did not finish (training did: the checkpoint is in {run.out})",
            f"sslx evaluate {shell_path(run.out)}",
        )
    name = "+".join(t.name for t in run.config.tasks)
    click.echo(f"  {'pretrained ' + name:<30} {report['pretrained']['accuracy']:.4f}")
    click.echo(f"  {'random init':<30} {report['random_init']['accuracy']:.4f}")
