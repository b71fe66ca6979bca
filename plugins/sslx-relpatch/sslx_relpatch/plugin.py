"""Entry point of the ``relpatch`` plugin."""

from ssl_engine import api
from sslx_relpatch.task import RelativePatchTask


@api.hookimpl
def register_tasks(register: api.TaskRegister) -> None:
    register(RelativePatchTask)
