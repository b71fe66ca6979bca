"""``sslx plugins``: what is installed, and each task's settings (what ``--set TASK.KEY=VALUE`` takes)."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import click

from ssl_engine.cli_common import fail, host_or_exit, refuse_unknown_tasks
from ssl_engine.names import unknown_name
from ssl_engine.registry import Registered, Registry
from ssl_engine.settings import TaskSetting


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:g}"


def setting_range(setting: TaskSetting) -> str:
    """The values a setting accepts, as ``--help`` would say it (``>= 2 and <= 1000``, ``one of: l2, ce``)."""
    if setting.choices is not None:
        return "one of: " + ", ".join(map(str, setting.choices))
    bounds = []
    if setting.minimum is not None:
        bounds.append(f"{'>' if setting.min_open else '>='} {_number(setting.minimum)}")
    if setting.maximum is not None:
        bounds.append(f"<= {_number(setting.maximum)}")
    if bounds:
        return " and ".join(bounds)
    return "true or false" if setting.type is bool else "any"


def setting_record(setting: TaskSetting) -> dict[str, Any]:
    """One setting as plain data (``sslx plugins --settings --json``)."""
    return {
        "name": setting.name,
        "type": setting.type.__name__,
        "default": setting.default,
        "range": setting_range(setting),
        "choices": list(setting.choices) if setting.choices is not None else None,
        "minimum": setting.minimum,
        "maximum": setting.maximum,
        "min_open": setting.min_open,
        "help": setting.help,
    }


def task_record(entry: Registered[Any]) -> dict[str, Any]:
    """A registered task with its settings, as plain data."""
    return {
        "task": entry.name,
        "plugin": entry.plugin,
        "distribution": entry.distribution,
        "summary": entry.help,
        "default_optimizer": entry.obj.default_optimizer,
        "settings": [setting_record(setting) for setting in entry.obj.settings],
    }


def setting_row(setting: dict[str, Any]) -> tuple[str, str, str, str, str]:
    """One setting's columns: name, type, default, accepted range, help."""
    default = json.dumps(setting["default"], default=str)
    return setting["name"], setting["type"], default, setting["range"], setting["help"]


def echo_settings(records: list[dict[str, Any]]) -> None:
    """Each task's settings, aligned within the task: name, type, default, accepted range, help."""
    for record in records:
        click.echo(f"{record['task']}  ({record['distribution']}): {record['summary']}")
        if record["default_optimizer"] is not None:
            click.echo(f"  trains with {record['default_optimizer']} unless --optimizer says otherwise")
        rows = [setting_row(setting) for setting in record["settings"]]
        if not rows:
            click.echo("  (no settings)")
        widths = [max(len(row[column]) for row in rows) for column in range(4)] if rows else []
        for name, kind, default, accepted, help in rows:
            click.echo(
                f"  {name:<{widths[0]}}  {kind:<{widths[1]}}  default {default:<{widths[2]}}  "
                f"{accepted:<{widths[3]}}  {help}"
            )


def chosen_tasks(registry: Registry, task: str | None) -> list[Registered[Any]]:
    """The task asked for (an unknown one exits 2, naming the closest), or every task."""
    if task is None:
        return list(registry.tasks)
    if task not in registry.tasks:
        fail(unknown_name("task", task, registry.names("task")))
    return [registry.tasks[task]]


@click.command()
@click.argument("task", required=False)
@click.option("--settings", "show_settings", is_flag=True, help="List every task's settings (what --set takes).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(task: str | None, show_settings: bool, as_json: bool) -> None:
    """List installed plugins: distribution, version, hooks and what each registered; with TASK or --settings,
    the settings of the tasks (type, default, accepted range, help) that `--set TASK.KEY=VALUE` takes.

    \b
    Plugin problems (failed imports, hooks that raised, names already taken) are listed too.
    Examples:
      sslx plugins
      sslx plugins --json
      sslx plugins jigsaw                        # jigsaw's settings
      sslx plugins --settings --json
      SSLX_DISABLE_PLUGINS=broken sslx plugins
    """
    refuse_unknown_tasks([task] if task is not None else [])  # before the plugins (and torch) load
    host = host_or_exit()
    if task is not None or show_settings:
        records = [task_record(entry) for entry in chosen_tasks(host.registry, task)]
        if as_json:
            click.echo(json.dumps(records[0] if task is not None else {"tasks": records}, indent=2, default=str))
            return
        echo_settings(records)
        click.echo("set one with: sslx pretrain --task TASK --set TASK.SETTING=VALUE", err=True)
        return
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
    click.echo("each task's settings: sslx plugins TASK (or sslx plugins --settings)", err=True)
