"""The plugin system: discovery, attribution, and broken plugins reported, never silently dropped."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
from torch import nn

from ssl_engine import builtin
from ssl_engine.hookspecs import hookimpl
from ssl_engine.plugins import PluginHost, PluginLoadError
from ssl_engine.registry import NameConflictError
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


class ImpostorPlugin:
    """Claims the toy task (and the core's ``linear`` head), and registers a head of its own."""

    @hookimpl
    def register_tasks(self, register):  # type: ignore[no-untyped-def]
        register(type("ImpostorTask", (ToyTask,), {"summary": "not the real toy"}))

    @hookimpl
    def register_heads(self, register):  # type: ignore[no-untyped-def]
        register("linear", lambda i, o: nn.Identity(), kind="classifier")
        register("impostor-head", lambda i, o: nn.Identity(), kind="classifier")


@pytest.mark.parametrize("impostor_first", [True, False])
def test_name_claimed_by_two_distributions_is_refused_for_both_whatever_the_order(impostor_first: bool) -> None:
    host = PluginHost()
    plugins = [("toy", ToyPlugin(), "sslx-toy"), ("impostor", ImpostorPlugin(), "sslx-impostor")]
    for name, plugin, distribution in [("core", builtin, "sslx"), *(plugins[::-1] if impostor_first else plugins)]:
        host.add(name, plugin, distribution=distribution, version="1.0")
    host.collect()
    for kind, name, others in [("task", "toy", ["sslx-toy"]), ("head", "linear", ["sslx"])]:
        with pytest.raises(NameConflictError) as caught:
            host.registry.get(kind, name)
        message = str(caught.value)
        assert all(distribution in message for distribution in ["sslx-impostor", *others])
        assert "SSLX_DISABLE_PLUGINS=impostor" in message and "SSLX_DISABLE_PLUGINS=core" not in message
    # each claimant is told, by plugin and distribution, with the same message whichever came first
    conflicts = sorted(
        (p.plugin, p.distribution, p.message) for p in host.problems if "registered by both" in p.message
    )
    assert [(plugin, distribution) for plugin, distribution, _ in conflicts] == [
        ("core", "sslx"), ("impostor", "sslx-impostor"), ("impostor", "sslx-impostor"), ("toy", "sslx-toy")
    ]  # fmt: skip
    assert len(host.problems) == 4
    assert {message for plugin, _, message in conflicts if plugin == "toy"} == {
        "task 'toy' is registered by both plugin 'impostor' (sslx-impostor) and plugin 'toy' (sslx-toy), so neither "
        "gets it; disable one (SSLX_DISABLE_PLUGINS=impostor or SSLX_DISABLE_PLUGINS=toy)"
    }
    # everything else they registered keeps working; the listing no longer claims the refused names
    assert host.registry.get("head", "tiny").plugin == "toy"
    assert host.registry.get("head", "impostor-head").plugin == "impostor"
    assert host.registry.get("head", "mlp").plugin == "core"
    assert host.plugins["toy"].registered == {"head": ["tiny"]}
    assert host.plugins["impostor"].registered == {"head": ["impostor-head"]}
    assert "linear" not in host.plugins["core"].registered["head"]


def test_name_conflict_is_fatal_in_strict_mode_and_same_distribution_twice_keeps_the_first() -> None:
    with pytest.raises(PluginLoadError, match="task 'toy' is registered by both"):
        PluginHost.from_plugins([("toy", ToyPlugin()), ("impostor", ImpostorPlugin())], strict=True)

    class Twice:
        @hookimpl
        def register_heads(self, register):  # type: ignore[no-untyped-def]
            register("twice", lambda i, o: nn.Identity(), kind="first")
            register("twice", lambda i, o: nn.Identity(), kind="second")

    host = PluginHost.from_plugins([("twice", Twice())])
    assert host.registry.get("head", "twice").meta == {"kind": "first"}
    [problem] = host.problems
    assert "already registered" in problem.message


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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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
    # a name two distributions claim is refused for both: each is told, naming the other
    clashes = {p["plugin"]: p for p in problems.values() if "task 'rotation'" in p["message"]}
    assert {(name, p["distribution"]) for name, p in clashes.items()} == {
        ("clashing", "sslx-clashing"), ("rotation", "sslx-rotation")
    }  # fmt: skip
    assert all("sslx-clashing" in p["message"] and "sslx-rotation" in p["message"] for p in clashes.values())
    human = sslx("plugins", env=env)
    assert "PROBLEM  plugin 'raising' (sslx-raising) failed at register_tasks" in human.stdout
    assert "PROBLEM  plugin 'clashing' (sslx-clashing) failed at register: task 'rotation'" in human.stdout
    # until the user chooses, the name trains nothing: exit 2, naming both and the way out
    args = ("--steps", "1", "--batch-size", "4", "--image-size", "16", "--no-probe", "--workers", "0")
    refused = sslx("pretrain", "--task", "rotation", *args, "--out", str(tmp_path / "R0"), env=env)
    assert refused.returncode == 2, refused.stderr
    error = refused.stderr.splitlines()[-1]
    assert "sslx-clashing" in error and "sslx-rotation" in error and "SSLX_DISABLE_PLUGINS=clashing" in error
    assert not (tmp_path / "R0").exists()
    # disabling one gives the name to the other; the other plugins' problems are still warned about
    chosen = {**env, "SSLX_DISABLE_PLUGINS": "clashing"}
    run = sslx("pretrain", "--task", "rotation", *args, "--out", str(tmp_path / "R"), env=chosen)
    assert run.returncode == 0, run.stderr
    assert "warning: plugin 'raising' (sslx-raising)" in run.stderr and "sslx-clashing" not in run.stderr


IMPOSTOR = """
    from ssl_engine.hookspecs import hookimpl
    from sslx_rotation.task import RotationTask
    from torch import nn


    class ImpostorRotation(RotationTask):
        summary = "not the real rotation"


    @hookimpl
    def register_tasks(register):
        register(ImpostorRotation)


    @hookimpl
    def register_heads(register):
        register("impostor-head", lambda i, o: nn.Identity(), kind="classifier")
"""


@pytest.mark.slow
@pytest.mark.parametrize("plugin", ["aaa-impostor", "zzz-impostor"])
def test_installed_impostor_gets_no_taken_name_whichever_way_its_name_sorts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plugin: str
) -> None:
    make_distribution(tmp_path, "sslx-impostor", plugin, f"sslx_{plugin.replace('-', '_')}_mod", IMPOSTOR)
    monkeypatch.syspath_prepend(str(tmp_path))
    for switch in ("SSLX_DISABLE_PLUGINS", "SSLX_LOAD_PLUGINS", "SSLX_NO_PLUGINS", "SSLX_STRICT_PLUGINS"):
        monkeypatch.delenv(switch, raising=False)
    host = PluginHost.from_entry_points(strict=False)
    with pytest.raises(NameConflictError) as caught:
        host.registry.get("task", "rotation")
    message = str(caught.value)
    assert "(sslx-impostor)" in message and "(sslx-rotation)" in message
    assert f"SSLX_DISABLE_PLUGINS={plugin}" in message and "SSLX_DISABLE_PLUGINS=rotation" in message
    blamed = {(p.plugin, p.distribution) for p in host.problems if "task 'rotation'" in p.message}
    assert blamed == {(plugin, "sslx-impostor"), ("rotation", "sslx-rotation")}
    assert host.registry.get("head", "impostor-head").plugin == plugin and "jigsaw" in host.registry.names("task")
    with pytest.raises(PluginLoadError, match="task 'rotation' is registered by both"):
        PluginHost.from_entry_points(strict=True)
    monkeypatch.setenv("SSLX_DISABLE_PLUGINS", plugin)
    chosen = PluginHost.from_entry_points(strict=False)
    assert chosen.registry.get("task", "rotation").distribution == "sslx-rotation"
    assert not [p for p in chosen.problems if "rotation" in p.message]
