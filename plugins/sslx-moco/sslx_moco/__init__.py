"""sslx plugin: MoCo, momentum contrast (He et al. 2020; v2: Chen, Fan, Girshick & He 2020; v3: Chen, Xie & He 2021)."""

from sslx_moco.loss import batch_logits, queue_logits, symmetric_logits
from sslx_moco.task import MoCoTask

__all__ = ["MoCoTask", "batch_logits", "queue_logits", "symmetric_logits"]
