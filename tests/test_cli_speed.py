"""An instant ``sslx``: help, option errors and unknown names answer without importing torch or any plugin.

Wall times are not asserted (they depend on the machine); what makes them short is: torch stays out of
``sys.modules``, which a fresh process shows.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from ssl_engine import names
from ssl_engine.cli import LAZY_COMMANDS, main
from ssl_engine.plugins import ENTRY_POINT_GROUP, PluginHost

PROBE = """
import sys
from ssl_engine.cli import main
try:
    main(sys.argv[1:], prog_name="sslx")
except SystemExit as stop:
    code = stop.code
heavy = sorted(name for name in ("torch", "torchvision", "pluggy", "numpy") if name in sys.modules)
plugins = sorted(name for name in sys.modules if name.startswith("sslx_"))
print("IMPORTED", code, ",".join(heavy + plugins), file=sys.stderr)
"""


def run_fresh(*args: str) -> tuple[int, list[str], str]:
    """``sslx ARGS`` in a new interpreter: its exit code, the heavy modules it imported, and its stderr."""
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120)
    *said, last = done.stderr.strip().splitlines()
    marker, code, imported = (last.split(" ", 2) + [""])[:3]
    assert marker == "IMPORTED", done.stderr
    return int(code), [name for name in imported.split(",") if name], "\n".join(said)


@pytest.mark.parametrize(
    "args",
    [
        ("--help",),
        ("--version",),
        ("pretrain", "--help"),
        ("evaluate", "--help"),
        ("plugins", "--help"),
        ("pretrain", "--task", "rotation", "--steps", "0"),  # an option error
        ("pretrain", "--device", "tpu"),  # a bad choice
        ("pretrian",),  # a mistyped command
    ],
)
def test_help_and_option_errors_import_neither_torch_nor_plugins(args: tuple[str, ...]) -> None:
    code, imported, _ = run_fresh(*args)
    assert code in (0, 2)
    assert imported == [], f"sslx {' '.join(args)} imported {imported}"


@pytest.mark.skipif(names.declared_task_names() is None, reason="an installed plugin does not declare its tasks")
@pytest.mark.parametrize(
    "args",
    [
        ("pretrain", "--task", "jigsw"),
        ("pretrain", "--task", "rotation", "--task", "jigsw=0.5"),
        ("plugins", "jigsw"),
        ("show", "--task", "jigsw"),
        ("bench", "--tasks", "rotation,jigsw", "--out", "never-written"),
    ],
)
def test_an_unknown_task_is_refused_before_torch_loads(args: tuple[str, ...]) -> None:
    code, imported, said = run_fresh(*args)
    assert code == 2 and imported == [], (imported, said)
    assert said == "Error: unknown task 'jigsw' (did you mean 'jigsaw'?); available: " + ", ".join(
        names.declared_task_names() or []
    )


def test_every_installed_plugin_declares_exactly_the_tasks_it_registers() -> None:
    assert names.PLUGIN_GROUP == ENTRY_POINT_GROUP
    host = PluginHost.from_entry_points(strict=False)
    declared: dict[str, set[str]] = {}
    for entry_point in metadata.entry_points(group=names.TASK_GROUP):
        declared.setdefault(entry_point.value, set()).add(entry_point.name)
    for entry_point in metadata.entry_points(group=names.NO_TASKS_GROUP):
        assert entry_point.value not in declared, f"{entry_point.name} declares tasks and none"
        declared[entry_point.value] = set()
    for plugin in metadata.entry_points(group=names.PLUGIN_GROUP):
        registered = set(host.plugins[plugin.name].registered.get("task", [])) if plugin.name in host.plugins else set()
        if plugin.name == names.CORE_PLUGIN:
            assert registered == set(), "the core registers tasks: declare them, or names.py must import the core"
        elif plugin.dist is not None and plugin.dist.name.startswith("sslx-"):  # ours; third parties may not declare
            assert declared.get(plugin.value) == registered, plugin.name


def fake_entry_points(points: list[metadata.EntryPoint]):  # type: ignore[no-untyped-def]
    def entry_points(*, group: str) -> list[metadata.EntryPoint]:
        return [point for point in points if point.group == group]

    return entry_points


def test_declared_names_fall_back_to_importing_when_a_plugin_declares_none(monkeypatch: pytest.MonkeyPatch) -> None:
    declared = [
        metadata.EntryPoint("core", "ssl_engine.builtin", names.PLUGIN_GROUP),
        metadata.EntryPoint("flip", "sslx_flip.plugin", names.PLUGIN_GROUP),
        metadata.EntryPoint("flip", "sslx_flip.plugin", names.TASK_GROUP),
        metadata.EntryPoint("flip_v2", "sslx_flip.plugin", names.TASK_GROUP),
    ]
    silent = metadata.EntryPoint("third", "third_party.plugin", names.PLUGIN_GROUP)
    taskless = [
        metadata.EntryPoint("tracker", "sslx_tracker.plugin", names.PLUGIN_GROUP),
        metadata.EntryPoint("tracker", "sslx_tracker.plugin", names.NO_TASKS_GROUP),
    ]
    for variable in ("SSLX_DISABLE_PLUGINS", "SSLX_LOAD_PLUGINS", "SSLX_NO_PLUGINS"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(names.metadata, "entry_points", fake_entry_points(declared))
    assert names.declared_task_names() == ["flip", "flip_v2"]
    monkeypatch.setattr(names.metadata, "entry_points", fake_entry_points([*declared, *taskless]))
    assert names.declared_task_names() == ["flip", "flip_v2"]  # a plugin that says it registers no task
    monkeypatch.setattr(names.metadata, "entry_points", fake_entry_points([*declared, silent]))
    assert names.declared_task_names() is None  # "third" may register any task: only importing it tells
    monkeypatch.setenv("SSLX_DISABLE_PLUGINS", "third")
    assert names.declared_task_names() == ["flip", "flip_v2"]
    monkeypatch.setenv("SSLX_NO_PLUGINS", "1")
    monkeypatch.delenv("SSLX_DISABLE_PLUGINS")
    assert names.declared_task_names() == []


@pytest.mark.parametrize("name", sorted(LAZY_COMMANDS))
def test_lazy_commands_load_when_run_and_their_listed_help_is_their_own(name: str) -> None:
    command = main.get_command(None, name)  # type: ignore[arg-type]
    assert command is not None and command.help is not None
    assert LAZY_COMMANDS[name][1] == inspect.cleandoc(command.help).split("\n\n")[0].replace("\n", " ")


def test_the_plugin_scaffold_declares_its_task_name(tmp_path: Path) -> None:
    from ssl_engine.scaffold import scaffold

    package = scaffold("upside-down", tmp_path)
    entry_points = tomllib.loads((package / "pyproject.toml").read_text())["project"]["entry-points"]
    assert entry_points[names.PLUGIN_GROUP] == {"upside-down": "sslx_upside_down.plugin"}
    assert entry_points[names.TASK_GROUP] == {"upside-down": "sslx_upside_down.plugin"}
