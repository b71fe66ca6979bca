"""sslx plugin: SimCLR, contrastive learning of visual representations (Chen, Kornblith, Norouzi & Hinton 2020)."""

from sslx_simclr.loss import NTXentLoss
from sslx_simclr.task import SimCLRTask

__all__ = ["NTXentLoss", "SimCLRTask"]
