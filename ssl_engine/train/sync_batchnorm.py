"""Batch normalisation over the global batch of all processes (``--sync-bn``).

On CUDA this is :class:`torch.nn.SyncBatchNorm`. PyTorch's version refuses CPU tensors, so on the CPU (gloo)
:class:`GlobalBatchNorm` does the same computation with autograd-aware all-reduces: each process sums its
per-channel count, sum and sum of squares, the sums are all-reduced, and every process normalises with the
global mean and (biased) variance and updates the running statistics with the global unbiased variance, as one
process would on the whole batch (Ioffe & Szegedy 2015; the synchronised form of Peng et al. 2018, MegDet).
The all-reduce's backward all-reduces the incoming gradients, so gradients through the statistics reach every
process's inputs.
"""

from __future__ import annotations

import torch
import torch.distributed.nn.functional as distributed_autograd
from torch import nn


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm of inputs ``(B, C)``, ``(B, C, L)`` or ``(B, C, H, W)`` whose training statistics are those of
    the global batch (every process's ``B`` together); evaluation and single-process runs behave exactly as
    :class:`~torch.nn.BatchNorm1d`/:class:`~torch.nn.BatchNorm2d`."""

    def _check_input_dim(self, input: torch.Tensor) -> None:  # noqa: A002 (torch's name)
        if input.dim() not in (2, 3, 4):
            raise ValueError(f"expected a 2-d, 3-d or 4-d input (got {input.dim()}-d)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 (torch's name)
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if not (self.training and distributed and torch.distributed.get_world_size() > 1):
            return super().forward(input)
        self._check_input_dim(input)
        values = input.float()
        reduced = [0, *range(2, values.dim())]
        count = torch.full((1,), values.numel() / values.shape[1], device=input.device)
        sums = values.sum(dim=reduced)
        squares = values.square().sum(dim=reduced)
        total = distributed_autograd.all_reduce(torch.cat([count, sums, squares]))
        n = total[0]
        mean = total[1 : 1 + self.num_features] / n
        variance = (total[1 + self.num_features :] / n - mean.square()).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                tracked = self.num_batches_tracked
                assert tracked is not None  # track_running_stats
                tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(tracked)
                unbiased = variance * n / (n - 1).clamp_min(1)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.detach().to(self.running_var.dtype), momentum)
        shape = (1, -1) + (1,) * (values.dim() - 2)
        normalised = (values - mean.view(shape)) * torch.rsqrt(variance.view(shape) + self.eps)
        if self.affine:
            normalised = normalised * self.weight.view(shape) + self.bias.view(shape)
        return normalised.to(input.dtype)


def convert_to_global_batchnorm(module: nn.Module, device_type: str) -> nn.Module:
    """Replace every 1-d and 2-d batch norm in ``module`` (in place where it can) by its synchronised form,
    keeping parameters and statistics: :class:`torch.nn.SyncBatchNorm` on CUDA, :class:`GlobalBatchNorm` elsewhere.
    """
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        replacement = GlobalBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        replacement.load_state_dict(module.state_dict())
        replacement.train(module.training)
        return replacement.to(next(iter(module.state_dict().values())).device)
    for name, child in module.named_children():
        setattr(module, name, convert_to_global_batchnorm(child, device_type))
    return module
