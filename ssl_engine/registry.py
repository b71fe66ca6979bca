"""The registry that plugins fill through their ``register`` callbacks.

One :class:`Registry` holds every kind of thing a plugin can provide (tasks, heads, losses, backbones, data sets,
evaluators), each entry remembering the plugin and distribution it came from, so a name clash or a missing name
can always be reported with who is involved.
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


class DuplicateNameError(ValueError):
    """A plugin registered a name that another plugin already holds."""


class Registry:
    """Name -> :class:`Registered`, one table per kind."""

    def __init__(self) -> None:
        self._tables: dict[str, dict[str, Registered]] = {kind: {} for kind in KINDS}

    def add(self, entry: Registered) -> None:
        """Add ``entry``; raise :class:`DuplicateNameError` naming both plugins if the name is taken."""
        table = self._tables[entry.kind]
        if entry.name in table:
            held = table[entry.name]
            raise DuplicateNameError(
                f"{entry.kind} {entry.name!r} from plugin {entry.plugin!r} ({entry.distribution}) is already "
                f"registered by plugin {held.plugin!r} ({held.distribution}); the second one is ignored"
            )
        table[entry.name] = entry

    def get(self, kind: str, name: str) -> Registered:
        """Look a name up; raise :class:`UnknownNameError` listing the available names."""
        table = self._tables[kind]
        if name not in table:
            raise UnknownNameError(kind, name, sorted(table))
        return table[name]

    def names(self, kind: str) -> list[str]:
        """Sorted names registered for ``kind``."""
        return sorted(self._tables[kind])

    def entries(self, kind: str | None = None) -> Iterator[Registered]:
        """Every entry (of one kind, or all kinds), in registration order."""
        for table_kind, table in self._tables.items():
            if kind is None or kind == table_kind:
                yield from table.values()
