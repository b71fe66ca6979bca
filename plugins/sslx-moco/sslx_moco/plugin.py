"""Entry point of the ``moco`` plugin."""

from ssl_engine import api
from sslx_moco.task import MoCoTask


@api.hookimpl
def register_tasks(register: api.TaskRegister) -> None:
    register(MoCoTask)
