"""Entry point of the ``rotation`` plugin."""

from collections.abc import Callable

from ssl_engine.hookspecs import hookimpl
from sslx_rotation.task import RotationTask


@hookimpl
def register_tasks(register: Callable[[type], None]) -> None:
    register(RotationTask)
