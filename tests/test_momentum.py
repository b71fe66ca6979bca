"""Momentum teachers: the update against its formula, the schedule's ends, freezing."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ssl_engine.momentum import copy_weights, cosine_momentum, ema_update, freeze


def test_ema_update_follows_the_formula_parameter_by_parameter() -> None:
    torch.manual_seed(0)
    student, teacher = (
        nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)),
        nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)),
    )
    before = [p.detach().clone() for p in teacher.parameters()]
    ema_update(teacher, student, 0.9)
    for old, new, target in zip(before, teacher.parameters(), student.parameters(), strict=True):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * target, rtol=0, atol=1e-7)
    ema_update(teacher, student, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(teacher.parameters(), student.parameters(), strict=True))
    with pytest.raises(ValueError, match="momentum"):
        ema_update(teacher, student, 1.5)


def test_cosine_momentum_goes_from_base_to_one() -> None:
    assert cosine_momentum(0.996, 0.0) == pytest.approx(0.996)
    assert cosine_momentum(0.996, 1.0) == pytest.approx(1.0)
    assert cosine_momentum(0.99, 0.5) == pytest.approx(1 - 0.01 * (math.cos(math.pi / 2) + 1) / 2)


def test_a_frozen_copy_starts_equal_and_has_no_gradients() -> None:
    student = nn.Linear(3, 2)
    teacher = freeze(nn.Linear(3, 2))
    copy_weights(teacher, student)
    assert torch.equal(teacher.weight, student.weight) and not teacher.weight.requires_grad
