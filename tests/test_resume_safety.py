"""No silent restarts, no poisoned checkpoints, one line for I/O errors and for plugins that raise.

Each test here failed before its fix: a resume with no usable checkpoint started again from step 0 and overwrote the
damaged files, a checkpoint could hold NaN weights, a full disk was a traceback, a task's exception did not name its
plugin, and two identical runs wrote different checkpoint files.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from ssl_engine import checkpoint as checkpoint_module
from ssl_engine.checkpoint import checkpoint_paths, read_checkpoint
from ssl_engine.plugin_failure import PluginCodeError
from ssl_engine.testing import REFERENCE_TASK, ReferenceTask, cli_plugins, prepare, run_cli
from tests.conftest import write_two_classes
from tests.test_plugins import make_distribution

STEPS = 4
pytestmark = pytest.mark.usefixtures("reference_cli")  # the kit's task: the core's behaviour, no plugin needed


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_two_classes(tmp_path_factory.mktemp("data"), 16, size=16)


def pretrain_args(folder: Path, run: Path, steps: int = STEPS) -> list[str]:
    return ["pretrain", "--task", REFERENCE_TASK, "--data", str(folder), "--image-size", "16", "--batch-size", "8",
            "--steps", str(steps), "--checkpoint-every", "1", "--log-every", "1", "--no-probe", "--workers", "0",
            "--out", str(run)]  # fmt: skip


@pytest.fixture(scope="module")
def finished(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 4-step run with a checkpoint at every step (the newest 3 kept)."""
    run = tmp_path_factory.mktemp("runs") / "finished"
    with cli_plugins():
        result = run_cli(*pretrain_args(folder, run))
    assert result.exit_code == 0, result.output
    return run


def copy_of(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / run.name
    shutil.copytree(run, target)
    return target


def snapshot(run: Path) -> dict[str, str]:
    """Every file under ``run`` and a hash of its bytes."""
    return {
        str(path.relative_to(run)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(run.rglob("*"))
        if path.is_file()
    }


def metric_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_resume_before_the_first_checkpoint_says_so_and_keeps_no_stale_metrics(
    invoke, finished: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    run = copy_of(finished, tmp_path)
    for path in checkpoint_paths(run):  # as if killed before its first checkpoint was written
        path.unlink()
    (run / "latest").unlink()
    result = invoke("pretrain", "--out", run, "--resume")
    assert result.exit_code == 0, result.output
    assert "holds no checkpoint yet" in result.stderr and "step 0" in result.stderr, result.stderr
    assert metric_steps(run) == list(range(1, STEPS + 1))  # no line twice


def test_resume_with_every_checkpoint_damaged_is_refused_and_touches_nothing(
    invoke, finished: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    run = copy_of(finished, tmp_path)
    damaged = checkpoint_paths(run)
    assert len(damaged) == 3
    for path in damaged:
        path.write_bytes(path.read_bytes()[:200])
    before = snapshot(run)
    result = invoke("pretrain", "--out", run, "--resume", "--steps", "6")
    assert result.exit_code == 2, result.output
    for path in damaged:
        assert path.name in result.stderr
    assert "--restart" in result.stderr and "Traceback" not in result.stderr
    assert snapshot(run) == before

    restarted = invoke("pretrain", "--out", run, "--resume", "--restart", "--steps", "2")
    assert restarted.exit_code == 0, restarted.output
    assert "starts again from step 0" in restarted.stderr
    assert sorted(p.name for p in (run / "damaged").iterdir()) == [p.name for p in damaged]  # kept, set aside
    assert read_checkpoint(checkpoint_paths(run)[-1]).step == 2
    assert metric_steps(run) == [1, 2]


@pytest.mark.parametrize("content", ["", "# nothing\n", "steps = [\n"])
def test_resume_with_an_emptied_or_broken_config_file_names_it_and_touches_nothing(
    invoke, finished: Path, tmp_path: Path, content: str
) -> None:  # type: ignore[no-untyped-def]
    run = copy_of(finished, tmp_path)
    (run / "config.toml").write_text(content)
    before = snapshot(run)
    result = invoke("pretrain", "--out", run, "--resume", "--steps", "6")
    assert result.exit_code == 2, result.output
    assert str(run / "config.toml") in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert snapshot(run) == before


def test_restart_needs_resume(invoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = invoke("pretrain", "--task", REFERENCE_TASK, "--restart", "--out", tmp_path / "run")
    assert result.exit_code == 2 and "--restart goes with --resume" in result.stderr


def test_a_checkpoint_that_does_not_fit_the_model_is_skipped_on_resume(invoke, finished: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run = copy_of(finished, tmp_path)
    newest = checkpoint_paths(run)[-1]
    loaded = read_checkpoint(newest)
    key = next(k for k in loaded.tensors if k.startswith("model/") and k.endswith("weight"))
    tensors = dict(loaded.tensors)
    tensors[key] = torch.zeros(3, 3)  # well-formed file, wrong shape for this model
    checkpoint_module.write_atomic(newest, tensors, loaded.metadata)
    result = invoke("pretrain", "--out", run, "--resume", "--steps", str(STEPS + 1))
    assert result.exit_code == 0, result.output
    assert newest.name in result.stderr and key in result.stderr, result.stderr
    assert (run / "damaged" / newest.name).exists()
    assert read_checkpoint(checkpoint_paths(run)[-1]).step == STEPS + 1


class PlainTask(ReferenceTask):
    """The reference task under a name of its own (the kit registers the reference task beside it)."""

    name = "plain"


def test_a_poisoned_state_is_never_checkpointed_and_the_last_good_one_is_named(tmp_path: Path) -> None:
    trainer = prepare(PlainTask).trainer(tmp_path / "run", steps=4, checkpoint_every=2)
    trainer.train()
    written = checkpoint_paths(tmp_path / "run")
    norm = next(m for m in trainer.model.backbone.modules() if isinstance(m, nn.BatchNorm2d))
    assert norm.running_var is not None
    norm.running_var[0] = float("nan")  # poisoned, while every loss so far was finite
    with pytest.raises(FloatingPointError) as raised:
        trainer.checkpoint()
    message = str(raised.value)
    assert "running_var" in message and "no checkpoint was written" in message
    assert f"last good checkpoint is {written[-1]}" in message
    assert checkpoint_paths(tmp_path / "run") == written


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_last_good_checkpoint(
    invoke,
    folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    real_save = checkpoint_module.save_file
    calls = []

    def fill_the_disk(tensors: dict[str, torch.Tensor], filename: str, metadata: dict[str, str]) -> None:
        calls.append(filename)
        if len(calls) < 3:
            return real_save(tensors, filename, metadata=metadata)
        Path(filename).write_bytes(b"\0" * 1000)  # part of it made it to the disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    monkeypatch.setattr(checkpoint_module, "save_file", fill_the_disk)
    run = tmp_path / "run"
    result = invoke(*pretrain_args(folder, run))
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(lines) == 1 and "No space left on device" in lines[0], result.stderr
    assert "checkpoint-00000003.safetensors" in lines[0] and "checkpoint-00000002.safetensors" in lines[0]
    assert "Traceback" not in result.stderr
    assert [p.name for p in checkpoint_paths(run)] == [
        "checkpoint-00000001.safetensors",
        "checkpoint-00000002.safetensors",
    ]
    assert (run / "latest").read_text().strip() == "checkpoint-00000002.safetensors"
    assert read_checkpoint(run / "checkpoint-00000002.safetensors").step == 2
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    resumed = invoke("pretrain", "--out", run, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert read_checkpoint(checkpoint_paths(run)[-1]).step == STEPS


def test_unusable_output_paths_are_one_line_and_exit_2(invoke, finished: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = invoke("pretrain", "--task", REFERENCE_TASK, "--steps", "1", "--out", blocker / "run")
    assert result.exit_code == 2 and "cannot use run directory" in result.stderr, result.output
    assert str(blocker) in result.stderr and "Traceback" not in result.stderr
    shown = invoke("show", finished, "--task", REFERENCE_TASK, "--out", blocker / "picture.png")
    assert shown.exit_code == 2 and str(blocker / "picture.png") in shown.stderr, shown.output
    exported = invoke("export", finished, "--out", blocker / "backbone.safetensors")
    assert exported.exit_code == 2 and str(blocker / "backbone.safetensors") in exported.stderr, exported.output


def test_evaluate_refuses_out_of_range_protocol_options(invoke, finished: Path) -> None:  # type: ignore[no-untyped-def]
    for option, named in (("k=0", "k"), ("temperature=-1", "temperature"), ("k=x", "k")):
        result = invoke("evaluate", finished, "--protocol", "knn", "--set", option)
        assert result.exit_code == 2 and f"evaluation option {named}" in result.stderr, result.output
    result = invoke("evaluate", finished, "--protocol", "finetune", "--set", "epochs=0")
    assert result.exit_code == 2 and "epochs" in result.stderr, result.output
    result = invoke("evaluate", finished, "--protocol", "finetune", "--set", "lr=-0.1")
    assert result.exit_code == 2 and "lr" in result.stderr, result.output


def test_identical_runs_write_byte_identical_checkpoints(invoke, folder: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for name in "AB":
        assert invoke(*pretrain_args(folder, tmp_path / name, steps=2)).exit_code == 0
    a, b = (checkpoint_paths(tmp_path / name)[-1] for name in "AB")
    assert a.read_bytes() == b.read_bytes()


class FailingTask(ReferenceTask):
    """The reference task, whose pseudo-labels raise on the second step."""

    name = "failing"

    calls = 0

    def pseudo_labels(self, images, random):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls > 1:
            raise ValueError("the pseudo-label table ran out")
        return super().pseudo_labels(images, random)


def test_an_exception_in_task_code_names_the_task_and_its_plugin(tmp_path: Path) -> None:
    trainer = prepare(FailingTask).trainer(tmp_path / "run", steps=3)
    with pytest.raises(PluginCodeError) as raised:
        trainer.train()
    message = str(raised.value)
    assert "task 'failing'" in message and "pseudo_labels" in message and "the pseudo-label table ran out" in message
    assert isinstance(raised.value.__cause__, ValueError)


BROKEN_PLUGIN = """
from torch import nn
from ssl_engine.testing import ReferenceTask
from ssl_engine.hookspecs import hookimpl


class BrokenTask(ReferenceTask):
    name = "broken"

    def forward(self, backbone, modules, aux, batch):
        raise KeyError("head_that_is_not_there")


class NoHeads(ReferenceTask):
    name = "noheads"

    def build_modules(self):
        return None


@hookimpl
def register_tasks(register):
    register(BrokenTask)
    register(NoHeads)
"""


@pytest.mark.slow
@pytest.mark.parametrize("task", ["broken", "noheads"])
def test_plugin_failures_through_the_cli_are_one_line_naming_the_distribution(tmp_path: Path, sslx, task: str) -> None:  # type: ignore[no-untyped-def]
    make_distribution(tmp_path, "sslx-broken", "broken", "sslx_broken_plugin", BROKEN_PLUGIN)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    args = ["pretrain", "--task", task, "--steps", "2", "--batch-size", "8", "--image-size", "32", "--no-probe",
            "--workers", "0"]  # fmt: skip
    result = sslx(*args, "--out", tmp_path / "run", env=env)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"task '{task}' from plugin 'broken' (distribution sslx-broken)" in result.stderr, result.stderr
    assert "SSLX_DEBUG=1" in result.stderr
    debug = sslx("--debug", *args, "--out", tmp_path / "debug", env=env)
    assert debug.returncode == 1 and "Traceback" in debug.stderr, debug.stderr


def test_checkpoints_and_exports_follow_the_users_umask(invoke, finished: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from ssl_engine.atomic_files import current_umask

    expected = 0o666 & ~current_umask()
    assert all(path.stat().st_mode & 0o777 == expected for path in checkpoint_paths(finished))
    exported = invoke("export", finished, "--out", tmp_path / "backbone.safetensors")
    assert exported.exit_code == 0, exported.output
    assert (tmp_path / "backbone.safetensors").stat().st_mode & 0o777 == expected
