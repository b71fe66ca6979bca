"""Entry point of the ``splitbrain`` plugin."""

from ssl_engine.api import TaskRegister, hookimpl
from sslx_splitbrain.task import SplitBrainTask


@hookimpl
def register_tasks(register: TaskRegister) -> None:
    register(SplitBrainTask)
