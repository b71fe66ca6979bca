"""sslx plugin: context encoders, feature learning by inpainting (Pathak et al. 2016)."""

from sslx_inpainting.masks import block_masks, center_masks, region_masks
from sslx_inpainting.task import InpaintingTask

__all__ = ["InpaintingTask", "block_masks", "center_masks", "region_masks"]
