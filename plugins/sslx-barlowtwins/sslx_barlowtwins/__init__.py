"""sslx plugin: Barlow Twins, self-supervised learning via redundancy reduction (Zbontar et al. 2021)."""

from sslx_barlowtwins.loss import BarlowTwinsLoss
from sslx_barlowtwins.task import BarlowTwinsTask

__all__ = ["BarlowTwinsLoss", "BarlowTwinsTask"]
