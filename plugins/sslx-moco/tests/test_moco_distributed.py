"""MoCo on two processes (gloo, CPU, ``torch.multiprocessing``) trains what one process trains on the global batch.

Each rank joins the process group the way ``torchrun`` describes it (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``), builds the run with the engine's own ``build_run`` on half of every global batch, with batch-norm
statistics over the global batch (``--sync-bn``), and trains a few whole steps. v2: every rank pushes the keys of
both ranks, so the queue (16 keys, a global batch of 8: it wraps around on the third step) holds what one process's
holds; v3: the negatives are the gathered keys of the global batch. The query encoder, the key encoder (EMA), the
queue and every buffer end where one process with the whole batch ends, to float tolerance.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sslx_moco.task import MoCoTask

from ssl_engine.testing import assert_tensors_close, prepare, spawn_ranks, trained_state

WORLD = 2
GLOBAL_BATCH = 8
STEPS = 3
QUEUE = 16


def settings(version: int) -> dict[str, object]:
    return {"version": version, "queue_size": QUEUE, "momentum": 0.9}  # a fast key encoder: errors show at once


def train(out: Path, version: int, batch_size: int, sync_bn: bool) -> dict[str, torch.Tensor]:
    return trained_state(MoCoTask, out, steps=STEPS, batch_size=batch_size, settings=settings(version), sync_bn=sync_bn)


def rank_state(rank: int, out: Path, version: int) -> dict[str, torch.Tensor]:
    return train(out / "run", version, GLOBAL_BATCH // WORLD, sync_bn=True)


@pytest.mark.slow
@pytest.mark.parametrize("version", [2, 3])
def test_two_processes_train_what_one_process_trains_on_the_global_batch(tmp_path: Path, version: int) -> None:
    ranks = spawn_ranks(rank_state, tmp_path / "two", tmp_path / "two", version, world=WORLD, group=False)
    single = train(tmp_path / "one", version, GLOBAL_BATCH, sync_bn=False)
    assert [int(state.pop("world")) for state in ranks] == [WORLD, WORLD] and int(single.pop("world")) == 1
    untrained = prepare(MoCoTask, settings=settings(version)).trainer(tmp_path / "start", batch_size=GLOBAL_BATCH)
    start = untrained.model.state_tensors()
    for state in ranks:  # sums in another order: a few 1e-5 apart after 3 steps at t = 0.2
        assert_tensors_close(state, single, rtol=1e-4, atol=1e-4)
    # The comparison has teeth: the key encoder moved, and v2's queue was filled, wrapping around.
    moved = start["task/moco/key_projector.0.weight"] - single["task/moco/key_projector.0.weight"]
    assert moved.abs().max() > 1e-4
    if version == 2:
        assert int(single["task/moco/queue_next"]) == (STEPS * GLOBAL_BATCH) % QUEUE
        assert not torch.isclose(single["task/moco/queue"], start["task/moco/queue"]).all(dim=1).any()
    else:
        assert "task/moco/queue" not in single
