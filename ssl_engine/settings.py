"""Declared, validated task settings (``--set TASK.NAME=VALUE`` and config files)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class SettingError(ValueError):
    """A task setting is unknown or has a bad value; the message names the task and the valid choices."""


@dataclass(frozen=True)
class TaskSetting:
    """One setting a task declares.

    Attributes:
        name: what users type after ``TASK.``.
        type: ``int``, ``float``, ``bool`` or ``str``.
        default: the paper's value where there is one.
        help: one line.
        choices: allowed values, if the setting is an enumeration.
        minimum: smallest allowed value for numbers (inclusive).
        maximum: largest allowed value for numbers (inclusive).
        min_open: the minimum itself is refused too (``lambda > 0``).
    """

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    min_open: bool = False

    def parse(self, value: Any, task: str) -> Any:
        """Convert (strings from the command line included) and validate one value."""
        where = f"setting {task}.{self.name}"
        if self.type is bool and isinstance(value, str):
            lowered = value.strip().lower()
            if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise SettingError(f"{where} expects true/false, got {value!r}")
            parsed: Any = lowered in ("1", "true", "yes", "on")
        elif self.type is bool:
            if not isinstance(value, bool):
                raise SettingError(f"{where} expects true/false, got {value!r}")
            parsed = value
        else:
            try:
                if self.type is int and isinstance(value, float) and not value.is_integer():
                    raise ValueError
                parsed = self.type(value)
            except (TypeError, ValueError):
                raise SettingError(f"{where} expects {self.type.__name__}, got {value!r}") from None
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
