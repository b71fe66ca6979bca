"""Turning a data set into a deterministic stream of uint8 batches.

The data order depends only on (seed, epoch), so a run can be resumed at any step. Small data sets are decoded
once into one uint8 tensor (no workers needed); larger ones are read by DataLoader worker processes, which only
decode files. File-backed data sets (folders, shards: :mod:`ssl_engine.data.file_backed`) are always read by the
workers, which also take each image's random-resized crop, keyed by (seed, step, place in the global batch).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ssl_engine.data.augment import random_crop_flip
from ssl_engine.data.file_backed import FileBackedImages, TrainingCrops, UnreadableImagesWarning, collate_crops
from ssl_engine.data.order import epoch_order
from ssl_engine.distributed import World, mean_over_ranks
from ssl_engine.randomness import BatchRandom

__all__ = ["BatchStream", "epoch_order", "materialize"]

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
        # File-backed data: crops taken in the workers; unreadable files met so far (index -> name), in order.
        self.file_backed = isinstance(dataset, FileBackedImages)
        self.unreadable: dict[int, str] = {}

    @classmethod
    def for_dataset(
        cls,
        dataset: Dataset[tuple[torch.Tensor, int]],
        batch_size: int,
        seed: int,
        *,
        device: torch.device | None = None,
        **kwargs: int,
    ) -> BatchStream:
        """A stream that holds the data set in memory when it fits in :data:`IN_MEMORY_LIMIT_BYTES`: decoded once
        into one uint8 tensor, kept on ``device`` (on a GPU, batches are then gathered there, with no copy from
        the host per step). Larger data sets are decoded by ``workers`` DataLoader processes into pinned memory
        (on CUDA) for asynchronous copies. ``kwargs`` (``rank``, ``world``, ``workers``) go to the constructor."""
        count = len(dataset)  # type: ignore[arg-type]
        if isinstance(dataset, FileBackedImages):
            in_memory = False  # every step takes new random crops of the files
        else:
            image, _ = dataset[0]
            in_memory = count * image.numel() <= IN_MEMORY_LIMIT_BYTES
        images, labels = materialize(dataset) if in_memory else (None, None)
        if images is not None and labels is not None and device is not None:
            images, labels = images.to(device), labels.to(device)
        pin = device is not None and device.type == "cuda"
        return cls(dataset, batch_size, seed, images=images, labels=labels, pin_memory=pin, **kwargs)

    def index_batches(self, start_step: int = 0) -> Iterator[list[int]]:
        """This process's sample indices of every step from ``start_step`` on, epoch after epoch."""
        epoch, within = divmod(start_step, self.steps_per_epoch)
        order_of = self.dataset.epoch_order if isinstance(self.dataset, FileBackedImages) else None
        while True:
            order = order_of(self.seed, epoch) if order_of else epoch_order(self.count, self.seed, epoch)
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
        if isinstance(self.dataset, FileBackedImages):
            yield from self.file_batches(self.dataset, start_step)
            return
        for batch_images, batch_labels in self.loader(self.dataset, _Endless(self, start_step)):
            yield batch_images, torch.as_tensor(batch_labels)

    def loader(
        self, dataset: Dataset[Any], batch_sampler: Iterable[list[Any]], collate_fn: Callable[..., Any] | None = None
    ) -> DataLoader[Any]:
        """One loader for the whole run (its workers live as long as the stream, across epochs), with the stream's
        workers and prefetching, and its own generator: the loader's base seed must not come from torch's global
        one, which a checkpoint saves, or a resumed run would write another ``rng/torch`` than an uninterrupted one."""
        return DataLoader(
            dataset,
            batch_sampler=batch_sampler,
            num_workers=self.workers,
            pin_memory=self.pin_memory,
            prefetch_factor=4 if self.workers > 0 else None,
            collate_fn=collate_fn,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def file_batches(self, images: FileBackedImages, start_step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of random-resized crops of a file-backed data set, decoded by the workers; unreadable files are
        counted here. Streams that decode elsewhere (:class:`~ssl_engine.data.device_decode.DeviceDecodedStream`)
        override this."""
        loader = self.loader(TrainingCrops(images, self.seed), KeyedSteps(self, start_step), collate_crops)
        for batch_images, batch_labels, failed in loader:
            for index in failed:
                self.unreadable.setdefault(index, images.name_of(index))
            yield batch_images, batch_labels

    def base_augment(self, images: torch.Tensor, random: BatchRandom) -> torch.Tensor:
        """The base augmentation of this stream's regime on float images ``(B, 3, S, S)``: pad-crop-flip on the
        device for data held as ``S x S`` images; none for file-backed data, whose workers took random-resized
        crops and flips already (keyed by the same seed, step and place in the global batch)."""
        if self.file_backed:
            return images
        return random_crop_flip(images, random)

    def unreadable_report(self, world: World, device: torch.device) -> dict[str, float]:
        """``{"data/unreadable": N}``: files that failed to decode while loaded so far, over all processes (a
        collective under torchrun: every rank calls it at the same steps). Empty for data held in memory."""
        if not self.file_backed:
            return {}
        count = torch.tensor([float(len(self.unreadable))])
        if world.distributed:
            count = mean_over_ranks(count.to(device), world).cpu() * world.size
        return {"data/unreadable": round(float(count.item()))}

    def warn_unreadable(self, world: World, device: torch.device) -> dict[str, object]:
        """Warn (rank 0) how many files failed to decode during the run and name the first ones; returns what a
        metrics line records of them (empty when none failed). A collective under torchrun, like
        :meth:`unreadable_report`."""
        report: dict[str, object] = dict(self.unreadable_report(world, device))
        if not report.get("data/unreadable"):
            return {}
        names = list(self.unreadable.values())[:5]
        report["data/unreadable_first"] = names
        if world.is_main:
            total = int(report["data/unreadable"])  # type: ignore[call-overload]
            where = f" (named: those of process 0, {len(self.unreadable)})" if world.distributed else ""
            more = f" and {total - len(names)} more" if total > len(names) else ""
            warnings.warn(
                f"skipped {total} unreadable image(s) while training{where}: {', '.join(names)}{more}; each was "
                f"replaced by another sample (--verify-images leaves them out before training instead)",
                UnreadableImagesWarning,
                stacklevel=2,
            )
        return report


class KeyedSteps:
    """A batch sampler of ``(index, step, slot)`` keys: the sample and its place in the global batch of its step."""

    def __init__(self, stream: BatchStream, start_step: int) -> None:
        self.stream, self.start_step = stream, start_step

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        first_slot = self.stream.rank * self.stream.batch_size
        for step, indices in enumerate(self.stream.index_batches(self.start_step), start=self.start_step):
            yield [(index, step, first_slot + place) for place, index in enumerate(indices)]


class _Endless:
    """A batch sampler over :meth:`BatchStream.index_batches` (DataLoader asks only for iteration)."""

    def __init__(self, stream: BatchStream, start_step: int) -> None:
        self.stream, self.start_step = stream, start_step

    def __iter__(self) -> Iterator[list[int]]:
        return self.stream.index_batches(self.start_step)
