"""The plugin system: discovery, attribution, and broken plugins reported, never silently dropped."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
from torch import nn

from ssl_engine.hookspecs import hookimpl
from ssl_engine.plugins import PluginHost, PluginLoadError
from ssl_engine.task import PretextBatch, PretextTask, TaskDeclarationError, TaskOutput


class ToyTask(PretextTask):
    name = "toy"
    summary = "a toy task"

    def build_modules(self) -> nn.ModuleDict:
        return nn.ModuleDict()

    def pseudo_labels(self, images, random):  # type: ignore[no-untyped-def]
        return PretextBatch(images, images.new_zeros(len(images)).long())

    def forward(self, backbone, modules, aux, batch):  # type: ignore[no-untyped-def]
        return TaskOutput({"toy": backbone.pooled(batch.inputs).mean()})


class ToyPlugin:
    @hookimpl
    def register_tasks(self, register):  # type: ignore[no-untyped-def]
        register(ToyTask)

    @hookimpl
    def register_heads(self, register):  # type: ignore[no-untyped-def]
        register("tiny", lambda i, o: nn.Linear(i, o), kind="classifier", help="tiny")


def test_inline_plugin_registers_with_attribution() -> None:
    host = PluginHost.from_plugins([("toy", ToyPlugin())])
    assert host.problems == []
    entry = host.registry.get("task", "toy")
    assert entry.obj is ToyTask and entry.plugin == "toy"
    assert host.plugins["toy"].registered == {"task": ["toy"], "head": ["tiny"]}
    assert host.plugins["toy"].hooks == ["register_heads", "register_tasks"]
    # the core's own pieces come through the same hooks
    assert host.registry.get("backbone", "smallconv").plugin == "core"
    assert "linear" in host.registry.names("evaluator")


def test_duplicate_name_is_reported_and_first_kept() -> None:
    class Clash:
        @hookimpl
        def register_heads(self, register):  # type: ignore[no-untyped-def]
            register("linear", lambda i, o: nn.Identity(), kind="classifier")

    host = PluginHost.from_plugins([("clash", Clash())])
    assert host.registry.get("head", "linear").plugin == "core"
    [problem] = host.problems
    assert problem.plugin == "clash" and "'linear'" in problem.message and "'core'" in problem.message


def test_hook_that_raises_is_reported_and_others_keep_working() -> None:
    class Broken:
        @hookimpl
        def register_tasks(self, register):  # type: ignore[no-untyped-def]
            raise RuntimeError("boom")

    host = PluginHost.from_plugins([("broken", Broken()), ("toy", ToyPlugin())])
    assert "toy" in host.registry.names("task")
    [problem] = host.problems
    assert (problem.plugin, problem.stage) == ("broken", "register_tasks") and "boom" in problem.message


def test_strict_mode_makes_problems_fatal() -> None:
    class Broken:
        @hookimpl
        def register_tasks(self, register):  # type: ignore[no-untyped-def]
            raise RuntimeError("boom")

    with pytest.raises(PluginLoadError, match="broken"):
        PluginHost.from_plugins([("broken", Broken())], strict=True)


def test_incomplete_task_class_is_refused_at_registration() -> None:
    class Half(PretextTask):
        name = "half"

    class Registers:
        @hookimpl
        def register_tasks(self, register):  # type: ignore[no-untyped-def]
            register(Half)

    host = PluginHost.from_plugins([("half", Registers())])
    assert "half" not in host.registry.names("task")
    assert "pseudo_labels" in host.problems[0].message
    with pytest.raises(TaskDeclarationError):
        Half.check_declaration()


def make_distribution(site: Path, dist: str, plugin: str, module: str, source: str) -> None:
    """A real installed distribution (dist-info with an entry point) in a folder on sys.path."""
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[ssl_engine]\n{plugin} = {module}\n")


def test_broken_import_is_reported_by_plugin_and_distribution(tmp_path: Path, sslx) -> None:  # type: ignore[no-untyped-def]
    make_distribution(tmp_path, "sslx-broken", "broken", "sslx_broken_mod", "raise ImportError('missing dep xyz')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    result = sslx("plugins", "--json", env=env)
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    [problem] = [p for p in listing["problems"] if p["plugin"] == "broken"]
    assert problem["distribution"] == "sslx-broken" and "missing dep xyz" in problem["message"]
    assert "rotation" in {name for p in listing["plugins"] for name in p["registered"].get("task", [])}
    # every command warns about it; strict mode makes it fatal; the switches let a user run past it
    assert "sslx-broken" in result.stderr
    for switch in ({"SSLX_DISABLE_PLUGINS": "broken"}, {"SSLX_NO_PLUGINS": "1"}):
        quiet = sslx("plugins", "--json", env={**env, **switch})
        assert quiet.returncode == 0 and "broken" not in quiet.stdout + quiet.stderr
    strict = sslx("plugins", env={**env, "SSLX_STRICT_PLUGINS": "1"})
    assert strict.returncode != 0 and "broken" in strict.stderr


def test_env_switches_disable_and_limit_plugins(sslx) -> None:  # type: ignore[no-untyped-def]
    def tasks(env: dict[str, str]) -> set[str]:
        result = sslx("plugins", "--json", env={**os.environ, **env})
        assert result.returncode == 0, result.stderr
        return {n for p in json.loads(result.stdout)["plugins"] for n in p["registered"].get("task", [])}

    everything = tasks({})
    assert {"rotation", "jigsaw"} <= everything
    assert "rotation" not in tasks({"SSLX_DISABLE_PLUGINS": "rotation"})
    assert tasks({"SSLX_LOAD_PLUGINS": "rotation"}) == {"rotation"}
    assert tasks({"SSLX_NO_PLUGINS": "1"}) == set()


def test_hook_errors_and_taken_names_of_installed_plugins_through_the_cli(tmp_path: Path, sslx) -> None:  # type: ignore[no-untyped-def]
    raising = """
        from ssl_engine.hookspecs import hookimpl

        @hookimpl
        def register_tasks(register):
            raise RuntimeError("hook exploded")
    """
    clashing = """
        from ssl_engine.hookspecs import hookimpl
        from sslx_rotation.task import RotationTask

        @hookimpl
        def register_tasks(register):
            register(RotationTask)
    """
    make_distribution(tmp_path, "sslx-raising", "raising", "sslx_raising_mod", raising)
    make_distribution(tmp_path, "sslx-clashing", "clashing", "sslx_clashing_mod", clashing)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    result = sslx("plugins", "--json", env=env)
    assert result.returncode == 0, result.stderr
    problems = {p["plugin"]: p for p in json.loads(result.stdout)["problems"]}
    assert problems["raising"]["distribution"] == "sslx-raising" and "hook exploded" in problems["raising"]["message"]
    assert problems["raising"]["stage"] == "register_tasks"
    # plugins load in name order, so whichever of the two comes second is reported, naming both
    [clash] = [p for p in problems.values() if "task 'rotation'" in p["message"]]
    assert "sslx-clashing" in clash["message"] + clash["distribution"]
    assert "sslx-rotation" in clash["message"] + clash["distribution"] and "already registered" in clash["message"]
    human = sslx("plugins", env=env)
    assert "PROBLEM  plugin 'raising' (sslx-raising) failed at register_tasks" in human.stdout
    # the task everyone else provides still trains
    run = sslx("pretrain", "--task", "rotation", "--steps", "1", "--batch-size", "4", "--image-size", "16",
               "--no-probe", "--out", str(tmp_path / "R"), env=env)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "warning: plugin 'raising' (sslx-raising)" in run.stderr
