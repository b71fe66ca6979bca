"""sslx plugin: single-image super-resolution as a pretext task (after Ledig et al. 2017, SRGAN)."""

from sslx_superres.degrade import bicubic_degrade
from sslx_superres.task import SuperResolutionTask

__all__ = ["SuperResolutionTask", "bicubic_degrade"]
