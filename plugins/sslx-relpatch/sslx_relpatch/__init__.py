"""sslx plugin: relative patch position, context prediction (Doersch, Gupta & Efros 2015)."""

from sslx_relpatch.patches import NEIGHBOUR_STEPS, PatchGrid, crop_patches, resample, resampling_table
from sslx_relpatch.task import RelativePatchTask

__all__ = ["NEIGHBOUR_STEPS", "PatchGrid", "RelativePatchTask", "crop_patches", "resample", "resampling_table"]
