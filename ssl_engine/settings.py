"""Declared, validated task settings (``--set TASK.NAME=VALUE`` and config files)."""

from __future__ import annotations

import builtins
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class SettingError(ValueError):
    """A task setting is unknown or has a bad value; the message names the task and the valid choices."""


@dataclass(frozen=True)
class TaskSetting:
    """One setting a task declares.

    A task reads its resolved values as ``self.hparams[NAME]`` (validated, defaults filled in); a rule across
    settings (``local_size < global_size``) is checked in the task's ``__init__``, raising :class:`SettingError`
    that names the task.

    Attributes:
        name: what users type after ``TASK.``.
        type: ``int``, ``float``, ``bool``, ``str``, or ``list`` (a list of ``item_type``: ``--set
            blurlevel.sigmas=0,1,2,4`` on the command line, an array ``sigmas = [0, 1, 2, 4]`` in a config file).
        default: the paper's value where there is one (a list for a list setting).
        help: one line.
        choices: allowed values, if the setting is an enumeration (each item's, for a list).
        minimum: smallest allowed value for numbers (inclusive; each item's, for a list).
        maximum: largest allowed value for numbers (inclusive; each item's, for a list).
        min_open: the minimum itself is refused too (``lambda > 0``).
        item_type: for ``type=list``: ``int``, ``float``, ``bool`` or ``str``.
        min_items: for ``type=list``: the fewest items allowed.
    """

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    min_open: bool = False
    item_type: builtins.type | None = None
    min_items: int = 1

    def __post_init__(self) -> None:
        if self.type is list and self.item_type not in (int, float, bool, str):
            raise TypeError(f"setting {self.name!r}: a list setting needs item_type int, float, bool or str")
        if self.type is not list and self.item_type is not None:
            raise TypeError(f"setting {self.name!r}: item_type goes with type=list")

    @property
    def type_name(self) -> str:
        """``int``, ``float``, ``bool``, ``str`` or ``list[float]``."""
        if self.type is list and self.item_type is not None:
            return f"list[{self.item_type.__name__}]"
        return self.type.__name__

    def parse(self, value: Any, task: str) -> Any:
        """Convert (strings from the command line included) and validate one value."""
        if self.type is list:
            return self._parse_list(value, task)
        return self._parse_scalar(self.type, value, f"setting {task}.{self.name}")

    def _parse_list(self, value: Any, task: str) -> list[Any]:
        where, kind = f"setting {task}.{self.name}", self.item_type
        assert kind is not None  # checked in __post_init__
        if isinstance(value, str):
            items: list[Any] = [item.strip() for item in value.split(",")] if value.strip() else []
        elif isinstance(value, list | tuple):
            items = list(value)
        else:
            raise SettingError(f"{where} expects a list of {kind.__name__} (e.g. 1,2,4), got {value!r}")
        if len(items) < self.min_items:
            raise SettingError(f"{where} needs at least {self.min_items} item(s); got {len(items)}")
        return [self._parse_scalar(kind, item, f"{where}[{index}]") for index, item in enumerate(items)]

    def _parse_scalar(self, kind: builtins.type, value: Any, where: str) -> Any:
        if kind is bool and isinstance(value, str):
            lowered = value.strip().lower()
            if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise SettingError(f"{where} expects true/false, got {value!r}")
            parsed: Any = lowered in ("1", "true", "yes", "on")
        elif kind is bool:
            if not isinstance(value, bool):
                raise SettingError(f"{where} expects true/false, got {value!r}")
            parsed = value
        else:
            try:
                if kind is int and isinstance(value, float) and not value.is_integer():
                    raise ValueError
                if isinstance(value, list | tuple | dict) or (kind is not str and isinstance(value, bool)):
                    raise ValueError
                parsed = kind(value)
            except (TypeError, ValueError):
                raise SettingError(f"{where} expects {kind.__name__}, got {value!r}") from None
        if isinstance(parsed, float) and not math.isfinite(parsed):  # NaN passes every comparison below
            raise SettingError(f"{where} must be a finite number; got {parsed!r}")
        if self.choices is not None and parsed not in self.choices:
            raise SettingError(f"{where} must be one of {', '.join(map(str, self.choices))}; got {parsed!r}")
        if self.minimum is not None and (parsed < self.minimum or (self.min_open and parsed == self.minimum)):
            raise SettingError(f"{where} must be {'>' if self.min_open else '>='} {self.minimum}; got {parsed!r}")
        if self.maximum is not None and parsed > self.maximum:
            raise SettingError(f"{where} must be <= {self.maximum}; got {parsed!r}")
        return parsed


def resolve_settings(task: str, declared: Sequence[TaskSetting], given: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults overlaid with ``given``, every value validated.

    Raises:
        SettingError: on an unknown name (listing the valid ones) or a bad value.
    """
    by_name = {setting.name: setting for setting in declared}
    unknown = sorted(set(given) - set(by_name))
    if unknown:
        valid = ", ".join(sorted(by_name)) or "(this task has no settings)"
        raise SettingError(f"unknown setting {task}.{unknown[0]}; valid settings of {task!r}: {valid}")
    resolved = {name: setting.default for name, setting in by_name.items()}
    for name, value in given.items():
        resolved[name] = by_name[name].parse(value, task)
    return resolved
