"""The memory layout of the model's weights and of each batch.

On CUDA, convolutions run faster on channels-last (NHWC) tensors (cuDNN's tensor-core kernels), so the engine keeps
the model and every batch in that layout there, and the default (NCHW) elsewhere. ``SSLX_CHANNELS_LAST=1`` (or
``0``) forces the choice on any device: the CPU test suite uses it to run the GPU's layout, so a GPU user is not the
first to run that code path.
"""

from __future__ import annotations

import os

import torch

SWITCH = "SSLX_CHANNELS_LAST"


def uses_channels_last(device: torch.device) -> bool:
    """Whether the model and batches on ``device`` are kept channels-last (CUDA, unless ``SSLX_CHANNELS_LAST``
    says otherwise)."""
    forced = os.environ.get(SWITCH, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return device.type == "cuda"
