"""What an evaluation protocol receives."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ssl_engine.data.catalog import DataSource
from ssl_engine.task import Representation


@dataclass
class EvalContext:
    """Everything a protocol needs; protocols read only what they use.

    Attributes:
        representation: the frozen feature extractor, float images ``(B, 3, S, S)`` in [0, 1] -> ``(B, D)``.
        source: the labelled data to evaluate on (train, val and test splits).
        image_size: side of the images fed to the representation.
        device: where to compute.
        seed: seeds the protocol's own randomness.
        batch_size: feature-extraction batch size.
        options: protocol-specific options.
    """

    representation: Representation
    source: DataSource
    image_size: int
    device: torch.device
    seed: int = 0
    batch_size: int = 256
    options: dict[str, Any] = field(default_factory=dict)
