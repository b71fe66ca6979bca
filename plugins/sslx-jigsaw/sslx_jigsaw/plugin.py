"""Entry point of the ``jigsaw`` plugin."""

from ssl_engine import api
from sslx_jigsaw.task import JigsawTask


@api.hookimpl
def register_tasks(register: api.TaskRegister) -> None:
    register(JigsawTask)
