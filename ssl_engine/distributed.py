"""Several processes through ``torch.distributed``, as started by ``torchrun`` (no launcher of our own).

``torchrun --nproc-per-node N -m ssl_engine.cli pretrain ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and
the rendezvous address in each process's environment; :func:`init_from_env` reads them and joins the process
group (NCCL on CUDA, gloo on the CPU). Without those variables (or with ``WORLD_SIZE=1``) a run is one process
and nothing here does anything.

Every process builds the same model from the same seed and draws the pseudo-labels of the whole global batch,
keeping its own slice (:class:`ssl_engine.randomness.BatchRandom`); gradients are averaged by
``DistributedDataParallel``. Only rank 0 writes the run directory (config, metrics, checkpoints) and shows
progress; every rank reads the same checkpoint on resume.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import nn

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """Where this process stands: its rank among ``size`` processes and its device."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


SINGLE = World()


def env_world() -> World:
    """The rank and world size torchrun put in the environment (one process when it didn't)."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as error:
        raise ValueError(f"torchrun environment is malformed (RANK/WORLD_SIZE/LOCAL_RANK): {error}") from None
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"torchrun environment is inconsistent: RANK={rank}, WORLD_SIZE={size}")
    return World(rank, size, local_rank)


def init_from_env(device_type: str) -> World:
    """Join the process group torchrun described (NCCL for CUDA, gloo otherwise); one process: do nothing.

    Idempotent: a process group that already exists is used as it is.
    """
    world = env_world()
    if not world.distributed:
        return SINGLE
    if not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), world.local_rank)


def current_world() -> World:
    """The world of an initialised process group, else one process."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return World(dist.get_rank(), dist.get_world_size(), env_world().local_rank)
    return SINGLE


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def broadcast_from_main(value: T, world: World) -> T:
    """Rank 0's ``value`` (any picklable object) on every rank."""
    if not world.distributed:
        return value
    holder: list[Any] = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def mean_over_ranks(values: torch.Tensor, world: World) -> torch.Tensor:
    """The element-wise mean of ``values`` over all processes (a copy; ``values`` itself is left alone)."""
    if not world.distributed:
        return values
    total = values.detach().clone()
    dist.all_reduce(total)
    return total / world.size


def max_over_ranks(values: torch.Tensor, world: World) -> torch.Tensor:
    """The element-wise maximum of ``values`` over all processes (a copy)."""
    if not world.distributed:
        return values
    largest = values.detach().clone()
    dist.all_reduce(largest, op=dist.ReduceOp.MAX)
    return largest


# torch 2.14 deprecates the autograd collectives of ``torch.distributed.nn.functional`` and refuses them under
# ``torch.compile``; its functional ``all_gather_single``, which has a backward, replaces them. Older torch lacks
# it and keeps the legacy gather (eager only).
_FUNCTIONAL_AUTOGRAD = hasattr(funcol, "all_gather_single")


def all_gather_with_grad(rows: torch.Tensor) -> torch.Tensor:
    """Every process's ``rows`` ``(n, ...)`` stacked in rank order ``(W * n, ...)``, differentiable.

    ``n`` must be the same on every process. The backward is a reduce-scatter of the summed gradients: this
    process's rows get the gradient that every rank's loss sends to their gathered copies. Traceable by
    ``torch.compile``. Call it only in an initialised process group.
    """
    if _FUNCTIONAL_AUTOGRAD:
        world = dist.group.WORLD
        assert world is not None, "all_gather_with_grad needs an initialised process group"
        gathered = funcol.all_gather_single(rows.contiguous(), 0, world)
        # Eager, that is an AsyncCollectiveTensor that waits at its first use; hand back a plain tensor, which
        # saves and pickles like any other (traced, it is one already).
        if isinstance(gathered, funcol.AsyncCollectiveTensor):
            gathered = funcol.wait_tensor(gathered)
        return gathered
    import torch.distributed.nn.functional as legacy

    return torch.cat(legacy.all_gather(rows.contiguous()))


def is_distributed() -> bool:
    """True when ``torch.distributed`` is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_from_all_ranks(rows: torch.Tensor) -> torch.Tensor:
    """Every process's rows, in rank order, differentiable with respect to this process's rows (SimCLR's negatives,
    MoCo's queue keys, Barlow Twins' and VICReg's global-batch statistics).

    Gradients: after ``loss_r.backward()`` on every rank ``r``, this rank's ``rows.grad`` is
    ``sum over r' of d loss_r' / d rows`` (the other ranks' losses depend on these rows through their gathered
    copies). With DistributedDataParallel averaging parameter gradients over the ``W`` ranks, the parameters then
    get the gradient of ``mean over r of loss_r``: the loss of one process on the global batch when every rank
    has the same number of rows.

    Args:
        rows: ``(n, ...)``, the same shape on every process.

    Returns:
        ``(W * n, ...)``; rows ``rank * n ... rank * n + n - 1`` are ``rows``. Without an initialised process
        group of two or more, ``rows`` itself.
    """
    if not is_distributed():
        return rows
    return all_gather_with_grad(rows)


def average_gradients(module: nn.Module, world: World) -> None:
    """Average the gradients of ``module``'s parameters over all processes (for modules outside DDP, such as
    discriminators and the online probe), in one flat all-reduce."""
    if not world.distributed:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world.size
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def shutdown(world: World) -> None:
    """Leave the process group (end of a torchrun process)."""
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def pick_device(requested: str, world: World = SINGLE) -> torch.device:
    """Where this process computes: ``auto`` -> CUDA, else MPS, else the CPU; under torchrun each process takes
    its local rank's GPU. An explicit device that isn't there is an error.

    Raises:
        ValueError: ``cuda`` or ``mps`` asked for but not available.
    """
    if requested == "auto":
        if torch.cuda.is_available():
            requested = "cuda"
        elif torch.backends.mps.is_available():
            requested = "mps"
        else:
            requested = "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but CUDA is not available")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps was asked for but MPS is not available")
    if requested == "cuda" and world.distributed:
        return torch.device("cuda", world.local_rank)
    return torch.device(requested)
