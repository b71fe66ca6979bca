"""``sslx new-plugin NAME``: scaffold a pretext-task plugin package, ready for ``pip install -e``.

The package has the layout of the project's own plugins (CONTRIBUTING.md, "Writing a plugin, end to end")::

    sslx-NAME/
      pyproject.toml            distribution sslx-NAME; entry point NAME = "sslx_NAME.plugin" in group ssl_engine
      README.md
      .gitignore
      sslx_NAME/__init__.py
      sslx_NAME/task.py         a working example task: was the image turned upside down?
      sslx_NAME/plugin.py       the register_tasks hook
      tests/test_NAME.py        the conformance kit (ssl_engine.testing), a behaviour test, one run of the CLI

A hyphen in NAME becomes an underscore in the package (``sslx new-plugin upside-down``: task and entry point
``upside-down``, package ``sslx_upside_down``). The files are rendered from ``ssl_engine/templates/plugin/`` with
:class:`string.Template` (``${name}`` placeholders), into a temporary folder renamed into place at the end, so a
failure never leaves half a package.
"""

from __future__ import annotations

import re
import shlex
import shutil
import uuid
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from string import Template

import click

from ssl_engine import __version__
from ssl_engine.cli_common import cannot_write, fail
from ssl_engine.hookspecs import PROJECT_NAME

NAME_PATTERN = re.compile(r"[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*")
DISTRIBUTION_PREFIX = "sslx-"
# Template (under ssl_engine/templates/plugin/) -> file of the new package (both may hold placeholders).
TEMPLATES: tuple[tuple[str, str], ...] = (
    ("pyproject.toml.tmpl", "pyproject.toml"),
    ("README.md.tmpl", "README.md"),
    ("gitignore.tmpl", ".gitignore"),
    ("package/__init__.py.tmpl", "${package}/__init__.py"),
    ("package/task.py.tmpl", "${package}/task.py"),
    ("package/plugin.py.tmpl", "${package}/plugin.py"),
    ("tests/test_task.py.tmpl", "tests/test_${test_name}.py"),
)


class ScaffoldError(ValueError):
    """The plugin can't be scaffolded as asked (a bad name, an existing folder); the message says why."""


@dataclass(frozen=True)
class PluginNames:
    """Every name the new package uses, derived from the task name.

    Attributes:
        name: the task's name, what users type (``--task NAME``); also the entry point's name.
        distribution: ``sslx-NAME``, what ``pip`` installs.
        package: ``sslx_NAME`` with hyphens turned into underscores, the importable package.
        class_name: the task class, e.g. ``UpsideDownTask``.
    """

    name: str
    distribution: str
    package: str
    class_name: str

    @classmethod
    def from_name(cls, name: str) -> PluginNames:
        """Validate a task name and derive the others (raises :class:`ScaffoldError`)."""
        if name.startswith(DISTRIBUTION_PREFIX) and NAME_PATTERN.fullmatch(name[len(DISTRIBUTION_PREFIX) :]):
            raise ScaffoldError(
                f"give the task's name without the {DISTRIBUTION_PREFIX!r} prefix: "
                f"`sslx new-plugin {name[len(DISTRIBUTION_PREFIX) :]}` makes {name}/"
            )
        if not NAME_PATTERN.fullmatch(name):
            raise ScaffoldError(
                f"{name!r} is not a task name: use lowercase letters, digits, and '-' or '_' between them, starting "
                f"with a letter (e.g. flip, upside-down, color_jitter)"
            )
        words = re.split(r"[-_]", name)
        return cls(
            name=name,
            distribution=DISTRIBUTION_PREFIX + name,
            package="sslx_" + "_".join(words),
            class_name="".join(word.capitalize() for word in words) + "Task",
        )

    def placeholders(self) -> dict[str, str]:
        """What ``${...}`` in the templates stands for."""
        return {
            "name": self.name,
            "entry_point": self.name,
            "distribution": self.distribution,
            "package": self.package,
            "class_name": self.class_name,
            "test_name": self.package.removeprefix("sslx_"),
            "sslx_version": __version__,
        }


def scaffold(name: str, directory: Path) -> Path:
    """Write the package ``sslx-NAME/`` in ``directory`` (created if missing) and return its path.

    Args:
        name: the task's name.
        directory: where ``sslx-NAME/`` goes.

    Raises:
        ScaffoldError: for an invalid name or when ``directory/sslx-NAME`` already exists.
    """
    names = PluginNames.from_name(name)
    target = directory / names.distribution
    if target.exists() or target.is_symlink():
        raise ScaffoldError(f"{target} already exists; remove it or pick another --dir")
    directory.mkdir(parents=True, exist_ok=True)
    values = names.placeholders()
    templates = resources.files("ssl_engine").joinpath("templates", "plugin")
    staging = directory / f".{names.distribution}-{uuid.uuid4().hex[:8]}.partial"
    staging.mkdir()
    try:
        for template, output in TEMPLATES:
            path = staging / Template(output).substitute(values)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(Template(templates.joinpath(template).read_text()).substitute(values))
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def installed_plugin(name: str) -> str | None:
    """The distribution of an installed plugin already named ``name``, if any."""
    for entry_point in metadata.entry_points(group=PROJECT_NAME):
        if entry_point.name == name:
            return entry_point.dist.name if entry_point.dist is not None else "?"
    return None


@click.command("new-plugin")
@click.argument("name")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(),
    metavar="PATH",
    help="Folder to create sslx-NAME/ in  [default: the current one]",
)
def new_plugin(name: str, directory: Path) -> None:
    """Scaffold sslx-NAME/, a pretext-task plugin package ready for `pip install -e`.

    NAME is the task's name, what users type after --task: lowercase letters, digits, and '-' or '_' (the
    package gets underscores: sslx_NAME). The package holds a working example task (was the image turned upside
    down?), its entry point, and tests running the conformance kit (ssl_engine.testing) and the CLI.

    \b
    Example:
      sslx new-plugin upside-down --dir ~/code
      pip install -e "$HOME/code/sslx-upside-down[test]"
      sslx plugins
      sslx pretrain --task upside-down --steps 5
      python -m pytest ~/code/sslx-upside-down
    """
    try:
        target = scaffold(name, directory)
    except ScaffoldError as error:
        fail(error)
    except OSError as error:
        cannot_write(f"the plugin in {directory}", error)
    names = PluginNames.from_name(name)
    clash = installed_plugin(name)
    if clash is not None:
        click.echo(
            f"warning: a plugin named {name!r} is already installed ({clash}); two plugins of one name clash, so "
            f"uninstall it first or pick another NAME",
            err=True,
        )
    where, with_tests = shlex.quote(str(target)), shlex.quote(f"{target}[test]")
    click.echo(f"created {target}/ (plugin {names.name!r}, package {names.package}, task class {names.class_name})")
    click.echo("next steps, in the environment where sslx is installed (its README says how to install sslx):")
    for command, comment in (
        (f"pip install -e {with_tests}", "install it with pytest (editable: edits take effect at once)"),
        ("sslx plugins", f"lists {names.name} ({names.distribution} 0.1.0)"),
        (f"sslx pretrain --task {names.name} --steps 5", "a smoke run; edit the task in " + names.package + "/task.py"),
        (f"python -m pytest {where}", "the conformance kit, a behaviour test, one CLI run"),
    ):
        click.echo(f"  {command:<48} # {comment}")
