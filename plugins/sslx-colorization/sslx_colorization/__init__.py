"""sslx plugin: colorization (Zhang, Isola & Efros 2016), and the CIE Lab tools split-brain builds on."""

from sslx_colorization.bins import ABBins, ab_bins, annealed_mean
from sslx_colorization.lab import lab_to_rgb, lightness_input, lightness_input_from_rgb, rgb_to_lab
from sslx_colorization.rebalance import ColourPrior
from sslx_colorization.task import ColorizationTask

__all__ = [
    "ABBins",
    "ColorizationTask",
    "ColourPrior",
    "ab_bins",
    "annealed_mean",
    "lab_to_rgb",
    "lightness_input",
    "lightness_input_from_rgb",
    "rgb_to_lab",
]
