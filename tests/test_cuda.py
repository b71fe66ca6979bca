"""On a CUDA device (skipped without one; ``pytest -m cuda`` selects them): every installed task keeps the
conformance kit's contract on the GPU, ``sslx pretrain --device cuda`` trains, checkpoints and resumes exactly under
each precision (the scaler's state saved under ``16-mixed``) and with ``--compile``, and a GPU run's backbone and
probes load and run on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ssl_engine import load_backbone
from ssl_engine.plugins import get_host
from ssl_engine.testing import assert_resumes_exactly, check_pretext_task, pretrain_cli, run_checkpoint, run_cli
from ssl_engine.train.loop import SCALERS_KEY

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

REGISTRY = get_host().registry
TASKS = REGISTRY.names("task")
# As in the contract test: MAE needs a vision transformer's token interface.
BACKBONES: dict[str, str] = {"mae": "timm:vit_tiny_patch16_224?depth=2"}


@pytest.mark.parametrize("name", TASKS)
def test_every_task_keeps_the_contract_on_the_gpu(name: str) -> None:
    registered = REGISTRY.get("task", name)
    check_pretext_task(
        registered.obj,
        plugin=get_host().manager.get_plugin(registered.plugin),
        backbone=BACKBONES.get(name),
        device="cuda",
    )


@pytest.mark.parametrize("precision", ["32", "bf16-mixed", "16-mixed"])
@pytest.mark.parametrize("task", ["rotation", "simclr", "byol"])
def test_pretrain_on_the_gpu_resumes_exactly(tmp_path: Path, task: str, precision: str) -> None:
    if task not in TASKS:
        pytest.skip(f"task plugin {task} not installed")
    run = pretrain_cli(
        tmp_path, task, "--device", "cuda", "--precision", precision, "--steps", "4", "--checkpoint-every", "2"
    )
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    optimizer_state = json.loads(run_checkpoint(run).metadata["optim"])
    assert (SCALERS_KEY in optimizer_state) == (precision == "16-mixed")
    trainer = assert_resumes_exactly(run)
    assert next(trainer.model.parameters()).device.type == "cuda"


def test_compiled_run_on_the_gpu_trains_and_its_backbone_loads_on_the_cpu(tmp_path: Path) -> None:
    run = pretrain_cli(tmp_path, "rotation", "--device", "cuda", "--compile", "--steps", "6", "--checkpoint-every", "3")
    backbone = load_backbone(run, map_location="cpu")
    assert next(backbone.parameters()).device.type == "cpu"
    features = backbone(torch.rand(2, 3, 32, 32))
    assert features.ndim == 4 and torch.isfinite(features).all()
    result = run_cli("evaluate", str(run), "--protocol", "knn", "--device", "cuda")
    assert result.exit_code == 0, result.output
    report = json.loads(next(run.glob("eval-knn-*.json")).read_text())
    assert 0.0 <= report["accuracy"] <= 1.0
