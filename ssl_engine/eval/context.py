"""What an evaluation protocol receives, with the frozen features of each split extracted once and cached."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ssl_engine.config import ConfigError, check_number
from ssl_engine.data.catalog import DataSource
from ssl_engine.data.options import DataError
from ssl_engine.eval.features import extract_features, load_cached_features, save_cached_features
from ssl_engine.task import Representation


@dataclass
class EvalContext:
    """Everything a protocol needs; protocols read only what they use.

    Attributes:
        representation: the feature extractor, float images ``(B, 3, S, S)`` in [0, 1] -> ``(B, D)``.
        source: the labelled data to evaluate on (train, val and test splits).
        image_size: side of the images fed to the representation.
        device: where to compute.
        seed: seeds the protocol's own randomness (label subsets, fine-tuning order).
        batch_size: feature-extraction batch size.
        label_fraction: use only this share of the train labels, sampled per class (semi-supervised setting).
        options: protocol-specific options (``--set KEY=VALUE`` of ``sslx evaluate``), as strings or values.
        cache_dir: where extracted features are kept between evaluations (``None``: memory only).
        cache_key: names the cached features (data, image size, checkpoint step, task).
    """

    representation: Representation
    source: DataSource
    image_size: int
    device: torch.device
    seed: int = 0
    batch_size: int = 256
    label_fraction: float | None = None
    options: dict[str, Any] = field(default_factory=dict)
    cache_dir: Path | None = None
    cache_key: str = ""
    _memo: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)

    def option(self, name: str, default: Any, kind: type, minimum: float | None = None, min_open: bool = False) -> Any:
        """A protocol option converted to ``kind`` (``default`` when not given), finite and at least ``minimum``
        (above it with ``min_open``).

        Raises:
            DataError: the value is not a ``kind`` or out of range (the message names the option).
        """
        value = self.options.get(name, default)
        try:
            if kind is int and isinstance(value, str):
                parsed = int(value.strip())
            else:
                parsed = kind(value)
        except (TypeError, ValueError):
            raise DataError(f"evaluation option {name}={value!r} should be {kind.__name__}") from None
        if kind in (int, float):
            try:
                check_number(f"evaluation option {name}", parsed, minimum, None, min_open)
            except ConfigError as error:
                raise DataError(str(error)) from None
        return parsed

    def features(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen features ``(N, D)`` and labels ``(N,)`` of ``split``, extracted once (then from the cache)."""
        if split in self._memo:
            return self._memo[split]
        path = self.cache_dir / f"features-{self.cache_key}-{split}.safetensors" if self.cache_dir else None
        cached = load_cached_features(path) if path is not None else None
        if cached is not None:
            result = cached
        else:
            dataset = self.source.split(split, self.image_size)
            result = extract_features(self.representation, dataset, self.device, self.batch_size)
            if (result[1] < 0).any():
                raise DataError(f"the {split} split of {self.source.name!r} has unlabelled images")
            if path is not None:
                save_cached_features(path, *result)
        self._memo[split] = result
        return result

    def train_indices(self, labels: torch.Tensor) -> torch.Tensor:
        """Indices of the train samples whose labels may be used: all, or ``label_fraction`` of each class."""
        if self.label_fraction is None or self.label_fraction >= 1:
            return torch.arange(len(labels))
        return per_class_subset(labels, self.label_fraction, self.seed)


def per_class_subset(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """``fraction`` of the samples of each class (at least one), chosen with a seeded permutation; sorted indices."""
    chosen = []
    for label in labels.unique().tolist():
        members = (labels == label).nonzero().flatten()
        order = torch.randperm(len(members), generator=torch.Generator().manual_seed(seed * 1009 + label))
        chosen.append(members[order[: max(1, round(fraction * len(members)))]])
    return torch.cat(chosen).sort().values
