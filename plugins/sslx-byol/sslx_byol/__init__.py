"""sslx plugin: BYOL, Bootstrap Your Own Latent (Grill et al. 2020)."""

from sslx_byol.loss import BYOLLoss, normalized_mse
from sslx_byol.task import BYOLTask

__all__ = ["BYOLLoss", "BYOLTask", "normalized_mse"]
