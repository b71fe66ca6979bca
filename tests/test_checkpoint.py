"""Checkpoints: the safetensors layout round-trips modules, optimizers and RNG states; writes are atomic."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from ssl_engine.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    checkpoint_path,
    latest_checkpoint,
    load_module_state,
    load_optimizer_state,
    load_rng_state,
    module_tensors,
    optimizer_tensors,
    read_checkpoint,
    rng_tensors,
    write_atomic,
)
from ssl_engine.config import PretrainConfig, TaskSpec


def run_metadata(step: int, **fields: str) -> dict[str, str]:
    """The metadata fields every sslx checkpoint carries (``fields`` replace or add)."""
    config = PretrainConfig([TaskSpec("rotation")]).to_json()
    defaults = {"step": str(step), "image_size": "32", "config": config, "optim": "{}", "python_rng": "[]"}
    return defaults | fields


def trained_pair() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    optimizer = torch.optim.AdamW(net.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        net(torch.randn(8, 4)).square().mean().backward()
        optimizer.step()
    return net, optimizer


def test_round_trip_restores_modules_optimizer_and_rng(tmp_path: Path) -> None:
    net, optimizer = trained_pair()
    tensors = module_tensors("model", net.state_dict())
    optim_tensors, groups = optimizer_tensors("optim/main", optimizer)
    random_tensors, python_rng = rng_tensors()
    path = checkpoint_path(tmp_path, 3)
    write_atomic(
        path,
        tensors | optim_tensors | random_tensors,
        run_metadata(3, optim=json.dumps({"main": groups}), python_rng=python_rng),
    )
    expected_torch, expected_python = torch.rand(3), random.random()

    loaded = read_checkpoint(path)
    assert loaded.step == 3 and loaded.metadata["version"] == str(FORMAT_VERSION)
    fresh, fresh_optimizer = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3)), None
    load_module_state(fresh, loaded, "model")
    for a, b in zip(net.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    load_optimizer_state(fresh_optimizer, loaded, "main", "optim/main")
    for key, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            assert torch.equal(
                torch.as_tensor(value), torch.as_tensor(fresh_optimizer.state_dict()["state"][key][name])
            )
    load_rng_state(loaded)
    assert torch.equal(torch.rand(3), expected_torch) and random.random() == expected_python
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


def test_latest_ignores_temporary_files_and_orders_numerically(tmp_path: Path) -> None:
    for step in (9, 10):
        write_atomic(checkpoint_path(tmp_path, step), {"x": torch.zeros(1)}, run_metadata(step))
    (tmp_path / ".checkpoint-00000011.safetensors.tmp").write_bytes(b"partial")
    assert latest_checkpoint(tmp_path) == checkpoint_path(tmp_path, 10)


def test_foreign_or_corrupt_files_are_refused_by_name(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    foreign = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(1)}, str(foreign))
    with pytest.raises(CheckpointError, match="not an sslx checkpoint"):
        read_checkpoint(foreign)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="corrupt.safetensors"):
        read_checkpoint(corrupt)
