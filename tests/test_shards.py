"""WebDataset tar shards: written from a folder, read by offset, split across ranks and workers, ordered by
(seed, epoch), resumed exactly; bad shards give one clear line."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_engine.data.batches import BatchStream
from ssl_engine.data.catalog import resolve_data
from ssl_engine.data.options import DataError, DataOptions
from ssl_engine.data.shards import ShardWarning, index_shards, looks_like_shards
from ssl_engine.plugins import get_host
from tests.conftest import write_tar

pytest.importorskip("webdataset")
REGISTRY = get_host().registry


def labelled_folder(root: Path, per_class: int = 20) -> Path:
    """Two classes; each image's red channel is its number, so a batch says which samples it holds."""
    for label in range(2):
        folder = root / f"c{label}"
        folder.mkdir(parents=True)
        for index in range(per_class):
            number = label * per_class + index
            pixels = np.full((24, 30, 3), (number, 128, 255 * label), np.uint8)
            Image.fromarray(pixels).save(folder / f"{number:03d}.png")
    return root


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    from click.testing import CliRunner

    from ssl_engine.cli import main

    root = tmp_path_factory.mktemp("shards")
    folder = labelled_folder(root / "folder")
    result = CliRunner().invoke(main, ["shard", str(folder), "--out", str(root / "out"), "--shard-size", "7"])
    assert result.exit_code == 0, result.output
    assert "train: 32 samples" in result.output and "--data" in result.output
    return root / "out", str(root / "out" / "train-{000000..000004}.tar")


def numbers(images: torch.Tensor) -> list[int]:
    """The sample numbers of a batch of evaluation or crop views (the red channel, constant per image)."""
    return images[:, 0].flatten(1).median(1).values.tolist()


def test_shards_keep_labels_and_split_like_the_folder(shards: tuple[Path, str]) -> None:
    out, pattern = shards
    assert looks_like_shards(pattern) and (out / "classes.txt").read_text() == "c0\nc1\n"
    source = resolve_data(pattern, REGISTRY, DataOptions())
    assert source.labelled and source.file_backed
    train, val, test = (source.split(name, 16) for name in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (32, 4, 4) and train.classes == ["c0", "c1"]
    for index in range(len(train)):
        image, label = train[index]
        assert image.shape == (3, 16, 16) and label == int(numbers(image[None])[0] >= 20)
    seen = {n for split in (train, val, test) for i in range(len(split)) for n in numbers(split[i][0][None])}
    assert seen == set(range(40))


def test_an_epoch_reads_every_sample_once_in_a_seeded_order_and_resumes_exactly(shards: tuple[Path, str]) -> None:
    _, pattern = shards
    train = resolve_data(pattern, REGISTRY, DataOptions()).split("train", 16)
    stream = BatchStream.for_dataset(train, 8, seed=4, workers=2)
    batches = stream.batches(0)
    first = [next(batches) for _ in range(8)]  # two epochs of 4 steps
    epoch = [n for images, _ in first[:4] for n in numbers(images)]
    assert len(epoch) == 32 and len(set(epoch)) == 32
    resumed = stream.batches(3)
    for images, labels in first[3:]:
        again, again_labels = next(resumed)
        assert torch.equal(images, again) and torch.equal(labels, again_labels)
    other = BatchStream.for_dataset(train, 8, seed=5, workers=0).batches(0)
    assert [n for images, _ in (next(other) for _ in range(4)) for n in numbers(images)] != epoch
    assert not torch.equal(train.epoch_order(4, 0), train.epoch_order(4, 1))


def test_pretrain_and_evaluate_on_shards(invoke, shards: tuple[Path, str], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, pattern = shards
    run = tmp_path / "R"
    result = invoke("pretrain", "--task", "rotation", "--data", pattern, "--image-size", "16", "--batch-size", "8",
                    "--steps", "3", "--workers", "0", "--out", run)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "pretrained rotation" in result.output  # the closing probe read the val and test shards


def png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((12, 12, 3), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_bad_shards_are_named_and_skipped_or_refused(tmp_path: Path) -> None:
    good = {f"{i:03d}.png": png(i) for i in range(6)} | {f"{i:03d}.cls": b"0" for i in range(6)}
    write_tar(tmp_path / "s-0.tar", good)
    (tmp_path / "s-1.tar").write_bytes(b"")  # empty
    write_tar(tmp_path / "s-2.tar", {"010.png": png(10), "010.cls": b"1", "011.cls": b"1"})  # 011 has no image
    write_tar(tmp_path / "s-3.tar", {f"{i:03d}.png": png(i) for i in range(20, 26)})
    whole = (tmp_path / "s-3.tar").read_bytes()
    (tmp_path / "s-3.tar").write_bytes(whole[: len(whole) // 2])  # truncated mid-member
    write_tar(tmp_path / "s-4.tar", {"030.png": b"", "030.cls": b"1", "031.png": png(31), "031.cls": b"1"})
    with pytest.warns(ShardWarning) as caught:
        index = index_shards(str(tmp_path / "s-{0..4}.tar"))
    message = " ".join(str(w.message) for w in caught)
    assert "s-1.tar is empty" in message and "without an image" in message and "s-3.tar is truncated" in message
    assert 9 <= len(index) < 6 + 1 + 6 + 2  # the complete samples of the truncated shard are kept
    with pytest.raises(DataError, match="matches no file"):
        index_shards(str(tmp_path / "nothing-{0..3}.tar"))
    with pytest.raises(DataError, match="2 of the 3 shards"):
        index_shards(str(tmp_path / "s-{0,7,8}.tar"))
    with pytest.raises(DataError, match="hold no sample"), pytest.warns(ShardWarning):
        index_shards(str(tmp_path / "s-1.tar"))
    (tmp_path / "not.tar").write_bytes(b"this is not a tar file" * 40)
    with pytest.raises(DataError, match="hold no sample"), pytest.warns(ShardWarning, match="not a tar"):
        index_shards(str(tmp_path / "not.tar"))


def test_zero_byte_image_in_a_shard_is_a_counted_skip(invoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    members = {f"{i:03d}.png": png(i) for i in range(12)} | {f"{i:03d}.cls": str(i % 2).encode() for i in range(12)}
    members["005.png"] = b""
    write_tar(tmp_path / "train-0.tar", members)
    result = invoke("pretrain", "--task", "rotation", "--data", tmp_path / "train-0.tar", "--image-size", "16",
                    "--batch-size", "4", "--steps", "6", "--workers", "0", "--no-probe",
                    "--out", tmp_path / "R")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "train-0.tar:005" in result.output and "Traceback" not in result.output


def test_pretrain_refuses_a_pattern_matching_nothing(invoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = invoke(
        "pretrain", "--task", "rotation", "--data", str(tmp_path / "x-{000..009}.tar"), "--out", tmp_path / "R"
    )
    assert result.exit_code == 2 and "matches no file" in result.output and not (tmp_path / "R").exists()


RANK_SCRIPT = """
import json, os, sys
from ssl_engine.data.batches import BatchStream
from ssl_engine.data.catalog import resolve_data
from ssl_engine.data.options import DataOptions
from ssl_engine.distributed import init_from_env, barrier, shutdown
from ssl_engine.plugins import get_host

world = init_from_env("cpu")  # gloo
train = resolve_data(sys.argv[1], get_host().registry, DataOptions()).split("train", 16)
stream = BatchStream.for_dataset(train, 4, seed=11, workers=2, rank=world.rank, world=world.size)
batches = stream.batches(0)
seen = []
for step in range(2 * stream.steps_per_epoch):
    images, _ = next(batches)
    seen.append([int(v) for v in images[:, 0].flatten(1).median(1).values])
with open(os.path.join(sys.argv[2], f"rank{world.rank}.json"), "w") as handle:
    json.dump({"seen": seen, "steps": stream.steps_per_epoch}, handle)
barrier(world)
shutdown(world)
"""


@pytest.mark.slow
def test_two_processes_under_torchrun_see_each_sample_once_per_epoch(shards: tuple[Path, str], tmp_path: Path) -> None:
    _, pattern = shards
    script = tmp_path / "ranks.py"
    script.write_text(RANK_SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script),
               pattern, str(tmp_path)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    steps = ranks[0]["steps"]
    assert steps == 4  # 32 samples, global batch 8
    for epoch in range(2):
        per_rank = [[n for batch in r["seen"][epoch * steps : (epoch + 1) * steps] for n in batch] for r in ranks]
        assert not set(per_rank[0]) & set(per_rank[1])  # the ranks split each global batch
        assert sorted(per_rank[0] + per_rank[1]) == sorted(set(per_rank[0]) | set(per_rank[1]))
        assert len(per_rank[0]) + len(per_rank[1]) == 32  # every sample of the train shards once per epoch
