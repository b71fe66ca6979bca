"""sslx plugin: DINO, self-distillation with no labels (Caron, Touvron, Misra, Jégou, Mairal, Bojanowski & Joulin
2021)."""

from sslx_dino.head import DINOHead, dino_projector
from sslx_dino.loss import dino_loss, teacher_temperature, updated_centre
from sslx_dino.task import DINOTask

__all__ = ["DINOHead", "DINOTask", "dino_loss", "dino_projector", "teacher_temperature", "updated_centre"]
