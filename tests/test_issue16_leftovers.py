"""Issue 16, what was left over: ``--data NAME`` that two distributions claim is refused naming both (it used to
say the name was unknown), and ``eval-*.json`` is written atomically, so a failing write keeps the previous one."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from ssl_engine.data.catalog import resolve_data
from ssl_engine.data.options import DataOptions
from ssl_engine.hookspecs import hookimpl
from ssl_engine.plugins import PluginHost
from ssl_engine.registry import NameConflictError, UnknownNameError
from tests.conftest import write_two_classes
from tests.test_plugins import make_distribution


def tiny_images(split: str, image_size: int, options: DataOptions) -> TensorDataset:
    """Eight random uint8 images with labels 0/1."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (8, 3, image_size, image_size), dtype=torch.uint8, generator=generator)
    return TensorDataset(images, torch.arange(8) % 2)


class ShapesImpostor:
    @hookimpl
    def register_datasets(self, register):  # type: ignore[no-untyped-def]
        register("shapes", tiny_images, help="not the embedded shapes")


class Tiles:
    @hookimpl
    def register_datasets(self, register):  # type: ignore[no-untyped-def]
        register("tiles", tiny_images, help="tiles")


def test_a_data_set_name_two_plugins_claim_is_refused_naming_both(tmp_path: Path) -> None:
    host = PluginHost.from_plugins([("impostor", ShapesImpostor())])
    with pytest.raises(NameConflictError) as refused:
        resolve_data("shapes", host.registry, DataOptions(None, False))
    message = str(refused.value)
    assert "plugin 'impostor'" in message and "plugin 'core' (sslx)" in message
    assert "SSLX_DISABLE_PLUGINS=impostor" in message
    # a folder of that name does not make the name usable: which data a run reads can't depend on the plugins
    (tmp_path / "shapes").mkdir()
    write_two_classes(tmp_path / "shapes", 2, size=8)
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(NameConflictError):
            resolve_data("shapes", host.registry, DataOptions(None, False))
    finally:
        os.chdir(cwd)
    # unclaimed names and paths still resolve as before
    alone = PluginHost.from_plugins([("tiles", Tiles())])
    assert resolve_data("tiles", alone.registry, DataOptions(None, False)).labelled
    with pytest.raises(UnknownNameError, match="unknown data set 'nothing-here'"):
        resolve_data("nothing-here", alone.registry, DataOptions(None, False))


TILES_PLUGIN = """
    import torch
    from torch.utils.data import TensorDataset
    from ssl_engine.hookspecs import hookimpl

    def tiles(split, image_size, options):
        images = torch.randint(0, 256, (8, 3, image_size, image_size), dtype=torch.uint8)
        return TensorDataset(images, torch.arange(8) % 2)

    @hookimpl
    def register_datasets(register):
        register("tiles", tiles, help="tiles")
"""


@pytest.mark.slow  # fresh processes, one of them trains
def test_pretrain_on_a_data_set_two_distributions_claim_exits_2_naming_both(tmp_path: Path, sslx) -> None:  # type: ignore[no-untyped-def]
    site = tmp_path / "site"
    site.mkdir()
    make_distribution(site, "sslx-tiles-a", "tilesa", "sslx_tiles_a_mod", TILES_PLUGIN)
    make_distribution(site, "sslx-tiles-b", "tilesb", "sslx_tiles_b_mod", TILES_PLUGIN)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *sys.path])}
    run = tmp_path / "run"
    args = ["pretrain", "--task", "rotation", "--data", "tiles", "--image-size", "16", "--batch-size", "4",
            "--steps", "1", "--no-probe", "--workers", "0", "--out", run]  # fmt: skip
    result = sslx(*args, env=env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    [error] = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert "dataset 'tiles' is registered by both" in error
    assert "(sslx-tiles-a)" in error and "(sslx-tiles-b)" in error and "SSLX_DISABLE_PLUGINS=tilesa" in error
    assert not run.exists()
    # once the user disables one, the name is the other's
    chosen = sslx(*args, env={**env, "SSLX_DISABLE_PLUGINS": "tilesb"})
    assert chosen.returncode == 0, chosen.stderr
    assert (run / "checkpoint-00000001.safetensors").is_file()


def limited_file_size(limit: int) -> None:
    """In the child: files can't grow past ``limit`` bytes (writes fail with EFBIG; Python ignores SIGXFSZ)."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@pytest.mark.slow  # trains, then evaluates in fresh processes
def test_a_failing_eval_json_write_keeps_the_previous_result_whole(invoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = write_two_classes(tmp_path / "data", 12, size=16)
    run = tmp_path / "run"
    trained = invoke("pretrain", "--task", "rotation", "--data", data, "--image-size", "16", "--batch-size", "8",
                     "--steps", "2", "--no-probe", "--workers", "0", "--out", run)  # fmt: skip
    assert trained.exit_code == 0, trained.output
    command = [sys.executable, "-m", "ssl_engine.cli", "evaluate", str(run), "--protocol", "knn", "--device", "cpu"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    [written] = run.glob("eval-knn-*.json")
    before = written.read_bytes()
    # The next result can't be written (files may not grow past 64 bytes): one line, exit 1, the old file whole.
    second = subprocess.run(
        [*command, "--set", "k=3"],
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=lambda: limited_file_size(64),
    )
    assert second.returncode == 1, second.stderr
    assert "Traceback" not in second.stderr
    assert [line for line in second.stderr.splitlines() if line.startswith("Error:")]
    assert written.read_bytes() == before
    assert [path.name for path in run.iterdir() if path.name.endswith(".tmp")] == []
