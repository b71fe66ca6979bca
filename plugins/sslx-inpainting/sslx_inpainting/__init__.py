"""sslx plugin: context encoders, feature learning by inpainting (Pathak et al. 2016)."""

from ssl_engine.adversarial import Discriminator, discriminator_loss, generator_loss
from sslx_inpainting.masks import block_masks, center_masks, region_masks
from sslx_inpainting.task import InpaintingTask

__all__ = [
    "Discriminator",
    "InpaintingTask",
    "block_masks",
    "center_masks",
    "discriminator_loss",
    "generator_loss",
    "region_masks",
]
