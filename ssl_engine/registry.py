"""The registry that plugins fill through their ``register`` callbacks.

One :class:`Registry` holds every kind of thing a plugin can provide (tasks, heads, losses, backbones, data sets,
evaluators), each entry remembering the plugin and distribution it came from, so a name clash or a missing name
can always be reported with who is involved.

A name claimed by two different distributions belongs to neither: which one would win must not depend on the
order plugins happen to load in (an impostor sorting first would take over a genuine task), so both claims are
refused and asking for the name says who claims it and how to disable one, until the user does.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

KINDS: tuple[str, ...] = ("task", "head", "loss", "backbone", "dataset", "evaluator")


class UnknownNameError(LookupError):
    """A name asked for (task, backbone, data set, ...) is not registered; the message lists the valid ones."""

    def __init__(self, kind: str, name: str, available: list[str]) -> None:
        self.kind, self.name, self.available = kind, name, available
        listed = ", ".join(available) if available else "(none installed)"
        super().__init__(f"unknown {kind} {name!r}; available: {listed}")


@dataclass(frozen=True)
class Registered:
    """One registered thing.

    Attributes:
        kind: one of :data:`KINDS`.
        name: its registry name (what users type).
        obj: the task class, factory or evaluate function.
        plugin: the plugin (entry-point) name that registered it.
        distribution: the installed distribution providing the plugin (``"?"`` for inline plugins).
        help: one line for listings.
        meta: kind-specific details (e.g. ``{"kind": "decoder"}`` for heads, ``{"labelled": True}`` for data).
    """

    kind: str
    name: str
    obj: Any
    plugin: str
    distribution: str
    help: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


class NameConflictError(UnknownNameError):
    """A name asked for is claimed by several distributions, so none of them got it."""

    def __init__(self, kind: str, name: str, available: list[str], claims: list[Registered]) -> None:
        self.claims = claims
        super().__init__(kind, name, available)
        self.args = (describe_conflict(kind, name, claims),)


class DuplicateNameError(ValueError):
    """A plugin registered a name that another plugin already holds."""


class ConflictingClaimsError(DuplicateNameError):
    """A plugin registered a name that another distribution claims too: both claims are refused.

    Attributes:
        claims: every claim on the name so far, the new one last.
    """

    def __init__(self, kind: str, name: str, claims: list[Registered]) -> None:
        self.claims = claims
        super().__init__(describe_conflict(kind, name, claims))


def claimant(entry: Registered) -> str:
    """Who claims a name: the distribution, or the plugin itself when it has none (an inline plugin)."""
    return entry.distribution if entry.distribution != "?" else f"plugin {entry.plugin!r}"


def describe_conflict(kind: str, name: str, claims: list[Registered]) -> str:
    """One message naming every claimant of ``name`` and how to disable all but one."""
    ordered = sorted(claims, key=lambda entry: (entry.distribution, entry.plugin))
    names = [f"plugin {entry.plugin!r} ({entry.distribution})" for entry in ordered]
    # The core is always loaded; only third-party plugins can be switched off.
    switches = sorted({entry.plugin for entry in ordered if entry.plugin != "core"})
    how = " or ".join(f"SSLX_DISABLE_PLUGINS={plugin}" for plugin in switches)
    if len(names) == 2:
        return (
            f"{kind} {name!r} is registered by both {names[0]} and {names[1]}, so neither gets it; disable one ({how})"
        )
    who = ", ".join(names[:-1]) + f" and {names[-1]}"
    return f"{kind} {name!r} is registered by {who}, so none of them gets it; disable all but one ({how})"


class Registry:
    """Name -> :class:`Registered`, one table per kind."""

    def __init__(self) -> None:
        self._tables: dict[str, dict[str, Registered]] = {kind: {} for kind in KINDS}
        self._conflicts: dict[str, dict[str, list[Registered]]] = {kind: {} for kind in KINDS}

    def add(self, entry: Registered) -> None:
        """Add ``entry``, unless its name is taken.

        Raises:
            ConflictingClaimsError: another distribution claims the name (now or before): the name is withdrawn
                and refused to every claimant, whatever the order they came in.
            DuplicateNameError: the same distribution registered the name twice; the first one is kept.
        """
        table, conflicts = self._tables[entry.kind], self._conflicts[entry.kind]
        if entry.name in conflicts:
            conflicts[entry.name].append(entry)
            raise ConflictingClaimsError(entry.kind, entry.name, conflicts[entry.name])
        if entry.name in table:
            held = table[entry.name]
            if claimant(held) != claimant(entry):
                del table[entry.name]
                conflicts[entry.name] = [held, entry]
                raise ConflictingClaimsError(entry.kind, entry.name, conflicts[entry.name])
            raise DuplicateNameError(
                f"{entry.kind} {entry.name!r} from plugin {entry.plugin!r} ({entry.distribution}) is already "
                f"registered by plugin {held.plugin!r} ({held.distribution}); the second one is ignored"
            )
        table[entry.name] = entry

    def get(self, kind: str, name: str) -> Registered:
        """Look a name up.

        Raises:
            NameConflictError: several distributions claim the name (the message names them and the way out).
            UnknownNameError: nobody registered it (the message lists the available names).
        """
        table = self._tables[kind]
        if name in self._conflicts[kind]:
            raise NameConflictError(kind, name, sorted(table), self._conflicts[kind][name])
        if name not in table:
            raise UnknownNameError(kind, name, sorted(table))
        return table[name]

    def conflicts(self, kind: str) -> dict[str, list[Registered]]:
        """Names of ``kind`` refused because several distributions claim them -> every claim."""
        return {name: list(claims) for name, claims in self._conflicts[kind].items()}

    def names(self, kind: str) -> list[str]:
        """Sorted names registered for ``kind``."""
        return sorted(self._tables[kind])

    def entries(self, kind: str | None = None) -> Iterator[Registered]:
        """Every entry (of one kind, or all kinds), in registration order."""
        for table_kind, table in self._tables.items():
            if kind is None or kind == table_kind:
                yield from table.values()
