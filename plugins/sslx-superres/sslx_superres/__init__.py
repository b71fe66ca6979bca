"""sslx plugin: single-image super-resolution as a pretext task (after Ledig et al. 2017, SRGAN)."""

from ssl_engine.adversarial import Discriminator, discriminator_loss, generator_loss
from sslx_superres.degrade import bicubic_degrade
from sslx_superres.task import SuperResolutionTask

__all__ = ["Discriminator", "SuperResolutionTask", "bicubic_degrade", "discriminator_loss", "generator_loss"]
