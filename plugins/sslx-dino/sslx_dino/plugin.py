"""Entry point of the ``dino`` plugin: the task and its projector head."""

from ssl_engine import api
from sslx_dino.head import PROJECTOR_HELP, dino_projector
from sslx_dino.task import DINOTask


@api.hookimpl
def register_tasks(register: api.TaskRegister) -> None:
    register(DINOTask)


@api.hookimpl
def register_heads(register: api.HeadRegister) -> None:
    register("dino", dino_projector, kind="classifier", help=PROJECTOR_HELP)
