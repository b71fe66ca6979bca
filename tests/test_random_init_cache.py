"""The random-init result of the closing probe is kept in the user cache (issue 21.15): hit the second time, missed
when a part of the key changes, recomputed when the entry is damaged, never half-written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from ssl_engine.cache import user_cache_dir
from ssl_engine.config import PretrainConfig, TaskSpec
from ssl_engine.data.catalog import resolve_data
from ssl_engine.data.options import DataOptions
from ssl_engine.eval.random_init_cache import RandomInitCache, RandomInitCacheWarning, random_init_key
from ssl_engine.task import Representation
from ssl_engine.testing import KIT_BACKBONE, KIT_DATA, REFERENCE_TASK, cli_plugins, run_cli
from ssl_engine.train.model import build_model

SIZES = {"train": 32, "val": 32, "test": 32}


def key_of(seed: int = 0, image_size: int = 16, backbone: str = KIT_BACKBONE, **changes: object) -> dict[str, object]:
    with cli_plugins() as host:
        config = PretrainConfig([TaskSpec(REFERENCE_TASK)], backbone=backbone, data=KIT_DATA, seed=seed)
        model = build_model(config, host.registry, image_size, seed=seed)
        source = resolve_data(KIT_DATA, host.registry, DataOptions())
    arguments: dict[str, object] = {"protocol": "linear", "seed": seed, "device": torch.device("cpu"),
                                    "backbone": backbone} | changes  # fmt: skip
    return random_init_key(Representation(model.backbone), source, SIZES, image_size, **arguments)  # type: ignore[arg-type]


def test_cache_folder_follows_sslx_cache_dir_then_xdg_then_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSLX_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert user_cache_dir() == tmp_path / "xdg" / "sslx"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert user_cache_dir() == tmp_path / "home" / ".cache" / "sslx"
    monkeypatch.setenv("SSLX_CACHE_DIR", str(tmp_path / "mine"))
    assert user_cache_dir() == tmp_path / "mine"
    assert RandomInitCache.default().folder == tmp_path / "mine" / "random-init"


def test_the_key_changes_with_seed_image_size_backbone_protocol_and_data_sizes() -> None:
    base = key_of()
    assert key_of() == base  # the same network and data: the same key
    assert key_of(seed=1)["weights"] != base["weights"]  # another initialisation
    for changed in (key_of(seed=1), key_of(image_size=24), key_of(protocol="knn"), key_of(options={"k": 5})):
        assert changed != base
        assert RandomInitCache(Path("c")).path(changed) != RandomInitCache(Path("c")).path(base)
    name = RandomInitCache(Path("c")).path(base).name
    assert name.startswith(f"linear-{KIT_DATA}-{KIT_BACKBONE}-16px-seed0-") and name.endswith(".json")


def test_store_then_load_and_a_damaged_or_foreign_entry_counts_as_absent(tmp_path: Path) -> None:
    cache, key = RandomInitCache(tmp_path / "random-init"), key_of()
    assert cache.load(key) is None
    path = cache.store(key, {"accuracy": 0.25, "protocol": "linear"}, 3.5)
    assert path is not None and path.parent == cache.folder
    assert [p.name for p in cache.folder.iterdir()] == [path.name]  # no temporary file left
    loaded = cache.load(key)
    assert loaded is not None and loaded.result["accuracy"] == 0.25 and loaded.seconds == 3.5
    for damage in (b"", b'{"key": ', b"\x00\xff", json.dumps({"key": key, "result": {"accuracy": "high"}}).encode(),
                   json.dumps({"key": key | {"seed": 7}, "result": {"accuracy": 0.5}}).encode()):  # fmt: skip
        path.write_bytes(damage)
        with pytest.warns(RandomInitCacheWarning, match="unreadable"):
            assert cache.load(key) is None


def test_a_cache_that_cannot_be_written_warns_and_the_run_goes_on(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.warns(RandomInitCacheWarning, match="could not cache"):
        assert RandomInitCache(blocker / "random-init").store(key_of(), {"accuracy": 0.5}, 1.0) is None


def probe(tmp_path: Path, name: str, *options: object) -> tuple[dict[str, object], str]:
    """``sslx pretrain`` with the closing probe on the kit's data: the run's probe.json and the command's stderr."""
    words = ("--data", KIT_DATA, "--backbone", KIT_BACKBONE, "--image-size", 16, "--steps", 1, "--batch-size", 8)
    with cli_plugins():
        result = run_cli("pretrain", "--task", REFERENCE_TASK, *words, *options, "--out", tmp_path / name)
    assert result.exit_code == 0, result.output
    return json.loads((tmp_path / name / "probe.json").read_text()), result.stderr


@pytest.mark.slow
def test_second_probe_reads_random_init_from_the_cache_and_a_new_key_misses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSLX_CACHE_DIR", str(tmp_path / "cache"))
    first, said = probe(tmp_path, "a")
    assert first["random_init_cache"]["hit"] is False  # type: ignore[index]
    entry = Path(first["random_init_cache"]["path"])  # type: ignore[index]
    assert entry.parent == tmp_path / "cache" / "random-init" and "random init: not in the cache yet" in said
    os.utime(entry, (1_000_000, 1_000_000))  # an old mtime: rewriting the entry would show

    second, said = probe(tmp_path, "b")
    assert second["random_init_cache"] == {"path": str(entry), "hit": True}
    assert second["random_init"] == first["random_init"] and entry.stat().st_mtime == 1_000_000
    assert f"random init: read from the cache ({entry}" in said
    assert "random init: extracting features" not in said and "pretrained: extracting features" in said

    other_seed, said = probe(tmp_path, "c", "--seed", 1)
    assert other_seed["random_init_cache"]["hit"] is False and "random init: extracting features" in said  # type: ignore[index]
    other_size, _ = probe(tmp_path, "d", "--image-size", 24)
    assert other_size["random_init_cache"]["hit"] is False  # type: ignore[index]
    assert len(list((tmp_path / "cache" / "random-init").iterdir())) == 3


@pytest.mark.slow
def test_a_damaged_entry_is_computed_again_and_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSLX_CACHE_DIR", str(tmp_path / "cache"))
    first, _ = probe(tmp_path, "a")
    entry = Path(first["random_init_cache"]["path"])  # type: ignore[index]
    entry.write_bytes(entry.read_bytes()[:40])  # cut mid-write by something other than sslx
    second, said = probe(tmp_path, "b")
    assert f"warning: cached random-init result {entry} is unreadable" in said
    assert second["random_init_cache"]["hit"] is False and "random init: extracting features" in said  # type: ignore[index]
    assert second["random_init"] == first["random_init"]
    assert json.loads(entry.read_text())["result"] == first["random_init"]  # rewritten whole


def test_the_key_changes_when_the_data_changes_but_not_its_name_or_sizes(tmp_path: Path) -> None:
    """A folder whose files are replaced by others (same names, same counts) gets another key."""
    from tests.conftest import write_two_classes

    folder = write_two_classes(tmp_path / "data", 6, size=16)
    with cli_plugins() as host:
        config = PretrainConfig([TaskSpec(REFERENCE_TASK)], backbone=KIT_BACKBONE, data=str(folder), seed=0)
        representation = Representation(build_model(config, host.registry, 16, seed=0).backbone)

        def key() -> dict[str, object]:
            source = resolve_data(str(folder), host.registry, DataOptions())
            sizes = {split: len(source.split(split, 16)) for split in ("train", "val", "test")}  # type: ignore[arg-type]
            return random_init_key(representation, source, sizes, 16, protocol="linear", seed=0,
                                   device=torch.device("cpu"))  # fmt: skip

        before = key()
        assert key() == before
        for path in sorted(folder.rglob("*.png")):
            path.write_bytes(sorted(folder.rglob("*.png"))[0].read_bytes())  # every file now the same picture
        after = key()
    assert after["splits"] == before["splits"] and after["data"] == before["data"]
    assert after["samples"] != before["samples"] and after != before
