"""Errors raised by a plugin's own code, named after the plugin so the user knows whom to ask.

A task's ``pseudo_labels``, ``forward`` or module factories run inside the core's loop; when they raise (or hand
back something unusable, such as a factory returning ``None``), the user sees one line naming the task, the plugin
and its distribution, and the original traceback only with ``sslx --debug`` (or ``SSLX_DEBUG=1``), for the plugin's
author.
"""

from __future__ import annotations

from ssl_engine.registry import Registered


class PluginCodeError(RuntimeError):
    """Code registered by a plugin raised or returned something unusable.

    Args:
        entry: what the plugin registered (its kind, name, plugin and distribution).
        where: the call that failed, e.g. ``"pseudo_labels"`` or ``"build_modules"``.
        error: the exception it raised, if any (kept as ``__cause__`` by the caller).
        problem: what was wrong when nothing was raised (e.g. ``"returned None"``).
    """

    def __init__(self, entry: Registered, where: str, error: BaseException | None = None, problem: str = "") -> None:
        self.entry, self.where = entry, where
        what = problem or f"raised {type(error).__name__}: {error}"
        super().__init__(
            f"{entry.kind} {entry.name!r} from plugin {entry.plugin!r} (distribution {entry.distribution}) failed in "
            f"{where}: {what}"
        )
