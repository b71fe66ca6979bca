"""Entry point of the ``relpatch`` plugin."""

from ssl_engine.api import TaskRegister, hookimpl
from sslx_relpatch.task import RelativePatchTask


@hookimpl
def register_tasks(register: TaskRegister) -> None:
    register(RelativePatchTask)
