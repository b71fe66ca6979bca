"""Entry point of the ``splitbrain`` plugin."""

from collections.abc import Callable

from ssl_engine.hookspecs import hookimpl
from sslx_splitbrain.task import SplitBrainTask


@hookimpl
def register_tasks(register: Callable[[type], None]) -> None:
    register(SplitBrainTask)
