"""Where the per-pixel predictions of a colour decoder live, and the targets resampled to match.

Zhang, Isola & Efros (2016, 2017) predict colours at a quarter of the input resolution (56 px outputs for 224 px
inputs) and compare them with the image downsampled to that size. Here the decoder turns the backbone's map
``(N, D, ceil(S / stride), ceil(S / stride))`` into ``stride / output_stride`` times that side, and the Lab
targets are area-averaged to the same grid.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from ssl_engine.settings import SettingError, TaskSetting

# A decoder's last convolution has no normalisation after it, so under an l2 loss the curvature it sees grows
# with its fan-in times the mean square of its (positive, post-ReLU) inputs: about 180 for the 128 x 3 x 3 inputs
# of a scale-2 ``upconv`` decoder, beyond what SGD with momentum 0.9 tolerates at the engine's rate 0.05 (the
# regression diverged to NaN within 35 steps, measured). Reading regression outputs as ``gain * decoder(x)``
# divides that curvature by ``gain ** 2`` (a learning rate of lr / 16 for that layer alone) and changes nothing
# the network can represent. Cross-entropy needs no such care: its curvature shrinks as the softmax saturates.
REGRESSION_GAIN = 0.25

# The output strides a colour task may ask for: the powers of 2 up to 32, the largest backbone stride.
OUTPUT_STRIDES = (1, 2, 4, 8, 16, 32)


def output_stride_setting(default: int, help: str) -> TaskSetting:
    """``output_stride``, input pixels per predicted pixel of a colour decoder: one of :data:`OUTPUT_STRIDES`,
    checked against the backbone's stride when the task is built (:func:`decoder_scale`).

    Args:
        default: the task's default (Zhang et al. predict at a quarter of the resolution: 4).
        help: one line, with the paper's value.
    """
    return TaskSetting("output_stride", int, default, help, choices=OUTPUT_STRIDES)


def decoder_scale(task: str, feature_stride: int, output_stride: int) -> int:
    """Upsampling factor of the decoder: ``feature_stride / output_stride``, a power of 2.

    Raises:
        SettingError: ``output_stride`` does not divide the backbone's stride into a power of 2.
    """
    scale = feature_stride // output_stride if output_stride <= feature_stride else 0
    if scale < 1 or scale * output_stride != feature_stride or scale & (scale - 1):
        raise SettingError(
            f"setting {task}.output_stride={output_stride} must divide the backbone's stride {feature_stride} "
            f"by a power of 2 (try 1, 2, 4, ... up to {feature_stride})"
        )
    return scale


def output_size(image_size: int, feature_stride: int, output_stride: int) -> int:
    """Side of the decoder's output for ``image_size`` inputs (``image_size / output_stride`` when it divides)."""
    return math.ceil(image_size / feature_stride) * (feature_stride // output_stride)


def to_output_grid(values: torch.Tensor, size: int) -> torch.Tensor:
    """Area-average ``(B, C, S, S)`` maps to ``(B, C, size, size)`` (no-op when ``size == S``)."""
    if values.shape[-1] == size and values.shape[-2] == size:
        return values
    return F.adaptive_avg_pool2d(values, size)
