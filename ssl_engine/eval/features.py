"""Extracting frozen features of a whole split, and keeping them in a cache file between evaluations."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset

from ssl_engine.atomic_files import replace_atomically, with_user_permissions
from ssl_engine.images import to_float
from ssl_engine.task import Representation


class FeatureCacheWarning(UserWarning):
    """A cached features file could not be read (it is extracted again) or written (the evaluation goes on)."""


@torch.no_grad()
def extract_features(
    representation: Representation,
    dataset: Dataset[tuple[torch.Tensor, int]],
    device: torch.device,
    batch_size: int = 256,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``(N, D)`` (float32, CPU) and labels ``(N,)`` of every sample, the representation in eval mode.

    ``on_batch`` is called with the number of images of each batch once its features are computed (progress).
    """
    was_training = representation.training
    representation.eval().to(device)
    features, labels = [], []
    try:
        for images, batch_labels in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            features.append(representation(to_float(images.to(device))).float().cpu())
            labels.append(torch.as_tensor(batch_labels))
            if on_batch is not None:
                on_batch(len(images))
    finally:
        representation.train(was_training)
    return torch.cat(features), torch.cat(labels).long()


def load_cached_features(path: Path) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Features ``(N, D)`` and labels ``(N,)`` stored at ``path``; ``None`` when there are none to trust.

    A file that cannot be read as such (truncated, corrupt, wrong contents) counts as absent, with a warning, so
    the caller extracts the features again and rewrites it instead of failing every later evaluation.
    """
    if not path.exists():
        return None
    try:
        stored = load_file(str(path))
        features, labels = stored["features"], stored["labels"]
        if features.ndim != 2 or labels.ndim != 1 or len(features) != len(labels):
            raise ValueError(f"shapes {tuple(features.shape)} and {tuple(labels.shape)} do not match")
    except (OSError, SafetensorError, KeyError, ValueError) as error:
        warnings.warn(
            f"cached features {path} are unreadable ({type(error).__name__}: {error}); extracting them again",
            FeatureCacheWarning,
            stacklevel=2,
        )
        return None
    return features.float(), labels.long()


def save_cached_features(path: Path, features: torch.Tensor, labels: torch.Tensor) -> None:
    """Store features and labels at ``path`` atomically (temporary file, fsync, rename).

    A crash mid-write leaves the previous file or none, never a partial one. Failing to write only costs the
    next evaluation an extraction, so it is a warning, not an error.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # per process: concurrent evaluations
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"features": features.contiguous(), "labels": labels.contiguous()}, str(temporary))
        with_user_permissions(temporary)
        replace_atomically(temporary, path)
    except (OSError, SafetensorError) as error:
        warnings.warn(f"could not cache features at {path}: {error}", FeatureCacheWarning, stacklevel=2)
    finally:
        temporary.unlink(missing_ok=True)
