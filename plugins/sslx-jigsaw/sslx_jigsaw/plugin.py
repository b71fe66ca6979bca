"""Entry point of the ``jigsaw`` plugin."""

from collections.abc import Callable

from ssl_engine.hookspecs import hookimpl
from sslx_jigsaw.task import JigsawTask


@hookimpl
def register_tasks(register: Callable[[type], None]) -> None:
    register(JigsawTask)
