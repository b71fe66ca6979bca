"""Entry point of the ``simclr`` plugin."""

from ssl_engine.api import TaskRegister, hookimpl
from sslx_simclr.task import SimCLRTask


@hookimpl
def register_tasks(register: TaskRegister) -> None:
    register(SimCLRTask)
