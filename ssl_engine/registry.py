"""The registry that plugins fill through their ``register`` callbacks: one typed :class:`Table` per kind.

A :class:`Registry` holds every kind of thing a plugin can provide (tasks, heads, losses, backbones, data sets,
evaluators, loggers), each in its own table typed by what it holds (``registry.tasks[name].obj`` is a task class,
``registry.backbones[name].obj`` a backbone factory), each entry remembering the plugin and distribution it came
from, so a name clash or a missing name can always be reported with who is involved. The kinds are the tables a
:class:`Registry` builds (:data:`KINDS`), each filled by one hook (``register_tasks``, ..., :func:`hook_name`).

A name claimed by two different distributions belongs to neither: which one would win must not depend on the
order plugins happen to load in (an impostor sorting first would take over a genuine task), so both claims are
refused and asking for the name says who claims it and how to disable one, until the user does.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from ssl_engine.names import unknown_name

if TYPE_CHECKING:
    from ssl_engine.hookspecs import BackboneFactory, DatasetFactory, Evaluator, LoggerFactory, LossFactory
    from ssl_engine.task import HeadFactory, PretextTask

T = TypeVar("T")

FAMILY_SEPARATOR = ":"
FAMILY_MEMBER = "NAME"
"""A family of names (``timm:NAME``: every timm model) is registered as ``PREFIX:NAME`` (see
:meth:`Table.family_of`)."""


class UnknownNameError(LookupError):
    """A name asked for (task, backbone, data set, ...) is not registered; the message lists the valid ones, the
    closest first when the name looks misspelled (:func:`ssl_engine.names.unknown_name`)."""

    def __init__(self, kind: str, name: str, available: list[str]) -> None:
        self.kind, self.name, self.available = kind, name, available
        super().__init__(unknown_name(kind, name, available))


@dataclass(frozen=True)
class Registered(Generic[T]):
    """One registered thing.

    Attributes:
        kind: one of :data:`KINDS`.
        name: its registry name (what users type).
        obj: the task class, factory or evaluate function.
        plugin: the plugin (entry-point) name that registered it.
        distribution: the installed distribution providing the plugin (``"?"`` for inline plugins).
        help: one line for listings.
        meta: the keywords of its ``register`` call, defaults filled in (``{"kind": "decoder"}`` for a head,
            ``{"labelled": True, "color": True, "pretrain_split": "train"}`` for a data set; see
            :mod:`ssl_engine.hookspecs`).
    """

    kind: str
    name: str
    obj: T
    plugin: str
    distribution: str
    help: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


class NameConflictError(UnknownNameError):
    """A name asked for is claimed by several distributions, so none of them got it."""

    def __init__(self, kind: str, name: str, available: list[str], claims: list[Registered[Any]]) -> None:
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

    def __init__(self, kind: str, name: str, claims: list[Registered[Any]]) -> None:
        self.claims = claims
        super().__init__(describe_conflict(kind, name, claims))


def claimant(entry: Registered[Any]) -> str:
    """Who claims a name: the distribution, or the plugin itself when it has none (an inline plugin)."""
    return entry.distribution if entry.distribution != "?" else f"plugin {entry.plugin!r}"


def describe_conflict(kind: str, name: str, claims: list[Registered[Any]]) -> str:
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


class Table(Generic[T]):
    """The registered things of one kind: name -> :class:`Registered` ``[T]``, plus the names refused because
    several distributions claim them.

    Args:
        kind: what users and messages call the things (``"task"``).
        hook: the hook through which plugins register them (``"register_tasks"``).

    ``table[name]`` looks a name up (raising :class:`UnknownNameError` or :class:`NameConflictError`, both
    lookup errors whose message says what to do), ``name in table`` says whether it would succeed, and
    iterating gives the entries in registration order. A name ``PREFIX:MEMBER`` with no entry of its own is
    resolved by the family registered as ``PREFIX:NAME``, if any (:meth:`family_of`).
    """

    def __init__(self, kind: str, hook: str) -> None:
        self.kind, self.hook = kind, hook
        self._entries: dict[str, Registered[T]] = {}
        self._conflicts: dict[str, list[Registered[T]]] = {}

    def add(self, entry: Registered[T]) -> None:
        """Add ``entry``, unless its name is taken.

        Raises:
            ConflictingClaimsError: another distribution claims the name (now or before): the name is withdrawn
                and refused to every claimant, whatever the order they came in.
            DuplicateNameError: the same distribution registered the name twice; the first one is kept.
        """
        if entry.name in self._conflicts:
            self._conflicts[entry.name].append(entry)
            raise ConflictingClaimsError(self.kind, entry.name, list(self._conflicts[entry.name]))
        if entry.name in self._entries:
            held = self._entries[entry.name]
            if claimant(held) != claimant(entry):
                del self._entries[entry.name]
                self._conflicts[entry.name] = [held, entry]
                raise ConflictingClaimsError(self.kind, entry.name, [held, entry])
            raise DuplicateNameError(
                f"{self.kind} {entry.name!r} from plugin {entry.plugin!r} ({entry.distribution}) is already "
                f"registered by plugin {held.plugin!r} ({held.distribution}); the second one is ignored"
            )
        self._entries[entry.name] = entry

    def __getitem__(self, name: str) -> Registered[T]:
        """The entry registered as ``name``.

        Raises:
            NameConflictError: several distributions claim the name (the message names them and the way out).
            UnknownNameError: nobody registered it (the message lists the available names).
        """
        if name in self._conflicts:
            raise NameConflictError(self.kind, name, self.names(), list(self._conflicts[name]))
        if name in self._entries:
            return self._entries[name]
        family = self.family_of(name)
        if family is None:
            raise UnknownNameError(self.kind, name, self.names())
        member = name.partition(FAMILY_SEPARATOR)[2]
        resolved: T = cast(Any, family.obj).resolve(member)
        return replace(family, name=name, obj=resolved)

    def family_of(self, name: str) -> Registered[T] | None:
        """The family entry that stands for ``name`` (``timm:NAME`` for ``timm:resnet18``), if one is registered.

        A family is an entry named ``PREFIX:NAME`` whose object has a ``resolve(member)`` method returning the
        object for ``PREFIX:member`` (raising :class:`UnknownNameError` with a message of its own when there is
        none); it answers for every name starting with ``PREFIX:`` that has no entry of its own, with its plugin
        and distribution.

        Raises:
            NameConflictError: several distributions claim the family.
        """
        prefix, separator, member = name.partition(FAMILY_SEPARATOR)
        if not separator or not member:
            return None
        family_name = f"{prefix}{FAMILY_SEPARATOR}{FAMILY_MEMBER}"
        if family_name in self._conflicts:
            raise NameConflictError(self.kind, family_name, self.names(), list(self._conflicts[family_name]))
        family = self._entries.get(family_name)
        if family is None or not callable(getattr(family.obj, "resolve", None)):
            return None
        return family

    def __contains__(self, name: object) -> bool:
        if name in self._entries:
            return True
        if not isinstance(name, str):
            return False
        try:
            self[name]
        except LookupError:
            return False
        return True

    def __iter__(self) -> Iterator[Registered[T]]:
        return iter(list(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        """Sorted names registered (and not refused)."""
        return sorted(self._entries)

    def conflicts(self) -> dict[str, list[Registered[T]]]:
        """Names refused because several distributions claim them -> every claim."""
        return {name: list(claims) for name, claims in self._conflicts.items()}


class Registry:
    """One typed :class:`Table` per kind; :meth:`get`, :meth:`names` and :meth:`entries` look up by kind name."""

    def __init__(self) -> None:
        # The one list of kinds and their hooks, in listing order: KINDS and hook_name read it.
        self.tasks: Table[type[PretextTask]] = Table("task", "register_tasks")
        self.heads: Table[HeadFactory] = Table("head", "register_heads")
        self.losses: Table[LossFactory] = Table("loss", "register_losses")
        self.backbones: Table[BackboneFactory] = Table("backbone", "register_backbones")
        self.datasets: Table[DatasetFactory] = Table("dataset", "register_datasets")
        self.evaluators: Table[Evaluator] = Table("evaluator", "register_evaluators")
        self.loggers: Table[LoggerFactory] = Table("logger", "register_loggers")
        tables: tuple[Table[Any], ...] = (
            self.tasks,
            self.heads,
            self.losses,
            self.backbones,
            self.datasets,
            self.evaluators,
            self.loggers,
        )
        self.tables: dict[str, Table[Any]] = {table.kind: table for table in tables}

    def table(self, kind: str) -> Table[Any]:
        """The table of ``kind`` (one of :data:`KINDS`)."""
        return self.tables[kind]

    def add(self, entry: Registered[Any]) -> None:
        """Add ``entry`` to the table of its kind (see :meth:`Table.add`)."""
        self.tables[entry.kind].add(entry)

    def get(self, kind: str, name: str) -> Registered[Any]:
        """``registry.table(kind)[name]``: prefer the typed tables (``registry.tasks[name]``)."""
        return self.tables[kind][name]

    def conflicts(self, kind: str) -> dict[str, list[Registered[Any]]]:
        """Names of ``kind`` refused because several distributions claim them -> every claim."""
        return self.tables[kind].conflicts()

    def names(self, kind: str) -> list[str]:
        """Sorted names registered for ``kind``."""
        return self.tables[kind].names()

    def entries(self, kind: str | None = None) -> Iterator[Registered[Any]]:
        """Every entry (of one kind, or all kinds), in registration order."""
        for table in self.tables.values():
            if kind is None or kind == table.kind:
                yield from table


_HOOKS: dict[str, str] = {kind: table.hook for kind, table in Registry().tables.items()}

KINDS: tuple[str, ...] = tuple(_HOOKS)
"""Every kind of thing a plugin can register: ``task``, ``head``, ``loss``, ``backbone``, ``dataset``,
``evaluator``, ``logger``."""


def hook_name(kind: str) -> str:
    """The hook through which plugins register things of ``kind`` (``"loss"`` -> ``"register_losses"``)."""
    return _HOOKS[kind]
