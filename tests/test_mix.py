"""Mix-and-match: rotation, jigsaw, SimCLR and the context encoder (with its discriminator) on one backbone.

The four tasks need four batch shapes (4 rotations, 9 tiles, 2 views, a masked image for a decoder) and one of
them brings an auxiliary module with its own optimizer; they train together, each loss is logged on its own, the
total is their weighted sum, and an interrupted run resumes to the same tensors as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from ssl_engine.checkpoint import checkpoint_paths, read_checkpoint
from ssl_engine.config import PretrainConfig, TaskSpec
from ssl_engine.plugins import get_host
from ssl_engine.run import build_run
from ssl_engine.testing import stop_after
from ssl_engine.train.loop import Trainer
from tests.conftest import write_two_classes

pytestmark = pytest.mark.slow  # every test here runs end to end

WEIGHTS = {"rotation": 1.0, "jigsaw": 0.5, "simclr": 1.0, "inpainting": 2.0}
IMAGE_SIZE = 48


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_two_classes(tmp_path_factory.mktemp("data"), 12, size=24)


def test_four_task_mix_from_the_cli_logs_each_loss_and_their_weighted_sum(invoke, folder: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run = tmp_path / "mix"
    tasks = [arg for name, weight in WEIGHTS.items() for arg in ("--task", f"{name}={weight:g}")]
    result = invoke(
        "pretrain", *tasks, "--set", "inpainting.adversarial=true", "--data", folder, "--image-size", IMAGE_SIZE,
        "--batch-size", "6", "--steps", "3", "--log-every", "1", "--workers", "0", "--no-probe", "--out", run,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3]
    for line in lines:
        for name in WEIGHTS:
            assert math.isfinite(line[f"{name}/loss"]), f"{name}'s loss is not logged on its own"
        weighted = sum(weight * line[f"{name}/loss"] for name, weight in WEIGHTS.items())
        assert line["loss"] == pytest.approx(weighted, rel=1e-5)
        assert "inpainting/adversarial" in line and "inpainting/discriminator" in line, sorted(line)
    [checkpoint] = checkpoint_paths(run)
    keys = read_checkpoint(checkpoint).tensors.keys()
    for name in WEIGHTS:
        assert any(key.startswith(f"task/{name}/") for key in keys), f"no head of {name} in the checkpoint"
    assert any(key.startswith("aux/inpainting/") for key in keys)
    assert any(key.startswith("optim/aux/inpainting") for key in keys), sorted(k for k in keys if "optim" in k)[:5]


def mixed_config(folder: Path) -> PretrainConfig:
    specs = [TaskSpec(name, weight) for name, weight in WEIGHTS.items()]
    specs[-1].settings["adversarial"] = True
    return PretrainConfig(specs, data=str(folder), image_size=IMAGE_SIZE, batch_size=6, steps=4, checkpoint_every=2,
                          log_every=1, workers=0, probe=False)  # fmt: skip


def final_tensors(run: Path) -> dict[str, torch.Tensor]:
    checkpoint = read_checkpoint(checkpoint_paths(run)[-1])
    assert checkpoint.step == 4
    return {k: v for k, v in checkpoint.tensors.items() if k.startswith(("model/", "task/", "aux/", "optim/"))}


def test_an_interrupted_four_task_mix_resumes_to_the_uninterrupted_runs_tensors(folder: Path, tmp_path: Path) -> None:
    registry = get_host().registry
    Trainer(build_run(mixed_config(folder), registry, tmp_path / "full")).train()
    expected = final_tensors(tmp_path / "full")
    assert any(key.startswith("aux/inpainting/") for key in expected), "the discriminator is not checkpointed"
    assert any(key.startswith("optim/aux/inpainting") for key in expected), "its optimizer is not checkpointed"

    out = tmp_path / "interrupted"
    config = mixed_config(folder)
    stop_after(Trainer(build_run(config, registry, out)), 2)  # the process "dies" after this checkpoint
    resumed = Trainer(build_run(config, registry, out, resume=True))
    assert resumed.step == 2
    resumed.train()
    got = final_tensors(out)
    assert got.keys() == expected.keys()
    differing = [key for key in expected if not torch.equal(got[key], expected[key])]
    assert not differing, f"resumed run differs in {differing[:5]}"
