"""Plugin discovery and loading.

Plugins are found through entry points in the group ``ssl_engine``. Each plugin's hook implementation is called
on its own, through pluggy (which passes it the arguments it names), with a ``register`` callback bound to that
plugin, so everything registered is attributed to its plugin and distribution, and a plugin that fails to import,
raises in a hook, calls ``register`` with a keyword its hook's signature lacks (:mod:`ssl_engine.hookspecs`) or
registers a name already taken is recorded as a :class:`PluginProblem` (shown by ``sslx plugins`` and warned
about on every command) while the other plugins keep working. A name registered by
two distributions is refused for both (a problem for each, naming both), whatever order they load in, until the
user disables one of them; everything else they registered keeps working.

Environment switches:
    ``SSLX_DISABLE_PLUGINS``: comma-separated plugin names not to load.
    ``SSLX_LOAD_PLUGINS``: comma-separated plugin names to load exclusively (the core is always loaded).
    ``SSLX_NO_PLUGINS=1``: load no third-party plugin at all (only the core), e.g. to run past a broken install.
    ``SSLX_STRICT_PLUGINS=1``: any plugin problem is fatal (:class:`PluginLoadError`).
"""

from __future__ import annotations

import difflib
import inspect
import traceback
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from typing import Any

import pluggy

from ssl_engine import hookspecs
from ssl_engine.names import CORE_PLUGIN, enabled, env_flag
from ssl_engine.registry import (
    KINDS,
    ConflictingClaimsError,
    DuplicateNameError,
    Registered,
    Registry,
    describe_conflict,
    hook_name,
)
from ssl_engine.task import PretextTask

ENTRY_POINT_GROUP = hookspecs.PROJECT_NAME


@dataclass
class PluginInfo:
    """What ``sslx plugins`` shows for one plugin."""

    name: str
    distribution: str
    version: str
    hooks: list[str] = field(default_factory=list)
    registered: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class PluginProblem:
    """A plugin that could not be loaded or whose registration failed, with who is to blame."""

    plugin: str
    distribution: str
    stage: str  # "import", a hook name, or "register"
    message: str

    def __str__(self) -> str:
        return f"plugin {self.plugin!r} ({self.distribution}) failed at {self.stage}: {self.message}"


class PluginLoadError(RuntimeError):
    """Raised in strict mode when any plugin problem occurred."""


class PluginHost:
    """A pluggy manager plus the registry its plugins filled.

    Build one with :meth:`from_entry_points` (what the CLI does) or :meth:`from_plugins` (tests and embedding:
    inline plugin objects, no entry points).
    """

    def __init__(self) -> None:
        self.manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.manager.add_hookspecs(hookspecs)
        self.registry = Registry()
        self.plugins: dict[str, PluginInfo] = {}
        self.problems: list[PluginProblem] = []

    @classmethod
    def from_plugins(
        cls, plugins: Iterable[tuple[str, object]], *, include_core: bool = True, strict: bool = False
    ) -> PluginHost:
        """A host over the given ``(name, plugin object)`` pairs (plus the core's own unless told not)."""
        host = cls()
        if include_core:
            from ssl_engine import builtin

            host.add(CORE_PLUGIN, builtin, distribution="sslx", version=_version("sslx"))
        for name, plugin in plugins:
            host.add(name, plugin)
        host.collect()
        host._maybe_fail(strict)
        return host

    @classmethod
    def from_entry_points(cls, *, strict: bool | None = None) -> PluginHost:
        """Discover, import and collect every installed plugin, honouring the environment switches."""
        if strict is None:
            strict = env_flag("SSLX_STRICT_PLUGINS")
        host = cls()
        seen: set[str] = set()
        for entry_point in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = entry_point.dist
            dist_name = dist.name if dist is not None else "?"
            version = dist.version if dist is not None else "?"
            if entry_point.name in seen:
                # Two installs (e.g. an editable and a regular one) exposing the same plugin name.
                host.problems.append(
                    PluginProblem(entry_point.name, dist_name, "import", "another plugin has the same name")
                )
                continue
            seen.add(entry_point.name)
            if not enabled(entry_point.name):  # the switches, read as ssl_engine.names reads them
                continue
            try:
                plugin = entry_point.load()
            except Exception as error:  # a broken plugin must not take the others down
                host.problems.append(PluginProblem(entry_point.name, dist_name, "import", _describe(error)))
                continue
            host.add(entry_point.name, plugin, distribution=dist_name, version=version)
        if CORE_PLUGIN not in host.plugins:
            # Running from a source tree that was never installed: the core still works.
            from ssl_engine import builtin

            host.add(CORE_PLUGIN, builtin, distribution="sslx", version=_version("sslx"))
        host.collect()
        host._maybe_fail(strict)
        return host

    def add(self, name: str, plugin: object, *, distribution: str = "?", version: str = "?") -> None:
        """Register a plugin object with pluggy (no hooks are called yet)."""
        try:
            self.manager.register(plugin, name=name)
        except Exception as error:  # pluggy validates hook signatures here
            self.problems.append(PluginProblem(name, distribution, "register", _describe(error)))
            return
        hooks = sorted(
            hook
            for hook in map(hook_name, KINDS)
            if any(impl.plugin_name == name for impl in getattr(self.manager.hook, hook).get_hookimpls())
        )
        self.plugins[name] = PluginInfo(name, distribution, version, hooks=hooks)

    def collect(self) -> None:
        """Call each plugin's implementation of every hook once, with a ``register`` bound to that plugin."""
        for kind in KINDS:
            hook = hook_name(kind)
            for impl in getattr(self.manager.hook, hook).get_hookimpls():
                info = self.plugins[impl.plugin_name]
                try:
                    call_plugin_hook(self.manager, hook, impl.plugin_name, register=self._register_callback(kind, info))
                except Exception as error:
                    self.problems.append(PluginProblem(info.name, info.distribution, hook, _describe(error)))
        self._report_conflicts()

    def _report_conflicts(self) -> None:
        """A problem for each claim on a name several distributions registered, once every claim is known."""
        for kind in KINDS:
            for name, claims in self.registry.conflicts(kind).items():
                for claim in claims:
                    registered = self.plugins[claim.plugin].registered
                    if name in registered.get(kind, []):  # the first claim was listed before the second came
                        registered[kind].remove(name)
                        if not registered[kind]:
                            del registered[kind]
                    message = describe_conflict(kind, name, claims)
                    self.problems.append(PluginProblem(claim.plugin, claim.distribution, "register", message))

    def _register_callback(self, kind: str, info: PluginInfo) -> Callable[..., None]:
        """The ``register`` of the hook of ``kind`` for one plugin: the signature its spec declares, checked."""
        hook = hook_name(kind)
        signature = register_signature(hook)
        keywords = [p.name for p in signature.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]

        def register(*args: Any, **given: Any) -> None:
            unknown = [keyword for keyword in given if keyword not in keywords]
            if unknown:
                what = getattr(args[0], "name", args[0]) if args else "?"
                self.problems.append(
                    PluginProblem(info.name, info.distribution, "register", _unknown_keywords(hook, what, unknown))
                )
                return
            bound = signature.bind(*args, **given)  # a wrong number of arguments raises: the hook's problem
            bound.apply_defaults()
            details = dict(bound.kwargs)  # every keyword, defaults filled in
            help = str(details.pop("help", ""))
            if kind == "task":
                [obj] = bound.args
                if not (isinstance(obj, type) and issubclass(obj, PretextTask)):
                    raise TypeError(f"{hook} expects a PretextTask subclass, got {obj!r}")
                obj.check_declaration()
                name, help = obj.name, obj.summary
            else:
                name, obj = bound.args
                if not isinstance(name, str) or not callable(obj):
                    raise TypeError(f"{hook}: register(name, factory, ...) expected, got {name!r}, {obj!r}")
            entry = Registered(kind, name, obj, info.name, info.distribution, help, details)
            try:
                self.registry.add(entry)
            except ConflictingClaimsError:
                return  # reported once every plugin has registered, naming all claimants
            except DuplicateNameError as error:
                self.problems.append(PluginProblem(info.name, info.distribution, "register", str(error)))
                return
            info.registered.setdefault(kind, []).append(name)

        return register

    def _maybe_fail(self, strict: bool) -> None:
        if strict and self.problems:
            raise PluginLoadError("plugin problems (strict mode):\n" + "\n".join(f"  {p}" for p in self.problems))


def call_plugin_hook(manager: pluggy.PluginManager, hook: str, plugin: str, **arguments: Any) -> None:
    """Call one plugin's implementation of ``hook`` through pluggy, with the hook's arguments.

    pluggy hands the implementation the arguments it names (so specs can gain arguments and old plugins keep
    working); calling the plugins one at a time, rather than the hook once for all, is what lets an exception be
    blamed on its plugin while the others still register.
    """
    own = manager.get_plugin(plugin)
    others = [other for other in manager.get_plugins() if other is not own]
    manager.subset_hook_caller(hook, remove_plugins=others)(**arguments)


@cache
def register_signature(hook: str) -> inspect.Signature:
    """The signature of the ``register`` callback that ``hook`` receives, read off the Protocol its spec names
    (:mod:`ssl_engine.hookspecs`, the one place it is written), without ``self``."""
    protocol = typing.get_type_hints(getattr(hookspecs, hook))["register"]
    signature = inspect.signature(protocol.__call__)
    return signature.replace(parameters=list(signature.parameters.values())[1:])


def _unknown_keywords(hook: str, what: object, unknown: list[str]) -> str:
    """The problem of a ``register`` call with keywords its signature lacks, with the likely intended ones."""
    signature = register_signature(hook)
    known = [p.name for p in signature.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    described = []
    for keyword in unknown:
        close = difflib.get_close_matches(keyword, known, n=1)
        described.append(f"{keyword!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return (
        f"{hook}: register({what!r}, ...) was given the unknown keyword{'s' if len(unknown) > 1 else ''} "
        f"{', '.join(described)}, so it is not registered; register takes {signature}"
    )


def _describe(error: BaseException) -> str:
    last = traceback.extract_tb(error.__traceback__)[-1:] if error.__traceback__ else []
    where = f" (at {last[0].filename}:{last[0].lineno})" if last else ""
    return f"{type(error).__name__}: {error}{where}"


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "?"


_host: PluginHost | None = None


def get_host(*, refresh: bool = False) -> PluginHost:
    """The process-wide host built from entry points (built once, on first use)."""
    global _host
    if _host is None or refresh:
        _host = PluginHost.from_entry_points()
    return _host
