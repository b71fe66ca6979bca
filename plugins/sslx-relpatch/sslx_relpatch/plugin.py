"""Entry point of the ``relpatch`` plugin."""

from collections.abc import Callable

from ssl_engine.hookspecs import hookimpl
from sslx_relpatch.task import RelativePatchTask


@hookimpl
def register_tasks(register: Callable[[type], None]) -> None:
    register(RelativePatchTask)
