"""sslx plugin: masked autoencoders, the encoder on the visible patches only (He et al. 2022)."""

from sslx_mae.decoder import MAEDecoder, sincos_positions
from sslx_mae.masking import random_masking
from sslx_mae.task import MAETask

__all__ = ["MAEDecoder", "MAETask", "random_masking", "sincos_positions"]
