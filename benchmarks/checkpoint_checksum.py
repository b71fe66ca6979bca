"""What the checkpoint checksum costs: saving and reading a ResNet-50-sized checkpoint with and without it.

The checkpoint is what the trainer writes for torchvision's ``resnet50`` trained with SGD: its ``state_dict``
under ``model/`` and the momentum buffers under ``optim/main/`` (about 200 MB). Four measurements, each through
sslx's own code path:

* ``save, checksum``: :func:`ssl_engine.checkpoint.write_atomic` (CRC-32, safetensors, fsync, rename);
* ``save, none``: the same with the checksum replaced by a constant;
* ``read, checksum``: :func:`ssl_engine.checkpoint.read_checkpoint` of that file (verifies the CRC-32);
* ``read, none``: ``read_checkpoint`` of the same tensors written as a layout-version-1 file (no checksum);

plus ``checksum alone``: :func:`ssl_engine.checkpoint.checkpoint_checksum` over the tensors in memory. Reads come
from the page cache (the files were just written), so they show the CPU cost, the part the checksum adds to.
Calls are interleaved and repeated so that load from other processes falls on every variant alike; the script
prints each one's median and minimum.

Usage::

    python benchmarks/checkpoint_checksum.py [--rounds 7] [--dir DIR] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import torch
import torchvision
from safetensors.torch import save_file

from ssl_engine import checkpoint as checkpoints
from ssl_engine.config import PretrainConfig, TaskSpec


def resnet50_checkpoint() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata the trainer would save for a ResNet-50 after one SGD step with momentum."""
    torch.manual_seed(0)
    model = torchvision.models.resnet50()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for parameter in model.parameters():
        parameter.grad = torch.randn_like(parameter)
    optimizer.step()
    tensors = checkpoints.module_tensors("model", model.state_dict())
    optim_tensors, groups = checkpoints.optimizer_tensors("optim/main", optimizer)
    rng, python_rng = checkpoints.rng_tensors()
    metadata = {
        "step": "1000",
        "image_size": "224",
        "config": PretrainConfig([TaskSpec("rotation")], backbone="resnet50").to_json(),
        "optim": json.dumps({"main": groups}),
        "python_rng": python_rng,
    }
    return tensors | optim_tensors | rng, metadata


def timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--dir", type=Path, help="Where to write the files [default: a temporary directory].")
    parser.add_argument("--threads", type=int, help="torch threads [default: torch's].")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tensors, metadata = resnet50_checkpoint()
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    print(f"ResNet-50 + SGD momentum: {len(tensors)} tensors, {size / 1e6:.0f} MB")

    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        with_sum, without_sum = Path(folder) / "with.safetensors", Path(folder) / "without.safetensors"
        legacy = Path(folder) / "legacy.safetensors"
        header = {"format": checkpoints.FORMAT, "version": "1", **metadata}
        save_file(tensors, str(legacy), metadata=header)

        def save_without() -> None:
            with mock.patch.object(checkpoints, "checkpoint_checksum", return_value="crc32:00000000"):
                checkpoints.write_atomic(without_sum, tensors, metadata)

        variants: dict[str, Callable[[], object]] = {
            "save, checksum": lambda: checkpoints.write_atomic(with_sum, tensors, metadata),
            "save, none": save_without,
            "read, checksum": lambda: checkpoints.read_checkpoint(with_sum),
            "read, none": lambda: checkpoints.read_checkpoint(legacy),
            "checksum alone": lambda: checkpoints.checkpoint_checksum(tensors, metadata),
        }
        for call in variants.values():  # warm up: page cache, allocator
            call()
        times: dict[str, list[float]] = {name: [] for name in variants}
        for round_index in range(args.rounds):
            order = list(variants) if round_index % 2 == 0 else list(reversed(variants))
            for name in order:
                times[name].append(timed(variants[name]))

    print(f"{args.rounds} rounds, interleaved; seconds")
    print(f"{'variant':<16} {'median':>8} {'min':>8}")
    for name, values in times.items():
        print(f"{name:<16} {statistics.median(values):8.3f} {min(values):8.3f}")
    for kind in ("save", "read"):
        extra = statistics.median(times[f"{kind}, checksum"]) - statistics.median(times[f"{kind}, none"])
        share = extra / statistics.median(times[f"{kind}, none"])
        print(f"checksum adds {extra * 1000:+.0f} ms to a {kind} ({share:+.0%} of the median)")
    rate = size / statistics.median(times["checksum alone"]) / 1e9
    print(f"CRC-32 alone: {rate:.2f} GB/s")


if __name__ == "__main__":
    main()
