"""``load_backbone`` reads a file written by ``sslx export`` as well as a run directory, with no task plugin
installed, for the torchvision layout (ResNets) and sslx's own (the small convnet)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssl_engine import load_backbone
from ssl_engine.checkpoint import CheckpointError
from ssl_engine.testing import KIT_DATA, REFERENCE_TASK, cli_plugins, pretrain_cli, run_cli

pytestmark = pytest.mark.usefixtures("reference_cli")  # the kit's task: the core's behaviour, no plugin needed


@pytest.fixture(scope="module", params=["smallconv", "resnet18"])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 1-step run of the kit's reference task with the backbone given, and its export."""
    root = tmp_path_factory.mktemp(request.param)
    out = root / "backbone.safetensors"
    with cli_plugins():
        run = pretrain_cli(root, REFERENCE_TASK, "--data", KIT_DATA, "--backbone", request.param, "--steps", 1,
                           "--batch-size", 4, "--image-size", 32, "--workers", 0)  # fmt: skip
        assert run_cli("export", run, "--out", out).exit_code == 0
    return run, out


@pytest.mark.slow
def test_an_exported_file_loads_the_same_backbone_as_its_run(exported: tuple[Path, Path]) -> None:
    run, out = exported
    from_run, from_file = load_backbone(run), load_backbone(out, map_location="cpu")
    assert type(from_run) is type(from_file) and not from_file.training
    expected = from_run.state_dict()
    assert from_file.state_dict().keys() == expected.keys()
    assert all(torch.equal(value, expected[key]) for key, value in from_file.state_dict().items())
    images = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(from_file(images), from_run.eval()(images))


@pytest.mark.slow
def test_an_export_loads_with_no_plugin_installed(exported: tuple[Path, Path]) -> None:
    _, out = exported
    code = f"from ssl_engine import load_backbone; print(load_backbone({str(out)!r}).feature_dim)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "SSLX_NO_PLUGINS": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) > 0


def test_a_file_that_is_not_an_export_is_refused_naming_it(tmp_path: Path) -> None:
    stray = tmp_path / "weights.safetensors"
    stray.write_bytes(b"\0" * 64)
    with pytest.raises(CheckpointError, match="weights.safetensors"):
        load_backbone(stray)
