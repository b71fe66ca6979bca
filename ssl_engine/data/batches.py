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
        pin_memory: bool = False,
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
        self.pin_memory = pin_memory

    @classmethod
    def for_dataset(
        cls,
        dataset: Dataset[tuple[torch.Tensor, int]],
        batch_size: int,
        seed: int,
        *,
        workers: int = 2,
        device: torch.device | None = None,
        **kwargs: int,
    ) -> BatchStream:
        """A stream that holds the data set in memory when it fits in :data:`IN_MEMORY_LIMIT_BYTES`: decoded once
        into one uint8 tensor, kept on ``device`` (on a GPU, batches are then gathered there, with no copy from
        the host per step). Larger data sets are decoded by ``workers`` DataLoader processes into pinned memory
        (on CUDA) for asynchronous copies."""
        count = len(dataset)  # type: ignore[arg-type]
        image, _ = dataset[0]
        in_memory = count * image.numel() <= IN_MEMORY_LIMIT_BYTES
        images, labels = materialize(dataset) if in_memory else (None, None)
        if images is not None and labels is not None and device is not None:
            images, labels = images.to(device), labels.to(device)
        pin = device is not None and device.type == "cuda"
        return cls(dataset, batch_size, seed, workers=workers, images=images, labels=labels, pin_memory=pin, **kwargs)

    def index_batches(self, start_step: int = 0) -> Iterator[list[int]]:
        """This process's sample indices of every step from ``start_step`` on, epoch after epoch."""
        epoch, within = divmod(start_step, self.steps_per_epoch)
        while True:
            order = epoch_order(self.count, self.seed, epoch)
            usable = order[: self.steps_per_epoch * self.global_batch].view(self.steps_per_epoch, self.world, -1)
            yield from usable[within:, self.rank].tolist()  # (steps left, batch_size)
            epoch, within = epoch + 1, 0

    def batches(self, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches from global step ``start_step`` on (resuming mid-epoch skips no data and repeats none)."""
        if self.images is not None and self.labels is not None:
            for indices in self.index_batches(start_step):
                rows = torch.tensor(indices, device=self.images.device)
                yield self.images[rows], self.labels[rows]
            return
        # One loader for the whole run: its workers live as long as the stream, across epochs.
        loader = DataLoader(
            self.dataset,
            batch_sampler=_Endless(self, start_step),
            num_workers=self.workers,
            pin_memory=self.pin_memory,
            prefetch_factor=4 if self.workers > 0 else None,
        )
        for batch_images, batch_labels in loader:
            yield batch_images, torch.as_tensor(batch_labels)


class _Endless:
    """A batch sampler over :meth:`BatchStream.index_batches` (DataLoader asks only for iteration)."""

    def __init__(self, stream: BatchStream, start_step: int) -> None:
        self.stream, self.start_step = stream, start_step

    def __iter__(self) -> Iterator[list[int]]:
        return self.stream.index_batches(self.start_step)
