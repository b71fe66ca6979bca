"""Entry point of the ``splitbrain`` plugin."""

from ssl_engine import api
from sslx_splitbrain.task import SplitBrainTask


@api.hookimpl
def register_tasks(register: api.TaskRegister) -> None:
    register(SplitBrainTask)
