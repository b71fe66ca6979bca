"""Entry point of the ``simclr`` plugin."""

from ssl_engine import api
from sslx_simclr.task import SimCLRTask


@api.hookimpl
def register_tasks(register: api.TaskRegister) -> None:
    register(SimCLRTask)
