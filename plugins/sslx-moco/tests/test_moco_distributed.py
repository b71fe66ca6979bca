"""MoCo on two processes (gloo, CPU, ``torch.multiprocessing``) trains what one process trains on the global batch.

Each rank joins the process group the way ``torchrun`` describes it (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``), builds the run with the engine's own ``build_run`` on half of every global batch, with batch-norm
statistics over the global batch (``--sync-bn``), and trains a few whole steps. v2: every rank pushes the keys of
both ranks, so the queue (16 keys, a global batch of 8: it wraps around on the third step) holds what one process's
holds; v3: the negatives are the gathered keys of the global batch. The query encoder, the key encoder (EMA), the
queue and every buffer end where one process with the whole batch ends, to float tolerance.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sslx_moco.task import MoCoTask

from ssl_engine.testing import prepare

WORLD = 2
GLOBAL_BATCH = 8
STEPS = 3
QUEUE = 16


def settings(version: int) -> dict[str, object]:
    return {"version": version, "queue_size": QUEUE, "momentum": 0.9}  # a fast key encoder: errors show at once


def train(out: Path, version: int, batch_size: int, sync_bn: bool) -> dict[str, torch.Tensor]:
    """Every tensor the checkpoint keeps after ``STEPS`` steps, and ``world``: the processes that trained."""
    trainer = prepare(MoCoTask, settings=settings(version)).trainer(
        out, steps=STEPS, batch_size=batch_size, sync_bn=sync_bn, log_every=1, probe=False
    )
    trainer.train()
    state = {key: value.detach().cpu().clone() for key, value in trainer.model.state_tensors().items()}
    return state | {"world": torch.tensor(trainer.world.size)}


def run_rank(rank: int, port: int, out: Path, version: int) -> None:
    os.environ.update(
        {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "LOCAL_RANK": str(rank),
         "WORLD_SIZE": str(WORLD), "OMP_NUM_THREADS": "1"}
    )  # fmt: skip
    torch.set_num_threads(1)
    try:
        state = train(out / "run", version, GLOBAL_BATCH // WORLD, sync_bn=True)
        torch.save(state, out / f"rank{rank}.pt")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def spawn_ranks(out: Path, version: int, deadline_s: float = 300.0) -> list[dict[str, torch.Tensor]]:
    context = mp.spawn(run_rank, args=(free_port(), out, version), nprocs=WORLD, join=False)
    deadline = time.monotonic() + deadline_s
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise TimeoutError(f"the {WORLD} ranks did not finish in {deadline_s:.0f} s")
    return [torch.load(out / f"rank{rank}.pt") for rank in range(WORLD)]


@pytest.mark.slow
@pytest.mark.parametrize("version", [2, 3])
def test_two_processes_train_what_one_process_trains_on_the_global_batch(tmp_path: Path, version: int) -> None:
    ranks = spawn_ranks(tmp_path / "two", version)
    single = train(tmp_path / "one", version, GLOBAL_BATCH, sync_bn=False)
    assert [int(state.pop("world")) for state in ranks] == [WORLD, WORLD] and int(single.pop("world")) == 1
    untrained = prepare(MoCoTask, settings=settings(version)).trainer(tmp_path / "start", batch_size=GLOBAL_BATCH)
    start = untrained.model.state_tensors()
    for state in ranks:
        assert state.keys() == single.keys()
        for key, value in single.items():
            if value.is_floating_point():  # sums in another order: a few 1e-5 apart after 3 steps at t = 0.2
                torch.testing.assert_close(state[key], value, rtol=1e-4, atol=1e-4, msg=key)
            else:
                assert torch.equal(state[key], value), key
    # The comparison has teeth: the key encoder moved, and v2's queue was filled, wrapping around.
    moved = start["task/moco/key_projector.0.weight"] - single["task/moco/key_projector.0.weight"]
    assert moved.abs().max() > 1e-4
    if version == 2:
        assert int(single["task/moco/queue_next"]) == (STEPS * GLOBAL_BATCH) % QUEUE
        assert not torch.isclose(single["task/moco/queue"], start["task/moco/queue"]).all(dim=1).any()
    else:
        assert "task/moco/queue" not in single
