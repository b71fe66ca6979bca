"""Entry point of the ``jigsaw`` plugin."""

from ssl_engine.api import TaskRegister, hookimpl
from sslx_jigsaw.task import JigsawTask


@hookimpl
def register_tasks(register: TaskRegister) -> None:
    register(JigsawTask)
