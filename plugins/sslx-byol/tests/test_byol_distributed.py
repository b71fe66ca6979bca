"""BYOL on two processes (gloo, CPU, ``torch.multiprocessing``) trains what one process trains on the global batch.

Each rank joins the process group the way ``torchrun`` describes it (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``), builds the run with the engine's own ``build_run`` on half of every global batch, with batch-norm
statistics over the global batch (``--sync-bn``, as the paper trains), and trains a few whole steps: the online
network, the target network (its EMA after every step) and every buffer end where one process with the whole
batch ends, to float tolerance.
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
from sslx_byol.task import BYOLTask

from ssl_engine.testing import prepare

WORLD = 2
GLOBAL_BATCH = 8
STEPS = 3
SETTINGS = {"base_momentum": 0.9}  # a fast-moving target, so a wrong update shows after a few steps


def train(out: Path, batch_size: int, sync_bn: bool) -> dict[str, torch.Tensor]:
    """Every tensor the checkpoint keeps after ``STEPS`` steps, and ``world``: the processes that trained."""
    trainer = prepare(BYOLTask, settings=SETTINGS).trainer(
        out, steps=STEPS, batch_size=batch_size, sync_bn=sync_bn, log_every=1, probe=False
    )
    trainer.train()
    state = {key: value.detach().cpu().clone() for key, value in trainer.model.state_tensors().items()}
    return state | {"world": torch.tensor(trainer.world.size)}


def run_rank(rank: int, port: int, out: Path) -> None:
    os.environ.update(
        {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "LOCAL_RANK": str(rank),
         "WORLD_SIZE": str(WORLD), "OMP_NUM_THREADS": "1"}
    )  # fmt: skip
    torch.set_num_threads(1)
    try:
        state = train(out / "run", GLOBAL_BATCH // WORLD, sync_bn=True)
        torch.save(state, out / f"rank{rank}.pt")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def spawn_ranks(out: Path, deadline_s: float = 300.0) -> list[dict[str, torch.Tensor]]:
    context = mp.spawn(run_rank, args=(free_port(), out), nprocs=WORLD, join=False)
    deadline = time.monotonic() + deadline_s
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise TimeoutError(f"the {WORLD} ranks did not finish in {deadline_s:.0f} s")
    return [torch.load(out / f"rank{rank}.pt") for rank in range(WORLD)]


@pytest.mark.slow
def test_two_processes_train_what_one_process_trains_on_the_global_batch(tmp_path: Path) -> None:
    ranks = spawn_ranks(tmp_path / "two")
    single = train(tmp_path / "one", GLOBAL_BATCH, sync_bn=False)
    assert any(key.startswith("task/byol/target_backbone.") for key in single)
    start = prepare(BYOLTask, settings=SETTINGS).build()[0].state_tensors()
    assert [int(state["world"]) for state in ranks] == [WORLD, WORLD] and int(single.pop("world")) == 1
    for state in ranks:
        state.pop("world")
        assert state.keys() == single.keys()
        for key, value in single.items():
            if value.is_floating_point():
                torch.testing.assert_close(state[key], value, rtol=1e-4, atol=1e-5, msg=key)
            else:
                assert torch.equal(state[key], value), key
    # The comparison has teeth: the target network moved during these steps.
    moved = start["task/byol/target_projector.0.weight"] - single["task/byol/target_projector.0.weight"]
    assert moved.abs().max() > 1e-4
