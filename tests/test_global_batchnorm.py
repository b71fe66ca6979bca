"""The CPU global batch norm (``--sync-bn`` on gloo) against double-precision batch norm of the whole batch.

The data sit at mean/std 1000, where the float32 variance ``E[x^2] - mean^2`` loses everything to cancellation
(an error of about 0.3 in normalised units) while plain float32 batch norm of the whole batch is off by about
4e-5: the global statistics, combined from each process's mean and sum of squared deviations, must be as
accurate as plain batch norm, in one process (groups combined by :func:`combine_moments`) and over two gloo
processes through :class:`GlobalBatchNorm` itself (outputs, gradients of the inputs, running statistics), also
under ``torch.compile`` (``--compile`` compiles the backbone, and with it its batch norms).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from ssl_engine.testing import spawn_ranks
from ssl_engine.train.sync_batchnorm import GlobalBatchNorm, combine_moments, convert_to_global_batchnorm

WORLD = 2
ROWS_PER_RANK = 8
CHANNELS = 3
OFFSET = 1000.0  # the mean; the standard deviation is 1


def whole_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``(W * B, C, 4, 4)`` at mean/std 1000 (float64, exactly representable in float32) and fixed
    weights of the loss ``sum(weights * output)``."""
    generator = torch.Generator().manual_seed(0)
    inputs = (OFFSET + torch.randn(WORLD * ROWS_PER_RANK, CHANNELS, 4, 4, generator=generator)).float().double()
    weights = torch.randn(WORLD * ROWS_PER_RANK, CHANNELS, 4, 4, generator=generator, dtype=torch.float64)
    return inputs, weights


def batch_norm_reference(inputs: torch.Tensor, weights: torch.Tensor) -> dict[str, torch.Tensor]:
    """Training-mode batch norm of the whole batch in ``inputs``' precision: output, input gradient of
    ``sum(weights * output)`` and the running statistics after one step (momentum 0.1, from 0 and 1)."""
    inputs = inputs.clone().requires_grad_()
    running_mean = torch.zeros(CHANNELS, dtype=inputs.dtype)
    running_var = torch.ones(CHANNELS, dtype=inputs.dtype)
    output = F.batch_norm(inputs, running_mean, running_var, training=True, momentum=0.1, eps=1e-5)
    (grad,) = torch.autograd.grad((output * weights.to(inputs.dtype)).sum(), inputs)
    return {"output": output.detach(), "grad": grad, "running_mean": running_mean, "running_var": running_var}


def largest_error(result: torch.Tensor, reference: torch.Tensor) -> float:
    return (result.double() - reference).abs().max().item()


def test_moments_of_groups_combine_into_the_whole_batchs_at_mean_over_std_1000() -> None:
    inputs, weights = whole_batch()
    exact = batch_norm_reference(inputs, weights)
    plain = batch_norm_reference(inputs.float(), weights)
    values = inputs.float()
    groups = values.chunk(4)  # uneven sizes would do too
    moments = [torch.var_mean(group, dim=[0, 2, 3], correction=0) for group in groups]
    counts = torch.tensor([[group.numel() / CHANNELS] for group in groups])  # (G, 1)
    means = torch.stack([mean for _, mean in moments])  # (G, C)
    m2s = torch.stack([variance for variance, _ in moments]) * counts  # (G, C)
    count, mean, m2 = combine_moments(counts, means, m2s)
    assert count.item() == values.numel() / CHANNELS
    output = (values - mean.view(1, -1, 1, 1)) * torch.rsqrt(m2.view(1, -1, 1, 1) / count + 1e-5)
    error, plain_error = largest_error(output, exact["output"]), largest_error(plain["output"], exact["output"])
    assert plain_error < 2e-4
    assert error < 2 * plain_error + 1e-5, f"combined moments: {error:.2e}, plain float32 batch norm {plain_error:.2e}"


def rank_result(rank: int) -> dict[str, dict[str, torch.Tensor]]:
    torch.set_num_threads(1)
    inputs, weights = whole_batch()
    rows = slice(rank * ROWS_PER_RANK, (rank + 1) * ROWS_PER_RANK)
    results = {}
    for name, compiled in (("eager", False), ("compiled", True)):
        mine = inputs[rows].float().requires_grad_()
        norm = GlobalBatchNorm(CHANNELS, affine=False).train()
        output = (torch.compile(norm, fullgraph=True) if compiled else norm)(mine)
        (output * weights[rows].float()).sum().backward()
        results[name] = {
            "output": output.detach(),
            "grad": mine.grad,
            "running_mean": norm.running_mean,
            "running_var": norm.running_var,
        }
    return results


@pytest.mark.slow
def test_two_processes_normalise_as_double_precision_batch_norm_of_the_whole_batch(tmp_path: Path) -> None:
    ranks = spawn_ranks(rank_result, tmp_path, world=WORLD)
    inputs, weights = whole_batch()
    exact = batch_norm_reference(inputs, weights)
    plain = batch_norm_reference(inputs.float(), weights)
    for mode in ("eager", "compiled"):
        for key in ("output", "grad"):
            combined = torch.cat([result[mode][key] for result in ranks])
            error, plain_error = largest_error(combined, exact[key]), largest_error(plain[key], exact[key])
            assert plain_error < 2e-4
            assert error < 2 * plain_error + 1e-5, f"{mode} {key}: {error:.2e}, plain batch norm {plain_error:.2e}"
        for result in ranks:  # every rank keeps the same, global, running statistics
            mine = result[mode]
            torch.testing.assert_close(mine["running_mean"].double(), exact["running_mean"], atol=1e-3, rtol=1e-6)
            torch.testing.assert_close(mine["running_var"].double(), exact["running_var"], atol=2e-3, rtol=1e-3)


def test_converting_keeps_a_frozen_batch_norm_frozen() -> None:
    """A momentum teacher's batch norm (requires_grad off) stays out of the optimizer under ``--sync-bn``."""
    model = nn.ModuleDict({"student": nn.BatchNorm2d(3), "teacher": nn.BatchNorm2d(3)})
    model["teacher"].requires_grad_(False)
    converted = convert_to_global_batchnorm(model, "cpu")
    assert isinstance(converted["teacher"], GlobalBatchNorm) and isinstance(converted["student"], GlobalBatchNorm)
    assert not any(p.requires_grad for p in converted["teacher"].parameters())
    assert all(p.requires_grad for p in converted["student"].parameters())
