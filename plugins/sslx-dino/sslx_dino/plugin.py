"""Entry point of the ``dino`` plugin: the task and its projector head."""

from ssl_engine import api
from sslx_dino.head import dino_projector
from sslx_dino.task import DINOTask


@api.hookimpl
def register_tasks(register: api.TaskRegister) -> None:
    register(DINOTask)


@api.hookimpl
def register_heads(register: api.HeadRegister) -> None:
    register(
        "dino",
        dino_projector,
        kind="classifier",
        help="DINO's paper projector: 3-layer GELU MLP (hidden 512) to the bottleneck, no batch norm",
    )
