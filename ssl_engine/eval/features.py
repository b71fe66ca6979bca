"""Extracting frozen features of a whole split."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from ssl_engine.images import to_float
from ssl_engine.task import Representation


@torch.no_grad()
def extract_features(
    representation: Representation,
    dataset: Dataset[tuple[torch.Tensor, int]],
    device: torch.device,
    batch_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``(N, D)`` (float32, CPU) and labels ``(N,)`` of every sample, the representation in eval mode."""
    was_training = representation.training
    representation.eval().to(device)
    features, labels = [], []
    for images, batch_labels in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        features.append(representation(to_float(images.to(device))).float().cpu())
        labels.append(torch.as_tensor(batch_labels))
    representation.train(was_training)
    return torch.cat(features), torch.cat(labels).long()
