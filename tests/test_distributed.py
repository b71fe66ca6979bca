"""Two processes under ``torchrun`` (gloo, CPU) train what one process trains on the same global batch.

Each rank holds half of every global batch, draws the pseudo-labels of the whole batch and keeps its half,
normalises with the global batch statistics (``--sync-bn``), gathers SimCLR's negatives from both ranks, and
DDP averages the gradients: after a few steps the weights match one process's to float tolerance. Without
``--sync-bn`` they don't (each rank normalises with its own half), which shows the comparison can fail.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ssl_engine.checkpoint import checkpoint_paths, read_checkpoint
from tests.conftest import write_two_classes

pytestmark = pytest.mark.slow  # every test here runs end to end

STEPS = 4
GLOBAL_BATCH = 8


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_two_classes(tmp_path_factory.mktemp("data"), 16, size=16)


def pretrain(folder: Path, out: Path, processes: int, *extra: str) -> subprocess.CompletedProcess[str]:
    """``sslx pretrain`` in one process, or under ``torchrun`` with ``processes`` ranks sharing the global batch."""
    launcher = [sys.executable, "-m", "ssl_engine.cli"]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
                    "-m", "ssl_engine.cli"]  # fmt: skip
    command = [*launcher, "pretrain", "--task", "simclr", "--task", "rotation", "--data", str(folder),
               "--image-size", "16", "--batch-size", str(GLOBAL_BATCH // processes), "--steps", str(STEPS),
               "--checkpoint-every", "2", "--log-every", "1", "--workers", "0", "--no-probe", "--device", "cpu",
               "--out", str(out), *extra]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    checkpoint = read_checkpoint(checkpoint_paths(run)[-1])
    assert checkpoint.step == STEPS
    return {k: v for k, v in checkpoint.tensors.items() if k.startswith(("model/", "task/"))}


def largest_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[float, str]:
    assert a.keys() == b.keys()
    return max((float((a[k].double() - b[k].double()).abs().max()), k) for k in a if a[k].is_floating_point())


@pytest.fixture(scope="module")
def single(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    run = tmp_path_factory.mktemp("runs") / "single"
    pretrain(folder, run, 1)
    return final_weights(run)


def test_two_processes_with_sync_bn_train_what_one_process_trains(
    folder: Path, tmp_path: Path, single: dict[str, torch.Tensor]
) -> None:
    run = tmp_path / "two"
    result = pretrain(folder, run, 2, "--sync-bn")
    difference, where = largest_difference(final_weights(run), single)
    assert difference < 1e-4, f"{where} differs by {difference}"
    # Only rank 0 wrote the run directory and reported: each step logged once, one "finished" line.
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))
    assert result.stdout.count("finished") == 1
    assert result.stderr.count(f"step {STEPS}/{STEPS} ") == 1, "more than one progress display"

    # The control: without synchronised batch norm each rank normalises with its own half of the batch.
    unsynced = tmp_path / "unsynced"
    pretrain(folder, unsynced, 2)
    difference, _ = largest_difference(final_weights(unsynced), single)
    assert difference > 1e-3


def test_two_processes_resume_from_the_same_checkpoint(folder: Path, tmp_path: Path) -> None:
    run = tmp_path / "two"
    pretrain(folder, run, 2, "--sync-bn")
    expected = final_weights(run)
    # The run "died" after its step-2 checkpoint: the final one is gone, both ranks resume from step 2.
    checkpoint_paths(run)[-1].unlink()
    assert read_checkpoint(checkpoint_paths(run)[-1]).step == 2
    pretrain(folder, run, 2, "--sync-bn", "--resume")
    difference, where = largest_difference(final_weights(run), expected)
    assert difference == 0.0, f"{where} differs by {difference} after resuming"
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))


def test_sigterm_under_torchrun_stops_every_rank_at_one_step_with_a_checkpoint(folder: Path, tmp_path: Path) -> None:
    run = tmp_path / "stopped"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
               "ssl_engine.cli", "pretrain", "--task", "rotation", "--data", str(folder), "--image-size", "16",
               "--batch-size", "4", "--steps", "100000", "--checkpoint-every", "100000", "--log-every", "1",
               "--workers", "0", "--no-probe", "--device", "cpu", "--out", str(run)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 300
    while not (run / "metrics.jsonl").is_file() or len((run / "metrics.jsonl").read_text().splitlines()) < 3:
        assert time.monotonic() < deadline and process.poll() is None, "the run did not start"
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)  # torchrun passes it on to both ranks
    _, stderr = process.communicate(timeout=120)
    assert "stopped by SIGTERM" in stderr, stderr[-3000:]
    [checkpoint] = checkpoint_paths(run)
    stopped_at = read_checkpoint(checkpoint).step
    assert stopped_at >= 3
    resumed = pretrain_resume(folder, run, stopped_at + 2)
    assert read_checkpoint(checkpoint_paths(run)[-1]).step == stopped_at + 2, resumed.stderr[-2000:]


def pretrain_resume(folder: Path, run: Path, steps: int) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
               "ssl_engine.cli", "pretrain", "--out", str(run), "--resume", "--steps", str(steps)]  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result
