"""What an evaluation protocol receives, with the frozen features of each split extracted once and cached."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ssl_engine.config import ConfigError, check_number
from ssl_engine.data.catalog import DataSource
from ssl_engine.data.options import DataError
from ssl_engine.eval.features import extract_features, load_cached_features, save_cached_features
from ssl_engine.progress import PhaseProgress
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
        progress: reports the long phases (feature extraction, classifier fits, fine-tuning steps); its prefix
            names the network being evaluated (e.g. ``"random init: "``).
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
    progress: PhaseProgress = field(default_factory=PhaseProgress)
    _memo: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)

    def option(
        self,
        name: str,
        default: Any,
        kind: type,
        minimum: float | None = None,
        min_open: bool = False,
        maximum: float | None = None,
    ) -> Any:
        """A protocol option converted to ``kind`` (``default`` when not given), finite, at least ``minimum``
        (above it with ``min_open``) and at most ``maximum``.

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
                check_number(f"evaluation option {name}", parsed, minimum, maximum, min_open)
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
            count = len(dataset)  # type: ignore[arg-type]
            with self.progress.phase(f"extracting features of {count:,} {split} images", count, "img") as phase:
                result = extract_features(
                    self.representation, dataset, self.device, self.batch_size, on_batch=phase.advance
                )
            if (result[1] < 0).any():
                raise DataError(f"the {split} split of {self.source.name!r} has unlabelled images")
            if path is not None:
                save_cached_features(path, *result)
        self._memo[split] = result
        return result

    def split_sizes(self) -> dict[str, int]:
        """Images in each split whose features were read so far, e.g. ``{"train": 10000, "val": 2000, ...}``."""
        return {split: len(labels) for split, (_, labels) in sorted(self._memo.items())}

    def train_indices(self, labels: torch.Tensor) -> torch.Tensor:
        """Indices of the train samples whose labels may be used: all, or ``label_fraction`` of each class.

        Raises:
            DataError: the fraction keeps no example of some class (the message names it and a fraction that works).
        """
        if self.label_fraction is None or self.label_fraction >= 1:
            return torch.arange(len(labels))
        return per_class_subset(labels, self.label_fraction, self.seed, self._class_name)

    def _class_name(self, label: int) -> str:
        """The train split's name of class ``label`` (its index when the data set names none)."""
        names = getattr(self.source.split("train", self.image_size), "classes", None) or []
        return repr(names[label]) if label < len(names) else str(label)


def per_class_subset(
    labels: torch.Tensor, fraction: float, seed: int, class_name: Callable[[int], str] = str
) -> torch.Tensor:
    """``round(fraction * n)`` of the ``n`` samples of each class, chosen with a seeded permutation; sorted indices.

    Raises:
        DataError: a class would keep no example; the message names the class (``class_name(label)``) and the
            smallest fraction that keeps one of every class.
    """
    classes, counts = labels.unique(return_counts=True)
    kept = [round(fraction * int(count)) for count in counts]
    if 0 in kept:
        empty = kept.index(0)
        fewest = int(counts.min())
        works = _round_up(1 / fewest)
        raise DataError(
            f"--label-fraction {fraction:g} keeps no example of class {class_name(int(classes[empty]))} "
            f"({fraction:g} x {int(counts[empty])} train images rounds to 0); the smallest fraction that keeps one "
            f"of every class is {works:g} (its smallest class has {fewest} images)"
        )
    chosen = []
    for label, count in zip(classes.tolist(), kept, strict=True):
        members = (labels == label).nonzero().flatten()
        order = torch.randperm(len(members), generator=torch.Generator().manual_seed(seed * 1009 + label))
        chosen.append(members[order[:count]])
    return torch.cat(chosen).sort().values


def _round_up(value: float, digits: int = 3) -> float:
    """``value`` > 0 rounded up to ``digits`` significant digits (a fraction to print that is never too small)."""
    scale = 10.0 ** (math.floor(math.log10(value)) - digits + 1)
    return float(f"{math.ceil(value / scale - 1e-9) * scale:.{digits}g}")
