"""Entry point of the ``colorization`` plugin."""

from collections.abc import Callable

from ssl_engine.hookspecs import hookimpl
from sslx_colorization.task import ColorizationTask


@hookimpl
def register_tasks(register: Callable[[type], None]) -> None:
    register(ColorizationTask)
