"""``--schedule-steps``: the schedules span a pinned length, so a run stopped early and resumed with a larger
budget is the straight run; without it a resume with a larger ``--steps`` stretches the schedule (README says so)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ssl_engine.testing import KIT_DATA, REFERENCE_TASK, run_checkpoint, run_cli

pytestmark = pytest.mark.usefixtures("reference_cli")  # the kit's task: the core's behaviour, no plugin needed

SMALL = ("--data", KIT_DATA, "--batch-size", "8", "--no-probe", "--workers", "0", "--log-every", "1")


def pretrain(run: Path, *options: str) -> None:
    result = run_cli("pretrain", "--task", REFERENCE_TASK, *SMALL, "--out", str(run), *options)
    assert result.exit_code == 0, result.output


def model_tensors(run: Path) -> dict[str, torch.Tensor]:
    saved = run_checkpoint(run)
    return {key: value for key, value in saved.tensors.items() if key.startswith(("model/", "task/", "optim/"))}


def test_a_pinned_schedule_makes_stop_and_resume_with_a_larger_budget_the_straight_run(tmp_path: Path) -> None:
    straight, resumed, stretched = tmp_path / "straight", tmp_path / "resumed", tmp_path / "stretched"
    pretrain(straight, "--steps", "6", "--schedule-steps", "6")
    pretrain(resumed, "--steps", "3", "--schedule-steps", "6")
    pretrain(resumed, "--resume", "--steps", "6")
    pretrain(stretched, "--steps", "3")
    pretrain(stretched, "--resume", "--steps", "6")
    expected = model_tensors(straight)
    got = model_tensors(resumed)
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[key], expected[key]) for key in expected)
    # Without the pin, the first three steps followed a 3-step schedule: another run.
    other = model_tensors(stretched)
    assert any(not torch.equal(other[key], expected[key]) for key in expected)


def test_a_schedule_shorter_than_the_budget_is_refused(tmp_path: Path) -> None:
    result = run_cli("pretrain", "--task", REFERENCE_TASK, *SMALL, "--steps", "6", "--schedule-steps", "4",
                     "--out", str(tmp_path / "run"))  # fmt: skip
    assert result.exit_code == 2
    assert "schedule_steps" in result.output and "(4)" in result.output and "(6)" in result.output
    assert not (tmp_path / "run").exists()
    pretrain(tmp_path / "pinned", "--steps", "3", "--schedule-steps", "4")
    beyond = run_cli("pretrain", "--out", str(tmp_path / "pinned"), "--resume", "--steps", "6")
    assert beyond.exit_code == 2 and "schedule_steps" in beyond.output
