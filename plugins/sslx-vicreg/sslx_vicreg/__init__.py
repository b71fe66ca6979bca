"""sslx plugin: VICReg, variance-invariance-covariance regularisation (Bardes, Ponce & LeCun 2022)."""

from sslx_vicreg.loss import VICRegLoss
from sslx_vicreg.task import VICRegTask

__all__ = ["VICRegLoss", "VICRegTask"]
