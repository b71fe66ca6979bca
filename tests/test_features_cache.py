"""The frozen-features cache under RUN_DIR/features/: written atomically, and a damaged one is extracted again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ssl_engine.eval.features import FeatureCacheWarning, load_cached_features, save_cached_features
from ssl_engine.testing import REFERENCE_TASK
from tests.conftest import write_two_classes


@pytest.mark.slow
@pytest.mark.usefixtures("reference_cli")
def test_truncated_cache_is_extracted_again_rewritten_and_gives_the_same_accuracy(invoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data, run = write_two_classes(tmp_path / "data", per_class=10, size=32), tmp_path / "R"
    trained = invoke("pretrain", "--task", REFERENCE_TASK, "--data", data, "--steps", "2", "--batch-size", "8",
                     "--image-size", "32", "--no-probe", "--workers", "0", "--out", run)  # fmt: skip
    assert trained.exit_code == 0, trained.output
    first = invoke("evaluate", run, "--json")
    assert first.exit_code == 0, first.output
    caches = sorted((run / "features").iterdir())
    assert caches and all(not path.name.startswith(".") for path in caches)  # no temporary file left behind
    victim = caches[0]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    second = invoke("evaluate", run, "--json")
    assert second.exit_code == 0, second.output
    assert json.loads(second.stdout)["accuracy"] == json.loads(first.stdout)["accuracy"]
    assert f"warning: cached features {victim}" in second.stderr and "extracting them again" in second.stderr
    assert set(load_file(str(victim))) == {"features", "labels"}  # rewritten whole
    third = invoke("evaluate", run, "--json")
    assert third.exit_code == 0 and "cached features" not in third.stderr


@pytest.mark.parametrize(
    "damage",
    [b"", b"\xff" * 8 + b"{}", "half", "wrong contents"],
    ids=["empty", "huge header length", "truncated", "wrong contents"],
)
def test_unreadable_cache_counts_as_absent(tmp_path: Path, damage: bytes | str) -> None:
    path = tmp_path / "features-x-test.safetensors"
    save_cached_features(path, torch.randn(6, 4), torch.arange(6))
    if damage == "half":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "wrong contents":
        save_file({"features": torch.randn(6, 4), "labels": torch.arange(5)}, str(path))
    else:
        assert isinstance(damage, bytes)
        path.write_bytes(damage)
    with pytest.warns(FeatureCacheWarning, match="extracting them again"):
        assert load_cached_features(path) is None
    assert load_cached_features(tmp_path / "absent.safetensors") is None


def test_cache_write_that_fails_leaves_the_previous_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "features-x-test.safetensors"
    save_cached_features(path, torch.zeros(3, 2), torch.arange(3))

    def full_disk(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("ssl_engine.eval.features.os.fsync", full_disk)
    with pytest.warns(FeatureCacheWarning, match="No space left"):
        save_cached_features(path, torch.ones(3, 2), torch.arange(3))
    cached = load_cached_features(path)
    assert cached is not None and bool((cached[0] == 0).all())
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
