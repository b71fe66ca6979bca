"""Pseudo-label randomness that depends only on (seed, step, stream, place in the global batch).

Every process draws the random numbers of the *global* batch from an identically seeded generator and keeps its
own slice, so a run gives the same pseudo-labels however the batch is split across processes.
"""

from __future__ import annotations

import hashlib

import torch


def mix_seed(*parts: object) -> int:
    """A 63-bit seed from any parts, stable across processes and Python versions (unlike ``hash``)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class BatchRandom:
    """Random draws for one task at one step, per sample of the local slice of the global batch.

    Each method draws ``(global_batch, *shape)`` values on ``device`` and returns rows
    ``[offset, offset + local_batch)``: shape ``(local_batch, *shape)``.

    Args:
        seed: the run's seed.
        step: the optimisation step (kept as :attr:`step`, for tasks whose pseudo-labels follow a schedule).
        stream: a name separating independent streams (the task's name, "augment", ...).
        local_batch: samples on this process.
        global_batch: samples over all processes (defaults to ``local_batch``).
        offset: index of this process's first sample in the global batch.
        device: where the numbers are drawn.
    """

    def __init__(
        self,
        seed: int,
        step: int,
        stream: str,
        local_batch: int,
        *,
        global_batch: int | None = None,
        offset: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        self.step = step
        self.local_batch = local_batch
        self.global_batch = local_batch if global_batch is None else global_batch
        if not 0 <= offset <= self.global_batch - local_batch:
            raise ValueError(f"slice [{offset}, {offset + local_batch}) outside global batch {self.global_batch}")
        self.offset = offset
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(mix_seed(seed, step, stream))

    def _slice(self, values: torch.Tensor) -> torch.Tensor:
        return values[self.offset : self.offset + self.local_batch]

    def rand(self, *shape: int) -> torch.Tensor:
        """Uniform [0, 1) floats, ``(B, *shape)``."""
        return self._slice(torch.rand((self.global_batch, *shape), generator=self.generator, device=self.device))

    def randn(self, *shape: int) -> torch.Tensor:
        """Standard normal floats, ``(B, *shape)``."""
        return self._slice(torch.randn((self.global_batch, *shape), generator=self.generator, device=self.device))

    def randint(self, low: int, high: int, *shape: int) -> torch.Tensor:
        """Integers in ``[low, high)``, ``(B, *shape)``, int64."""
        values = torch.randint(low, high, (self.global_batch, *shape), generator=self.generator, device=self.device)
        return self._slice(values)

    def bernoulli(self, probability: float, *shape: int) -> torch.Tensor:
        """Booleans that are True with ``probability``, ``(B, *shape)``."""
        return self.rand(*shape) < probability

    def uniform(self, low: float, high: float, *shape: int) -> torch.Tensor:
        """Uniform floats in ``[low, high)``, ``(B, *shape)``."""
        return low + (high - low) * self.rand(*shape)

    def split(self, stream: str) -> BatchRandom:
        """An independent stream with the same slice (e.g. one per augmentation)."""
        child = BatchRandom.__new__(BatchRandom)
        child.step, child.local_batch, child.global_batch = self.step, self.local_batch, self.global_batch
        child.offset = self.offset
        child.device = self.device
        child.generator = torch.Generator(device=self.device)
        child.generator.manual_seed(mix_seed(self.generator.initial_seed(), stream))
        return child
