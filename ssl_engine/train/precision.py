"""Numerical precision of training: ``--precision bf16-mixed|16-mixed|32|auto``.

``auto`` is bf16 autocast on a GPU that supports it, fp16 autocast with a gradient scaler on one that does not
(T4, V100), full float32 elsewhere. ``bf16-mixed`` also runs on the CPU (its autocast exists there); asked for on
a GPU without bf16 it falls back to ``16-mixed`` with a message. ``16-mixed`` scales the loss (``GradScaler``), so
small fp16 gradients do not underflow; its state is part of the checkpoint.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Any

import torch

PRECISIONS = ("auto", "bf16-mixed", "16-mixed", "32")


@dataclass(frozen=True)
class Precision:
    """The resolved precision of a run on its device.

    Attributes:
        name: ``bf16-mixed``, ``16-mixed`` or ``32``.
        device_type: ``cuda``, ``cpu`` or ``mps``.
    """

    name: str
    device_type: str

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, ``None`` for float32."""
        return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(self.name)

    @property
    def scaled(self) -> bool:
        """Whether the loss is scaled (fp16)."""
        return self.name == "16-mixed"

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The autocast region of forward passes (nothing for float32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler | None:
        """A fresh gradient scaler for ``16-mixed``, else ``None``."""
        return torch.amp.GradScaler(self.device_type) if self.scaled else None


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast runs natively on ``device`` (the CPU: always; CUDA: Ampere and later)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return device.type == "cpu"


def resolve_precision(requested: str, device: torch.device) -> Precision:
    """``requested`` made concrete for ``device`` (see the module docstring); a fallback is said with a warning.

    Raises:
        ValueError: an unknown precision, or ``16-mixed`` on MPS.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}; got {requested!r}")
    if requested == "auto":
        if device.type != "cuda":
            return Precision("32", device.type)
        requested = "bf16-mixed" if bf16_supported(device) else "16-mixed"
    if requested == "bf16-mixed" and not bf16_supported(device):
        if device.type != "cuda":
            raise ValueError(f"--precision bf16-mixed is not supported on {device.type}; use 32")
        warnings.warn(
            "this GPU does not support bf16; training with --precision 16-mixed (fp16 autocast, gradient scaler)",
            stacklevel=2,
        )
        requested = "16-mixed"
    if requested == "16-mixed" and device.type == "mps":
        raise ValueError("--precision 16-mixed needs CUDA or the CPU; use 32 on MPS")
    return Precision(requested, device.type)
