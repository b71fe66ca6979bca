"""Turning a data set into a deterministic stream of uint8 batches.

The data order depends only on (seed, epoch), so a run can be resumed at any step. Small data sets are decoded
once into one uint8 tensor (no workers needed); larger ones are read by DataLoader worker processes, which only
decode files.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from ssl_engine.randomness import mix_seed

IN_MEMORY_LIMIT_BYTES = 2 * 1024**3


def materialize(dataset: Dataset[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every sample at once: images uint8 ``(N, 3, S, S)``, labels int64 ``(N,)``."""
    count = len(dataset)  # type: ignore[arg-type]
    loader = DataLoader(dataset, batch_size=256, shuffle=False, num_workers=0)
    images, labels = [], []
    for batch_images, batch_labels in loader:
        images.append(batch_images)
        labels.append(torch.as_tensor(batch_labels))
    if not images:
        raise ValueError("empty data set")
    result = torch.cat(images), torch.cat(labels).long()
    assert len(result[0]) == count
    return result


def epoch_order(count: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of ``range(count)`` used in ``epoch``, the same on every process and every resume."""
    return torch.randperm(count, generator=torch.Generator().manual_seed(mix_seed(seed, "data-order", epoch)))


class BatchStream:
    """Endless uint8 batches ``(B, 3, S, S)`` (and labels ``(B,)``) in a reproducible order.

    Incomplete final batches are dropped so every step has the same batch size. ``rank``/``world`` pick this
    process's share of each global batch (the global batch is ``batch_size * world``).

    Args:
        dataset: the data set.
        batch_size: per-process batch size.
        seed: fixes the order of every epoch.
        workers: DataLoader workers for data that is not held in memory.
    """

    def __init__(
        self,
        dataset: Dataset[tuple[torch.Tensor, int]],
        batch_size: int,
        seed: int,
        *,
        rank: int = 0,
        world: int = 1,
        workers: int = 2,
        images: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> None:
        self.dataset = dataset
        self.count = len(dataset)  # type: ignore[arg-type]
        self.batch_size = batch_size
        self.seed, self.rank, self.world, self.workers = seed, rank, world, workers
        self.global_batch = batch_size * world
        if self.count < self.global_batch:
            raise ValueError(
                f"the data set has {self.count} images, fewer than one global batch of {self.global_batch}"
            )
        self.steps_per_epoch = self.count // self.global_batch
        self.images, self.labels = images, labels

    @classmethod
    def for_dataset(
        cls, dataset: Dataset[tuple[torch.Tensor, int]], batch_size: int, seed: int, *, workers: int = 2, **kwargs: int
    ) -> BatchStream:
        """A stream that holds the data set in memory when it fits in :data:`IN_MEMORY_LIMIT_BYTES`."""
        count = len(dataset)  # type: ignore[arg-type]
        image, _ = dataset[0]
        in_memory = count * image.numel() <= IN_MEMORY_LIMIT_BYTES
        images, labels = materialize(dataset) if in_memory else (None, None)
        return cls(dataset, batch_size, seed, workers=workers, images=images, labels=labels, **kwargs)

    def batches(self, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches from global step ``start_step`` on (resuming mid-epoch skips no data and repeats none)."""
        epoch, within = divmod(start_step, self.steps_per_epoch)
        while True:
            order = epoch_order(self.count, self.seed, epoch)
            usable = order[: self.steps_per_epoch * self.global_batch].view(self.steps_per_epoch, self.world, -1)
            mine = usable[within:, self.rank]  # (steps left, batch_size)
            if self.images is not None and self.labels is not None:
                for indices in mine:
                    yield self.images[indices], self.labels[indices]
            else:
                loader = DataLoader(
                    self.dataset,
                    batch_sampler=mine.tolist(),
                    num_workers=self.workers,
                    persistent_workers=False,
                )
                for batch_images, batch_labels in loader:
                    yield batch_images, torch.as_tensor(batch_labels)
            epoch, within = epoch + 1, 0
