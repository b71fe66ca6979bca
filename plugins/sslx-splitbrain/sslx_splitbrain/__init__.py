"""sslx plugin: split-brain autoencoders, cross-channel prediction (Zhang, Isola & Efros 2017)."""

from sslx_splitbrain.lightness_bins import L_BINS, lightness_centres, quantize_lightness
from sslx_splitbrain.representation import SplitBrainRepresentation
from sslx_splitbrain.task import SplitBrainTask

__all__ = ["L_BINS", "SplitBrainRepresentation", "SplitBrainTask", "lightness_centres", "quantize_lightness"]
