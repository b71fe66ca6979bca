"""Pseudo-label randomness and task settings."""

from __future__ import annotations

import pytest
import torch

from ssl_engine.randomness import BatchRandom, mix_seed
from ssl_engine.settings import SettingError, TaskSetting, resolve_settings
from ssl_engine.train.schedule import warmup_cosine


def test_slices_of_the_global_batch_match_the_whole() -> None:
    whole = BatchRandom(1, 5, "task", 8)
    draws = [whole.rand(3), whole.randint(0, 9, 2), whole.randn()]
    for offset in (0, 4):
        part = BatchRandom(1, 5, "task", 4, global_batch=8, offset=offset)
        for expected, got in zip(draws, [part.rand(3), part.randint(0, 9, 2), part.randn()], strict=True):
            assert torch.equal(expected[offset : offset + 4], got)


def test_streams_differ_by_seed_step_and_name() -> None:
    base = BatchRandom(1, 5, "task", 8).rand()
    assert not torch.equal(base, BatchRandom(2, 5, "task", 8).rand())
    assert not torch.equal(base, BatchRandom(1, 6, "task", 8).rand())
    assert not torch.equal(base, BatchRandom(1, 5, "other", 8).rand())
    assert mix_seed(1, 2) == mix_seed(1, 2) != mix_seed(2, 1)
    with pytest.raises(ValueError, match="outside global batch"):
        BatchRandom(0, 0, "x", 4, global_batch=6, offset=4)


DECLARED = (
    TaskSetting("permutations", int, 100, "size", minimum=2, maximum=1000),
    TaskSetting("mode", str, "center", "mask", choices=("center", "random")),
    TaskSetting("adversarial", bool, False, "gan"),
    TaskSetting("weight", float, 0.5, "w"),
    TaskSetting("temperature", float, 0.1, "t > 0", minimum=0, min_open=True),
)


def test_settings_parse_strings_and_keep_defaults() -> None:
    resolved = resolve_settings("t", DECLARED, {"permutations": "30", "adversarial": "yes", "weight": "1e-3"})
    assert resolved == {"permutations": 30, "mode": "center", "adversarial": True, "weight": 0.001, "temperature": 0.1}


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (
            {"nope": 1},
            "unknown setting t.nope; valid settings of 't': adversarial, mode, permutations, temperature, weight",
        ),
        ({"permutations": "x"}, "t.permutations expects int"),
        ({"permutations": 1}, "must be >= 2"),
        ({"mode": "edge"}, "must be one of center, random"),
        ({"adversarial": "maybe"}, "expects true/false"),
        ({"temperature": 0}, "t.temperature must be > 0; got 0.0"),
        ({"temperature": "-1"}, "t.temperature must be > 0"),
        ({"weight": "nan"}, "t.weight must be a finite number"),
        ({"weight": float("inf")}, "t.weight must be a finite number"),
    ],
)
def test_bad_settings_name_the_problem(given: dict[str, object], message: str) -> None:
    with pytest.raises(SettingError, match=message.replace(".", r"\.")):
        resolve_settings("t", DECLARED, given)


def test_warmup_then_cosine() -> None:
    values = [warmup_cosine(step, 100, 10) for step in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[10:], values[11:], strict=False)) and values[-1] < 0.01
