"""Damaged and crafted checkpoints: every reader refuses them with a CheckpointError naming the file and the problem
(before allocating what a header declares), resume-style scans fall back past them, and the CLI exits 2 with one
line. All on real files."""

from __future__ import annotations

import json
import shutil
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner, Result
from safetensors import safe_open
from safetensors.torch import save_file

import ssl_engine.checkpoint as checkpoint_module
from ssl_engine.checkpoint import (
    MAX_HEADER_BYTES,
    MAX_METADATA_BYTES,
    CheckpointError,
    CheckpointScan,
    checkpoint_path,
    checkpoint_paths,
    latest_complete_checkpoint,
    load_module_state,
    load_optimizer_state,
    load_rng_state,
    module_tensors,
    optimizer_tensors,
    prune_checkpoints,
    read_checkpoint,
    rng_tensors,
    write_atomic,
    write_latest,
)
from ssl_engine.cli import main
from ssl_engine.run import load_run
from ssl_engine.testing import KIT_DATA, REFERENCE_TASK, cli_plugins, pretrain_cli
from tests.test_checkpoint import run_metadata


def small_checkpoint(path: Path, step: int = 1, **fields: str) -> Path:
    """A checkpoint of a ``Linear(4, 3)`` under ``model/`` with the metadata every sslx checkpoint has."""
    torch.manual_seed(step)
    tensors = module_tensors("model", torch.nn.Linear(4, 3).state_dict()) | rng_tensors()[0]
    write_atomic(path, tensors, run_metadata(step, **fields))
    return path


def raw_parts(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Metadata and tensors as stored, without any check."""
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata()), {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118


def rewrite(
    path: Path,
    *,
    metadata: dict[str, str] | None = None,
    drop: tuple[str, ...] = (),
    tensors: dict[str, torch.Tensor] | None = None,
) -> None:
    """Craft ``path``: change or drop metadata fields, replace tensors; the checksum is recomputed (as a forger
    would), so what a reader refuses is the field itself."""
    old_metadata, old_tensors = raw_parts(path)
    new_metadata = {k: v for k, v in old_metadata.items() if k not in drop and k != "checksum"} | (metadata or {})
    write_atomic(path, old_tensors | (tensors or {}), new_metadata)
    if drop:  # write_atomic always adds these two; a crafted file may lack them
        stored, stored_tensors = raw_parts(path)
        save_file(stored_tensors, str(path), metadata={k: v for k, v in stored.items() if k not in drop})


def write_raw(path: Path, header: bytes, data: bytes = b"") -> Path:
    """A safetensors file byte by byte: 8-byte little-endian header length, JSON header, data."""
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


def flip_bit_in_tensor(path: Path, key: str) -> None:
    """Flip one bit in the middle of tensor ``key``'s stored bytes."""
    raw = bytearray(path.read_bytes())
    (header_size,) = struct.unpack("<Q", raw[:8])
    begin, end = json.loads(raw[8 : 8 + header_size])[key]["data_offsets"]
    raw[8 + header_size + (begin + end) // 2] ^= 0x10
    path.write_bytes(bytes(raw))


@pytest.fixture
def no_tensor_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything opens the tensors (where memory the header declares would be allocated)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("tensors were opened before the header was refused")

    monkeypatch.setattr(checkpoint_module, "safe_open", refuse)


# --- checksum ------------------------------------------------------------------------------------------------------
def test_a_bit_flip_inside_tensor_data_is_detected_and_resume_falls_back(tmp_path: Path) -> None:
    older = small_checkpoint(checkpoint_path(tmp_path, 1), step=1)
    newest = small_checkpoint(checkpoint_path(tmp_path, 2), step=2)
    flip_bit_in_tensor(newest, "model/weight")
    with pytest.raises(CheckpointError, match=f"{newest.name}: checksum mismatch: tensor data damaged"):
        read_checkpoint(newest)
    with pytest.warns(UserWarning, match=f"{newest.name}: checksum mismatch"):
        found = latest_complete_checkpoint(tmp_path)
    assert found is not None and found.path == older and found.step == 1


def test_the_checksum_covers_names_and_metadata_too(tmp_path: Path) -> None:
    path = small_checkpoint(tmp_path / "c.safetensors")
    metadata, tensors = raw_parts(path)
    renamed = {("model/bias2" if key == "model/bias" else key): value for key, value in tensors.items()}
    save_file(renamed, str(path), metadata=metadata)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        read_checkpoint(path)
    save_file(tensors, str(path), metadata=metadata | {"step": "7"})
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        read_checkpoint(path)


def test_version_1_files_without_a_checksum_still_read_but_version_2_needs_one(tmp_path: Path) -> None:
    path = small_checkpoint(tmp_path / "c.safetensors")
    metadata, tensors = raw_parts(path)
    legacy = {k: v for k, v in metadata.items() if k != "checksum"} | {"version": "1"}
    save_file(tensors, str(path), metadata=legacy)
    assert read_checkpoint(path).step == 1
    save_file(tensors, str(path), metadata=legacy | {"version": "2"})
    with pytest.raises(CheckpointError, match="'checksum' missing"):
        read_checkpoint(path)
    save_file(tensors, str(path), metadata=legacy | {"version": "3"})
    with pytest.raises(CheckpointError, match="version 3 is newer"):
        read_checkpoint(path)


# --- metadata ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field", ["config", "optim", "step", "image_size", "python_rng", "version"])
def test_missing_metadata_is_refused_by_name(tmp_path: Path, field: str) -> None:
    path = small_checkpoint(tmp_path / "c.safetensors")
    rewrite(path, drop=(field,))
    with pytest.raises(CheckpointError, match=f"c.safetensors: metadata lacks '{field}'"):
        read_checkpoint(path)


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("step", "1.5", "not an integer"),
        ("step", "x", "not an integer"),
        ("step", "-1", "not an integer"),
        ("step", "٣", "not an integer"),  # a digit int() accepts, but not ASCII
        ("image_size", "abc", "not an integer"),
        ("image_size", "0", r"outside \[1, 4096\]"),
        ("image_size", "100000", r"outside \[1, 4096\]"),
        ("version", "two", "not an integer"),
        ("version", "0", "outside"),
        ("config", "{not json", "not valid JSON"),
        ("config", "[1, 2]", "not a JSON object"),
        ("config", json.dumps({"tasks": {"rotation": {}}, "batch_size": "many"}), "'batch_size'"),
        ("config", json.dumps({"tasks": {"rotation": {}}, "colour": 1}), "unknown field 'colour'"),
        ("config", json.dumps({"tasks": {"rotation": 5}}), "config"),
        ("config", json.dumps({"tasks": {}}), "names no task"),
        ("optim", "{", "'optim' is not valid JSON"),
        ("optim", "[]", "'optim' is not a table"),
        ("python_rng", "nope", "'python_rng' is not valid JSON"),
    ],
)
def test_ill_formed_metadata_is_refused_by_name(tmp_path: Path, field: str, value: str, problem: str) -> None:
    path = small_checkpoint(tmp_path / "c.safetensors")
    rewrite(path, metadata={field: value})
    with pytest.raises(CheckpointError, match=f"c.safetensors: .*{problem}"):
        read_checkpoint(path)


# --- the header's bounds -------------------------------------------------------------------------------------------
def header_metadata(**fields: str) -> dict[str, str]:
    """Complete metadata for a hand-made header (the checksum is never reached)."""
    return run_metadata(1, **fields) | {"format": "sslx.checkpoint", "version": "2", "checksum": "crc32:00000000"}


def test_image_size_100000_is_refused_before_any_tensor_is_read(tmp_path: Path, no_tensor_reads: None) -> None:
    path = tmp_path / "c.safetensors"
    save_file({"x": torch.zeros(1)}, str(path), metadata=header_metadata(image_size="100000"))
    with pytest.raises(CheckpointError, match=r"'image_size' is 100000, outside"):
        read_checkpoint(path)


def test_a_header_of_600k_empty_tensors_is_refused_fast(tmp_path: Path, no_tensor_reads: None) -> None:
    entry = '{"dtype":"F32","shape":[0],"data_offsets":[0,0]}'
    entries = ",".join(f'"t{index}":{entry}' for index in range(600_000))
    header = ('{"__metadata__":' + json.dumps(header_metadata()) + "," + entries + "}").encode()
    path = write_raw(tmp_path / "many.safetensors", header)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="many.safetensors: header declares more than 100000 tensors"):
        read_checkpoint(path)
    assert time.perf_counter() - start < 1.0


def test_oversized_headers_and_metadata_and_offsets_past_the_end_are_refused(
    tmp_path: Path, no_tensor_reads: None
) -> None:
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{}")
    with pytest.raises(CheckpointError, match="huge.safetensors: header of .* bytes refused"):
        read_checkpoint(huge)
    short = write_raw(tmp_path / "short.safetensors", b"{}")
    short.write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(CheckpointError, match="short.safetensors: truncated"):
        read_checkpoint(short)
    fat = json.dumps({"__metadata__": header_metadata() | {"notes": "x" * (MAX_METADATA_BYTES + 1)}}).encode()
    with pytest.raises(CheckpointError, match="fat.safetensors: header metadata of .* refused"):
        read_checkpoint(write_raw(tmp_path / "fat.safetensors", fat))
    # 1000 GiB of float32 declared, 4 bytes present.
    past = {"__metadata__": header_metadata(), "x": {"dtype": "F32", "shape": [2**38], "data_offsets": [0, 2**40]}}
    with pytest.raises(CheckpointError, match="past.safetensors: tensor 'x' declares data at .* outside"):
        read_checkpoint(write_raw(tmp_path / "past.safetensors", json.dumps(past).encode(), b"\0" * 4))


def test_files_that_are_not_checkpoints_are_refused_by_name(tmp_path: Path) -> None:
    for name, content in [("empty", b""), ("three", b"abc"), ("list", struct.pack("<Q", 2) + b"[]")]:
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match=f"{name}.safetensors"):
            read_checkpoint(path)
    folder = tmp_path / "checkpoint-00000005.safetensors"
    folder.mkdir()
    with pytest.raises(CheckpointError, match="checkpoint-00000005.safetensors: not a file"):
        read_checkpoint(folder)


# --- run directories -----------------------------------------------------------------------------------------------
def test_stray_names_and_directories_named_like_checkpoints_are_ignored(tmp_path: Path) -> None:
    good = small_checkpoint(checkpoint_path(tmp_path, 3), step=3)
    shutil.copy(good, tmp_path / "checkpoint-abc.safetensors")
    (tmp_path / "checkpoint-00000005.safetensors").mkdir()
    (tmp_path / "checkpoint--1.safetensors").write_bytes(b"")
    assert checkpoint_paths(tmp_path) == [good]
    loaded = latest_complete_checkpoint(tmp_path)
    assert loaded is not None and loaded.path == good
    prune_checkpoints(tmp_path, 1)
    assert good.exists() and (tmp_path / "checkpoint-00000005.safetensors").is_dir()


def test_prune_keeps_the_newest_whatever_keep_says(tmp_path: Path) -> None:
    paths = [small_checkpoint(checkpoint_path(tmp_path, step), step=step) for step in (1, 2, 3)]
    prune_checkpoints(tmp_path, -1)
    assert checkpoint_paths(tmp_path) == paths[-1:]


def test_a_scan_falls_back_and_lists_every_unusable_file_and_why(tmp_path: Path) -> None:
    oldest = small_checkpoint(checkpoint_path(tmp_path, 1), step=1)
    middle = small_checkpoint(checkpoint_path(tmp_path, 2), step=2)
    newest = small_checkpoint(checkpoint_path(tmp_path, 3), step=3)
    rewrite(middle, drop=("config",))
    flip_bit_in_tensor(newest, "model/weight")
    scan = CheckpointScan(tmp_path)
    readable = iter(scan)
    first = next(readable)
    assert first.path == oldest
    assert [(s.path, "checksum mismatch" in s.reason or "lacks 'config'" in s.reason) for s in scan.skipped] == [
        (newest, True),
        (middle, True),
    ]
    scan.skip(first, CheckpointError(f"checkpoint {oldest}: model/ lacks 'extra'"))
    assert next(readable, None) is None
    message = str(scan.failure())
    assert message.splitlines()[0] == f"run directory {tmp_path} holds no usable checkpoint:"
    assert [line.split(": ", 1)[0].strip() for line in message.splitlines()[1:]] == [
        f"checkpoint {p}" for p in (newest, middle, oldest)
    ]
    assert str(CheckpointScan(tmp_path / "nothing").failure()).endswith("holds no checkpoint")


def test_write_latest_is_atomic_and_leaves_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_latest(tmp_path, checkpoint_path(tmp_path, 4))
    assert (tmp_path / "latest").read_text() == "checkpoint-00000004.safetensors\n"
    write_latest(tmp_path, checkpoint_path(tmp_path, 8))
    assert (tmp_path / "latest").read_text() == "checkpoint-00000008.safetensors\n"
    assert [p.name for p in tmp_path.iterdir()] == ["latest"]

    def crash(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_module.os, "replace", crash)
    with pytest.raises(OSError, match="No space left"):
        write_latest(tmp_path, checkpoint_path(tmp_path, 12))
    assert (tmp_path / "latest").read_text() == "checkpoint-00000008.safetensors\n"  # the old one, whole
    assert [p.name for p in tmp_path.iterdir()] == ["latest"]


# --- loading into modules ------------------------------------------------------------------------------------------
def test_load_module_state_names_file_prefix_and_first_bad_key(tmp_path: Path) -> None:
    path = small_checkpoint(tmp_path / "c.safetensors")
    rewrite(path, tensors={"model/weight": torch.zeros(3, 5)})
    loaded = read_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"c.safetensors: model/weight has shape \(3, 5\), .* expects \(3, 4\)"):
        load_module_state(torch.nn.Linear(4, 3), loaded, "model")
    with pytest.raises(CheckpointError, match="c.safetensors: model/ lacks '0.bias'"):
        load_module_state(torch.nn.Sequential(torch.nn.Linear(4, 3)), loaded, "model")
    with pytest.raises(CheckpointError, match="c.safetensors: model/ has 'bias', which the model lacks"):
        load_module_state(torch.nn.Linear(4, 3, bias=False), loaded, "model")


def test_optimizer_and_rng_states_that_do_not_fit_are_checkpoint_errors(tmp_path: Path) -> None:
    net = torch.nn.Linear(4, 3)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    tensors, groups = optimizer_tensors("optim/main", optimizer)
    path = tmp_path / "c.safetensors"
    write_atomic(path, tensors, run_metadata(1, optim=json.dumps({"main": groups})))
    loaded = read_checkpoint(path)
    other = torch.optim.SGD(torch.nn.Linear(4, 3, bias=False).parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(CheckpointError, match="c.safetensors: state of optimizer 'main' does not load"):
        load_optimizer_state(other, loaded, "main", "optim/main")
    with pytest.raises(CheckpointError, match="c.safetensors: no state of optimizer 'aux'"):
        load_optimizer_state(optimizer, loaded, "aux", "optim/aux")
    with pytest.raises(CheckpointError, match="c.safetensors: RNG state does not load"):
        load_rng_state(loaded)  # no rng/torch tensor, python_rng "[]"


# --- whole runs: load_run and the CLI --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 2-step run of the kit's reference task with a checkpoint after each step (read with ``reference_cli``)."""
    run = tmp_path_factory.mktemp("trained") / "R"
    args = ["--data", KIT_DATA, "--steps", 2, "--image-size", 32, "--workers", 0, "--checkpoint-every", 1, "--out", run]
    with cli_plugins():
        pretrain_cli(run.parent, REFERENCE_TASK, *args)
    assert [p.name for p in checkpoint_paths(run)][-2:] == [checkpoint_path(run, s).name for s in (1, 2)]
    return run


@pytest.fixture
def run_copy(trained_run: Path, tmp_path: Path, reference_cli: None) -> Path:
    copy = tmp_path / "R"
    shutil.copytree(trained_run, copy)
    return copy


def wrong_shape(path: Path) -> None:
    """Give the first 2-d ``model/`` tensor one row too many."""
    _, tensors = raw_parts(path)
    key = next(k for k, v in sorted(tensors.items()) if k.startswith("model/") and v.ndim >= 2)
    value = tensors[key]
    rewrite(path, tensors={key: torch.zeros(value.shape[0] + 1, *value.shape[1:])})


def test_load_run_falls_back_past_a_wrong_shaped_checkpoint(run_copy: Path) -> None:
    wrong_shape(checkpoint_path(run_copy, 2))
    with pytest.warns(UserWarning, match=r"checkpoint-00000002.safetensors: model/.* has shape"):
        run = load_run(run_copy)
    assert run.checkpoint.step == 1


def test_load_run_with_only_damaged_checkpoints_lists_each_file_and_why(run_copy: Path) -> None:
    wrong_shape(checkpoint_path(run_copy, 2))
    rewrite(checkpoint_path(run_copy, 1), drop=("optim",))
    with pytest.raises(CheckpointError) as caught:
        load_run(run_copy)
    lines = str(caught.value).splitlines()
    assert lines[0] == f"run directory {run_copy} holds no usable checkpoint:"
    assert "checkpoint-00000002.safetensors: model/" in lines[1] and "has shape" in lines[1]
    assert "checkpoint-00000001.safetensors: metadata lacks 'optim'" in lines[2]


Craft = Callable[[Path], Any]
CRAFTS: dict[str, Craft] = {
    "missing config": lambda path: rewrite(path, drop=("config",)),
    "step not an integer": lambda path: rewrite(path, metadata={"step": "2.0"}),
    "image size 100000": lambda path: rewrite(path, metadata={"image_size": "100000"}),
    "bit flip": lambda path: flip_bit_in_tensor(path, min(k for k in raw_parts(path)[1] if k.startswith("model/"))),
    "wrong shape": wrong_shape,
}
COMMANDS = {
    "evaluate": ["evaluate", "{run}", "--protocol", "knn"],
    "export": ["export", "{run}", "--out", "{run}/exported.safetensors"],
    "show": ["show", "{run}"],
}


@pytest.mark.parametrize("craft", list(CRAFTS))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_cli_refuses_a_run_whose_only_checkpoint_is_crafted(run_copy: Path, command: str, craft: str) -> None:
    checkpoint_path(run_copy, 1).unlink()
    crafted = checkpoint_path(run_copy, 2)
    CRAFTS[craft](crafted)
    args = [arg.format(run=run_copy) for arg in COMMANDS[command]]
    start = time.perf_counter()
    result: Result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if not line.startswith("warning:")]
    assert len(errors) == 1 and errors[0].startswith("Error: ") and str(crafted) in errors[0], result.stderr
    assert "Traceback" not in result.output
    assert time.perf_counter() - start < 30
    assert not (run_copy / "exported.safetensors").exists() and not list(run_copy.glob("show-*.png"))
