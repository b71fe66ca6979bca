"""Entry point of the ``barlowtwins`` plugin."""

from ssl_engine.api import TaskRegister, hookimpl
from sslx_barlowtwins.task import BarlowTwinsTask


@hookimpl
def register_tasks(register: TaskRegister) -> None:
    register(BarlowTwinsTask)
