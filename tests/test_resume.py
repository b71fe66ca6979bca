"""Exact resume after a crash, interruption by signals, damaged checkpoints, and only safetensors read."""

from __future__ import annotations

import json
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ssl_engine.checkpoint import checkpoint_paths, read_checkpoint
from ssl_engine.config import PretrainConfig, TaskSpec
from ssl_engine.data import file_backed
from ssl_engine.data.batches import BatchStream
from ssl_engine.run import build_run
from ssl_engine.testing import REFERENCE_TASK, ReferenceTask, prepare, stop_after
from ssl_engine.train import step as step_module
from ssl_engine.train.loop import Trainer
from tests.conftest import write_two_classes

pytestmark = pytest.mark.slow  # every test here runs end to end

STEPS = 12


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_two_classes(tmp_path_factory.mktemp("data"), 24, size=16)


def run_args(folder: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "ssl_engine.cli", "pretrain", "--task", "rotation", "--data", str(folder),
            "--image-size", "16", "--batch-size", "8", "--steps", str(STEPS), "--checkpoint-every", "1",
            "--log-every", "1", "--no-probe", "--workers", "0", "--out", str(out)]  # fmt: skip


def weights(run: Path) -> dict[str, torch.Tensor]:
    checkpoint = read_checkpoint(checkpoint_paths(run)[-1])
    assert checkpoint.step == STEPS
    return {k: v for k, v in checkpoint.tensors.items() if k.startswith(("model/", "task/", "optim/"))}


def test_sigkill_at_random_moments_then_resume_equals_uninterrupted_run(folder: Path, tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    subprocess.run(run_args(folder, reference), check=True, capture_output=True, timeout=300)
    expected = weights(reference)
    killed = 0
    for seed in range(3):
        run = tmp_path / f"killed{seed}"
        process = subprocess.Popen(run_args(folder, run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while not checkpoint_paths(run) if run.exists() else True:
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)
        time.sleep(random.Random(seed).uniform(0.0, 1.5))  # lands mid-step or mid-write
        process.kill()
        killed += process.wait() == -signal.SIGKILL
        resumed = subprocess.run([*run_args(folder, run), "--resume"], capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stderr
        got = weights(run)
        assert got.keys() == expected.keys()
        assert all(torch.equal(got[key], expected[key]) for key in expected), f"seed {seed} diverged"
        steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert steps == list(range(1, STEPS + 1))
    assert killed >= 1, "no run was actually interrupted; the test proved nothing"


def small_config(folder: Path) -> PretrainConfig:
    """6 steps of the kit's reference task (in :data:`REGISTRY`) on ``folder``, a checkpoint every 3."""
    return PretrainConfig([TaskSpec(REFERENCE_TASK)], data=str(folder), image_size=16, batch_size=8, steps=6,
                          checkpoint_every=3, workers=0, probe=False)  # fmt: skip


REGISTRY = prepare(ReferenceTask).registry  # the core and the kit's reference task: no plugin needed


def train_in_process(folder: Path, out: Path) -> dict[str, torch.Tensor]:
    """Train 3 of 6 steps and checkpoint, "crash", resume in a new Trainer and finish; the final weights."""
    config = small_config(folder)
    stop_after(Trainer(build_run(config, REGISTRY, out)), 3)
    trainer = Trainer(build_run(config, REGISTRY, out, resume=True))
    assert trainer.step == 3
    trainer.train()
    return {key: value.detach().clone() for key, value in trainer.model.state_dict().items()}


def test_negative_controls_resume_without_data_position_or_random_streams_diverges(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uninterrupted = Trainer(build_run(small_config(folder), REGISTRY, tmp_path / "full"))
    uninterrupted.train()
    expected = {key: value.detach().clone() for key, value in uninterrupted.model.state_dict().items()}

    def same(state: dict[str, torch.Tensor]) -> bool:
        return all(torch.equal(state[key], expected[key]) for key in expected)

    assert same(train_in_process(folder, tmp_path / "exact"))

    # Control 1: the data order position is not restored (the stream restarts at the epoch's beginning).
    original_batches = BatchStream.batches
    monkeypatch.setattr(BatchStream, "batches", lambda self, start_step=0: original_batches(self, 0))
    assert not same(train_in_process(folder, tmp_path / "no-data-position"))
    monkeypatch.undo()

    # Control 2: the pseudo-label/augmentation random streams restart instead of continuing from the step.
    original_random = step_module.BatchRandom
    monkeypatch.setattr(
        step_module, "BatchRandom", lambda seed, step, stream, *a, **k: original_random(seed, step % 3, stream, *a, **k)
    )
    # A folder's random-resized crops are drawn in the data workers, keyed by (seed, step, slot) the same way.
    original_crop_random = file_backed.crop_random
    monkeypatch.setattr(file_backed, "crop_random", lambda seed, step, slot: original_crop_random(seed, step % 3, slot))
    assert not same(train_in_process(folder, tmp_path / "no-random-position"))


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(folder: Path, tmp_path: Path) -> None:
    run = tmp_path / "R"
    args = [a if a != str(STEPS) else "100000" for a in run_args(folder, run)]
    args[args.index("--checkpoint-every") + 1] = "100000"
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run / "metrics.jsonl").exists() or not (run / "metrics.jsonl").read_text():
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "stopped by SIGTERM" in stderr and "--resume" in stderr and "Traceback" not in stderr
    [checkpoint] = checkpoint_paths(run)
    assert read_checkpoint(checkpoint).step >= 1


def test_corrupted_latest_checkpoint_falls_back_and_only_safetensors_is_read(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "R"
    config = small_config(folder)
    config.checkpoint_every = 2
    config.steps = 4
    Trainer(build_run(config, REGISTRY, run)).train()
    newest = checkpoint_paths(run)[-1]
    newest.write_bytes(newest.read_bytes()[:100])  # truncated, as by a full disk

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("pickle must never be used to read anything")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    config.steps = 5
    with pytest.warns(UserWarning, match=newest.name):
        trainer = Trainer(build_run(config, REGISTRY, run, resume=True))
    assert trainer.step == 2
    trainer.train()
    assert read_checkpoint(checkpoint_paths(run)[-1]).step == 5


def test_non_finite_loss_names_task_and_step_and_saves_nothing(folder: Path, tmp_path: Path) -> None:
    run = tmp_path / "R"
    args = run_args(folder, run) + ["--lr", "1e30"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "non-finite loss of task 'rotation' at step" in result.stderr
    for path in checkpoint_paths(run):
        assert all(
            torch.isfinite(value).all() for value in read_checkpoint(path).tensors.values() if value.is_floating_point()
        )
