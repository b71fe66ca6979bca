"""Entry point of the ``superres`` plugin."""

from collections.abc import Callable

from ssl_engine.hookspecs import hookimpl
from sslx_superres.task import SuperResolutionTask


@hookimpl
def register_tasks(register: Callable[[type], None]) -> None:
    register(SuperResolutionTask)
