"""All-gather across processes with gradients flowing back to every process's own rows.

SimCLR takes its negatives from the whole global batch (Chen et al. 2020, "A Simple Framework for Contrastive
Learning of Visual Representations", Sec. 2.2; Sec. 5.2: larger batches, up to 8192, give more negatives and
better representations), so each process needs every other process's embeddings, and the loss terms computed on
other processes must send their gradients back here.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ssl_engine.api import all_gather_with_grad


def is_distributed() -> bool:
    """True when ``torch.distributed`` is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_from_all_ranks(rows: torch.Tensor) -> torch.Tensor:
    """Every process's rows, in rank order, differentiable with respect to this process's rows.

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
    # Its backward reduce-scatters every rank's gradient for these rows (summed), which is what the formula above
    # needs; a plain ``dist.all_gather`` would cut the graph. Traceable by torch.compile.
    return all_gather_with_grad(rows)
