"""``--precision``: bf16 and fp16 autocast (with a gradient scaler) run on the CPU too, so the GPU code paths are
exercised without a GPU; the scaler's state is checkpointed and a resume is exact; bf16 falls back where missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ssl_engine.checkpoint import checkpoint_paths, read_checkpoint
from ssl_engine.run import build_run
from ssl_engine.run_directory import write_config
from ssl_engine.testing import REFERENCE_TASK, ReferenceTask, prepare
from ssl_engine.train.loop import SCALERS_KEY, Trainer
from ssl_engine.train.precision import resolve_precision


class PlainTask(ReferenceTask):
    name = "plain"


def test_auto_is_float32_on_the_cpu_and_bf16_falls_back_to_fp16_on_an_old_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_precision("auto", torch.device("cpu")).name == "32"
    assert resolve_precision("bf16-mixed", torch.device("cpu")).dtype == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    with pytest.warns(UserWarning, match="16-mixed"):
        fallback = resolve_precision("bf16-mixed", torch.device("cuda"))
    assert fallback.name == "16-mixed" and fallback.scaled
    assert resolve_precision("auto", torch.device("cuda")).name == "16-mixed"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert resolve_precision("auto", torch.device("cuda")).name == "bf16-mixed"


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_trains_on_the_cpu_in_the_autocast_dtype(tmp_path: Path, precision: str) -> None:
    trainer = prepare(PlainTask).trainer(tmp_path / "run", steps=2, precision=precision)
    seen: list[torch.dtype] = []
    head = trainer.model.task_modules["plain"]["head"]
    head.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    trainer.train()
    expected = torch.bfloat16 if precision == "bf16-mixed" else torch.float16
    assert seen and set(seen) == {expected}
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    metadata = json.loads(read_checkpoint(checkpoint_paths(tmp_path / "run")[-1]).metadata["optim"])
    assert (SCALERS_KEY in metadata) == (precision == "16-mixed")


@pytest.mark.slow
def test_a_fp16_run_resumes_bit_for_bit_with_its_gradient_scaler(tmp_path: Path) -> None:
    straight = prepare(PlainTask).trainer(tmp_path / "straight", steps=4, precision="16-mixed")
    straight.train()
    stopped = prepare(PlainTask).trainer(tmp_path / "stopped", steps=4, checkpoint_every=1, precision="16-mixed")
    write_config(stopped.out, stopped.config)
    for images, _ in stopped.stream.batches(0):
        if stopped.step == 2:
            break
        stopped.device_step(images)
    stopped.checkpoint()
    resumed = Trainer(build_run(stopped.config, stopped.run.registry, stopped.out, resume=True))
    assert resumed.scalers["main"].get_scale() == stopped.scalers["main"].get_scale()
    resumed.train()
    for key, value in straight.model.state_tensors().items():
        assert torch.equal(value, resumed.model.state_tensors()[key]), key


@pytest.mark.usefixtures("reference_cli")
def test_precision_is_a_checked_option(invoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = invoke("pretrain", "--task", REFERENCE_TASK, "--precision", "fp8", "--out", tmp_path / "run")
    assert result.exit_code == 2 and "--precision" in result.stderr
