"""BYOL on two processes (gloo, CPU, ``torch.multiprocessing``) trains what one process trains on the global batch.

Each rank joins the process group the way ``torchrun`` describes it (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``), builds the run with the engine's own ``build_run`` on half of every global batch, with batch-norm
statistics over the global batch (``--sync-bn``, as the paper trains), and trains a few whole steps: the online
network, the target network (its EMA after every step) and every buffer end where one process with the whole
batch ends, to float tolerance.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sslx_byol.task import BYOLTask

from ssl_engine.testing import assert_tensors_close, prepare, spawn_ranks, trained_state

WORLD = 2
GLOBAL_BATCH = 8
STEPS = 3
SETTINGS = {"base_momentum": 0.9}  # a fast-moving target, so a wrong update shows after a few steps


def train(out: Path, batch_size: int, sync_bn: bool) -> dict[str, torch.Tensor]:
    return trained_state(BYOLTask, out, steps=STEPS, batch_size=batch_size, settings=SETTINGS, sync_bn=sync_bn)


def rank_state(rank: int, out: Path) -> dict[str, torch.Tensor]:
    return train(out / "run", GLOBAL_BATCH // WORLD, sync_bn=True)


@pytest.mark.slow
def test_two_processes_train_what_one_process_trains_on_the_global_batch(tmp_path: Path) -> None:
    ranks = spawn_ranks(rank_state, tmp_path / "two", tmp_path / "two", world=WORLD, group=False)
    single = train(tmp_path / "one", GLOBAL_BATCH, sync_bn=False)
    assert any(key.startswith("task/byol/target_backbone.") for key in single)
    start = prepare(BYOLTask, settings=SETTINGS).build()[0].state_tensors()
    assert [int(state.pop("world")) for state in ranks] == [WORLD, WORLD] and int(single.pop("world")) == 1
    for state in ranks:
        assert_tensors_close(state, single, rtol=1e-4, atol=1e-5)
    # The comparison has teeth: the target network moved during these steps.
    moved = start["task/byol/target_projector.0.weight"] - single["task/byol/target_projector.0.weight"]
    assert moved.abs().max() > 1e-4
