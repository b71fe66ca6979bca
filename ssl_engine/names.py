"""The names users type, checked without importing torch or any plugin: "did you mean" and the declared task names.

A plugin may declare the tasks it registers in its package metadata, beside its entry point::

    [project.entry-points.ssl_engine]
    jigsaw = "sslx_jigsaw.plugin"

    [project.entry-points."ssl_engine.tasks"]   # one entry per task it registers: NAME = its plugin's module
    jigsaw = "sslx_jigsaw.plugin"

so ``sslx pretrain --task jigsw`` can say "did you mean 'jigsaw'?" in a fraction of a second, reading metadata
only. A plugin that registers no task (a logger, a backbone) says so in a group of its own::

    [project.entry-points."ssl_engine.no_tasks"]
    mlflow = "sslx_mlflow.plugin"

A plugin that declares nothing still works: then the names are only known by importing every plugin (the
:class:`~ssl_engine.plugins.PluginHost`), which is what the commands fall back to. The declarations only ever
refuse a name early; a name they list is still looked up in the registry, which has the last word.
"""

from __future__ import annotations

import difflib
import os
import sys
from importlib import metadata

PLUGIN_GROUP = "ssl_engine"
TASK_GROUP = "ssl_engine.tasks"
NO_TASKS_GROUP = "ssl_engine.no_tasks"
CORE_PLUGIN = "core"
"""The core's own plugin registers backbones, data sets, heads, losses and evaluators, but no task (a test keeps
it so), so it needs no declaration."""


def env_flag(variable: str) -> bool:
    """An environment switch such as ``SSLX_NO_PLUGINS=1`` (unset, empty, 0, false, no: off)."""
    return os.environ.get(variable, "").strip().lower() not in ("", "0", "false", "no")


def env_names(variable: str) -> set[str] | None:
    """The comma-separated names of an environment variable (``None`` when unset or empty)."""
    value = os.environ.get(variable, "").strip()
    return {part.strip() for part in value.split(",") if part.strip()} if value else None


def enabled(plugin: str) -> bool:
    """Whether the environment switches (``SSLX_DISABLE_PLUGINS``, ``SSLX_LOAD_PLUGINS``, ``SSLX_NO_PLUGINS``)
    let ``plugin`` load; the core always loads."""
    if plugin == CORE_PLUGIN:
        return True
    only = set() if env_flag("SSLX_NO_PLUGINS") else env_names("SSLX_LOAD_PLUGINS")
    return plugin not in (env_names("SSLX_DISABLE_PLUGINS") or set()) and (only is None or plugin in only)


def _distribution(entry_point: metadata.EntryPoint) -> str:
    return entry_point.dist.name if entry_point.dist is not None else "?"


def declared_task_names() -> list[str] | None:
    """The sorted task names the enabled plugins declare in their metadata, or ``None`` when some enabled plugin
    (other than the core) declares neither its tasks nor that it has none, so only importing the plugins tells
    every name."""
    declared: dict[tuple[str, str], set[str]] = {}
    for entry_point in metadata.entry_points(group=TASK_GROUP):
        declared.setdefault((_distribution(entry_point), entry_point.value), set()).add(entry_point.name)
    for entry_point in metadata.entry_points(group=NO_TASKS_GROUP):
        declared.setdefault((_distribution(entry_point), entry_point.value), set())
    names: set[str] = set()
    for plugin in metadata.entry_points(group=PLUGIN_GROUP):
        if not enabled(plugin.name) or plugin.name == CORE_PLUGIN:
            continue
        own = declared.get((_distribution(plugin), plugin.value))
        if own is None:
            return None
        names |= own
    return sorted(names)


def known_task_names() -> list[str] | None:
    """The task names this process can tell without importing a plugin: those of the plugin host when one is
    already built (an earlier command in this process, or a test's own plugins), else the declared ones; ``None``
    when only importing the plugins would tell."""
    plugins = sys.modules.get("ssl_engine.plugins")
    host = getattr(plugins, "_host", None) if plugins is not None else None
    if host is not None:
        return list(host.registry.names("task"))
    return declared_task_names()


def closest(name: str, available: list[str]) -> str | None:
    """The available name ``name`` most likely misspells, if one is close enough."""
    candidates = [choice for choice in available if not choice.startswith("<")]  # "<path to an image folder>"
    matches = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    if not matches:  # a prefix the user stopped typing ("rot" for "rotation")
        matches = [choice for choice in candidates if len(name) >= 3 and choice.startswith(name)][:1]
    return matches[0] if matches else None


def unknown_name(kind: str, name: str, available: list[str]) -> str:
    """One line for a name nobody registered: the closest one, if any, and every valid one.

    ``unknown task 'jigsw' (did you mean 'jigsaw'?); available: barlowtwins, byol, ...``
    """
    listed = ", ".join(available) if available else "(none installed)"
    guess = closest(name, available)
    hint = f" (did you mean {guess!r}?)" if guess is not None else ""
    return f"unknown {kind} {name!r}{hint}; available: {listed}"
