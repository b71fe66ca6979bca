"""Entry point of the ``simclr`` plugin."""

from collections.abc import Callable

from ssl_engine.hookspecs import hookimpl
from sslx_simclr.task import SimCLRTask


@hookimpl
def register_tasks(register: Callable[[type], None]) -> None:
    register(SimCLRTask)
