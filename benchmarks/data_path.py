"""The data path at scale (issue 18): time to the first step, data-path throughput, memory, regimes agreeing.

Nothing here is committed data: every folder is generated into a path given on the command line.

    python benchmarks/data_path.py make-folder /tmp/photos --count 50000        # 300-500 px JPEGs, mixed aspect
    python benchmarks/data_path.py first-step /tmp/photos [--old-checkout DIR]  # command -> first training step
    python benchmarks/data_path.py throughput /tmp/photos [--shards DIR]        # ours vs torchvision ImageFolder,
                                                                               # device decode vs worker decode
    python benchmarks/data_path.py memory /tmp/photos                          # peak RSS as the folder grows
    python benchmarks/data_path.py fashion-folder /tmp/fm --train-count 6000 --test-count 1000  # PNG folders + IDX
    python benchmarks/data_path.py regimes /tmp/fm --data-dir /tmp/fm-idx --out /tmp/regimes  # probe: folder vs memory

Images of the generated folder are the embedded shapes data (10 classes, ``class_K/``) drawn at 128 px, resized to
a random 300-500 x 300-500 px (aspect ratios 0.6-1.67), with mild pixel noise so that JPEG sizes and decode times
come near photographs' (quality 90).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

ROOT = Path(__file__).resolve().parents[1]


def _write_chunk(args: tuple[str, int, int, int]) -> int:
    from ssl_engine.data.shapes import render_image

    out, start, stop, seed = args
    for index in range(start, stop):
        rng = np.random.default_rng((seed, index))
        image, label = render_image("train", index, 128)
        width, height = (int(v) for v in rng.integers(300, 501, 2))
        picture = Image.fromarray(image.permute(1, 2, 0).numpy()).resize((width, height), Image.Resampling.BILINEAR)
        noisy = np.asarray(picture, dtype=np.int16) + rng.normal(0, 6, (height, width, 3)).astype(np.int16)
        folder = Path(out) / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(folder / f"img{index:06d}.jpg", quality=90)
    return stop - start


def make_folder(out: Path, count: int, processes: int, seed: int = 0) -> None:
    out.mkdir(parents=True, exist_ok=True)
    chunk = 500
    jobs = [(str(out), start, min(start + chunk, count), seed) for start in range(0, count, chunk)]
    started = time.perf_counter()
    done = 0
    with ProcessPoolExecutor(processes) as pool:
        for written in pool.map(_write_chunk, jobs):
            done += written
            print(f"\r{done}/{count} images, {time.perf_counter() - started:.0f} s", end="", file=sys.stderr)
    print(file=sys.stderr)


def fashion_folder(out: Path, train_count: int | None = None, test_count: int | None = None) -> None:
    """Fashion-MNIST (Debian's IDX files) written as ``train/``, ``val/`` and ``test/`` PNG folders holding exactly
    the in-memory data set's splits, so the two regimes see the same images. With counts, the first ones of train
    and test are also written as IDX files under ``OUT-idx/fashion-mnist`` (``--data fashion-mnist --data-dir
    OUT-idx`` reads that subset in memory) and the folders hold that subset's splits."""
    import gzip

    from ssl_engine.data.idx_files import DEBIAN_FASHION_MNIST, fashion_mnist, read_idx
    from ssl_engine.data.options import DataOptions

    options = DataOptions()
    if train_count is not None or test_count is not None:
        idx = Path(f"{out}-idx") / "fashion-mnist"
        idx.mkdir(parents=True, exist_ok=True)
        for prefix, count in (("train", train_count), ("t10k", test_count)):
            for kind in ("images-idx3", "labels-idx1"):
                array = read_idx(DEBIAN_FASHION_MNIST / f"{prefix}-{kind}-ubyte.gz")[:count]
                header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
                with gzip.open(idx / f"{prefix}-{kind}-ubyte.gz", "wb") as handle:
                    handle.write(header + array.tobytes())
        options = DataOptions(data_dir=idx.parent)
    for split in ("train", "val", "test"):
        dataset = fashion_mnist(split, 28, options)
        for index in range(len(dataset)):
            image, label = dataset[index]
            folder = out / split / f"c{label}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image[0].numpy()).save(folder / f"{index:05d}.png")
        print(f"{split}: {len(dataset)} images", file=sys.stderr)


OPEN_AND_FIRST_BATCH = """
import json, sys, time
from pathlib import Path
started = time.perf_counter()
from ssl_engine.data.batches import BatchStream
from ssl_engine.data.folder import image_folder
dataset = image_folder(Path(sys.argv[1]), "train", int(sys.argv[2]))
opened = time.perf_counter()
batches = BatchStream.for_dataset(dataset, int(sys.argv[3]), 0, workers=2).batches(0)
next(batches)
print(json.dumps({"open_s": opened - started, "first_batch_s": time.perf_counter() - started}))
"""


def open_and_first_batch(checkout: Path, folder: Path, image_size: int, batch_size: int) -> dict[str, float]:
    """The data path alone, in the code of ``checkout``: opening the train split, then the first batch."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    command = [sys.executable, "-c", OPEN_AND_FIRST_BATCH, str(folder), str(image_size), str(batch_size)]
    result = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def first_step(folder: Path, old_checkout: Path | None, image_size: int, batch_size: int) -> dict[str, object]:
    """Seconds from starting ``sslx pretrain`` to the end of its first step (read from the first metrics line),
    and the data path alone (open + first batch) in this checkout and, given one, an older checkout (whose
    ``sslx`` may not run with today's plugins installed: its data path is timed on its own)."""
    results: dict[str, object] = {
        "after: data path (open, first batch)": open_and_first_batch(ROOT, folder, image_size, batch_size)
    }
    print(f"after, data path: {results}", file=sys.stderr)
    if old_checkout is not None:
        results["before: data path (open, first batch)"] = open_and_first_batch(
            old_checkout, folder, image_size, batch_size
        )
        print(f"before, data path: {results}", file=sys.stderr)
    for name, checkout in [("after: sslx pretrain to first step", ROOT)]:
        out = Path(f"/tmp/sslx-first-step-{os.getpid()}")
        command = [
            sys.executable,
            "-m",
            "ssl_engine.cli",
            "pretrain",
            "--task",
            "rotation",
            "--data",
            str(folder),
            "--image-size",
            str(image_size),
            "--batch-size",
            str(batch_size),
            "--steps",
            "100000",
            "--log-every",
            "1",
            "--no-probe",
            "--workers",
            "2",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
        env = {**os.environ, "PYTHONPATH": str(checkout)}
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=checkout, env=env, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        metrics = out / "metrics.jsonl"
        while not (metrics.exists() and metrics.read_text().strip()):
            if process.poll() is not None:
                raise RuntimeError(f"{name}: sslx exited with {process.returncode} before its first step")
            time.sleep(0.05)
        results[name] = time.perf_counter() - started
        process.terminate()
        process.wait()
        subprocess.run(["rm", "-rf", str(out)], check=False)
        print(f"{name}: first step after {results[name]:.1f} s", file=sys.stderr)
    return results


def _ours(folder: Path, workers: int, batch_size: int, image_size: int, shards: str | None):  # type: ignore[no-untyped-def]
    from ssl_engine.data.batches import BatchStream
    from ssl_engine.data.catalog import resolve_data
    from ssl_engine.data.options import DataOptions
    from ssl_engine.plugins import get_host

    source = resolve_data(shards or str(folder), get_host().registry, DataOptions())
    dataset = source.split("train", image_size)
    return BatchStream.for_dataset(dataset, batch_size, 0, workers=workers).batches(0)


def _device_name() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _device_decode_label() -> str:
    """The device-decode contender's row: nvJPEG on a GPU, else decode_jpeg on the CPU of the main process."""
    if _device_name() == "cuda":
        return "sslx folder, device decode (nvJPEG on cuda)"
    return "sslx folder, device decode (no GPU: decode_jpeg on the main process's CPU)"


def _ours_device_decode(
    folder: Path, workers: int, batch_size: int, image_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``--decode device``: workers read the files, the main process decodes the batch's JPEGs on the device and
    crops there. CUDA work is waited for at each batch, so the rate counts batches ready on the device."""
    import torch

    from ssl_engine.data.device_decode import DeviceDecodedStream
    from ssl_engine.data.folder import image_folder

    device = torch.device(_device_name())
    dataset = image_folder(folder, "train", image_size)
    for batch in DeviceDecodedStream(dataset, batch_size, 0, device=device, workers=workers).batches(0):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        yield batch


def _torchvision(folder: Path, workers: int, batch_size: int, image_size: int):  # type: ignore[no-untyped-def]
    import torch
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip(),
                                    transforms.PILToTensor()])  # fmt: skip
    dataset = datasets.ImageFolder(str(folder), transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         drop_last=True, prefetch_factor=4 if workers else None,
                                         persistent_workers=workers > 0)  # fmt: skip
    while True:
        yield from loader


def _rate(batches, count: int, batch_size: int) -> float:  # type: ignore[no-untyped-def]
    next(batches)  # workers started, first batch out
    started = time.perf_counter()
    for _ in range(count):
        next(batches)
    return count * batch_size / (time.perf_counter() - started)


def throughput(folder: Path, workers: int, batch_size: int, image_size: int, batches: int, repeats: int,
               shards: str | None) -> dict[str, object]:  # fmt: skip
    """Images per second of decode + crop + batch (no model), interleaved repeats; median of per-repeat ratios.

    ``sslx folder`` is the worker path (``--decode workers``: batches on the host); the device-decode row is
    ``--decode device`` on CUDA when there is a GPU (batches on the GPU), else on the CPU of the main process."""
    device_decode = _device_decode_label()
    rows: dict[str, list[float]] = {"sslx folder": [], "torchvision ImageFolder": [], device_decode: []}
    if shards:
        rows["sslx shards"] = []
    for repeat in range(repeats):
        for name in rows:
            if name == "torchvision ImageFolder":
                stream = _torchvision(folder, workers, batch_size, image_size)
            elif name == device_decode:
                stream = _ours_device_decode(folder, workers, batch_size, image_size)
            else:
                stream = _ours(folder, workers, batch_size, image_size, shards if name == "sslx shards" else None)
            rows[name].append(_rate(stream, batches, batch_size))
            stream.close()
            print(f"repeat {repeat}: {name} {rows[name][-1]:.0f} img/s", file=sys.stderr)
    base = rows["torchvision ImageFolder"]
    report: dict[str, object] = {name: statistics.median(values) for name, values in rows.items()}
    report["ratio folder/torchvision (median of repeats)"] = statistics.median(
        a / b for a, b in zip(rows["sslx folder"], base, strict=True)
    )
    report["ratio device decode/worker decode (median of repeats)"] = statistics.median(
        a / b for a, b in zip(rows[device_decode], rows["sslx folder"], strict=True)
    )
    if shards:
        report["ratio shards/folder (median of repeats)"] = statistics.median(
            a / b for a, b in zip(rows["sslx shards"], rows["sslx folder"], strict=True)
        )
    return report


def _peak_rss(folder: Path, image_size: int, batch_size: int, steps: int) -> float:
    code = f"""
import resource
from pathlib import Path
from ssl_engine.data.batches import BatchStream
from ssl_engine.data.folder import image_folder
stream = BatchStream.for_dataset(image_folder(Path({str(folder)!r}), "train", {image_size}), {batch_size}, 0, workers=2)
batches = stream.batches(0)
for _ in range({steps}):
    next(batches)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return float(result.stdout.strip().splitlines()[-1])


def memory(folder: Path, sizes: list[int], image_size: int, batch_size: int, steps: int) -> dict[str, float]:
    """Peak RSS (MiB, main process) opening a folder of each size and reading ``steps`` batches. Smaller folders
    are links to the first files of ``folder``."""
    files = sorted(folder.rglob("*.jpg"))
    report = {}
    for size in sizes:
        view = Path(f"/tmp/sslx-memory-{size}-{os.getpid()}")
        for path in files[:size]:
            target = view / path.parent.name / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path)
        report[f"{size} files"] = _peak_rss(view, image_size, batch_size, steps)
        subprocess.run(["rm", "-rf", str(view)], check=False)
        print(f"{size} files: {report[f'{size} files']:.0f} MiB", file=sys.stderr)
    return report


def regimes(
    folder: Path, out: Path, steps: int, seeds: list[int], data_dir: Path | None, batch_size: int
) -> dict[str, list[float]]:
    """Linear-probe top-1 of the same pretraining on the PNG folder (file-backed) and on ``fashion-mnist``
    (in memory, from ``data_dir`` when given), several seeds each."""
    report: dict[str, list[float]] = {"folder (file-backed)": [], "fashion-mnist (in memory)": []}
    for seed in seeds:
        for name, data in (("folder (file-backed)", str(folder)), ("fashion-mnist (in memory)", "fashion-mnist")):
            run = out / f"{'folder' if 'folder' in name else 'memory'}-{seed}"
            command = [sys.executable, "-m", "ssl_engine.cli", "pretrain", "--task", "rotation", "--data", data,
                       "--image-size", "32", "--batch-size", str(batch_size), "--steps", str(steps),
                       "--seed", str(seed), "--workers", "2", "--device", "cpu", "--out", str(run)]  # fmt: skip
            if data_dir is not None:
                command += ["--data-dir", str(data_dir)]
            subprocess.run(command, check=True, cwd=ROOT, capture_output=True)
            probe = json.loads((run / "probe.json").read_text())
            report[name].append(probe["pretrained"]["accuracy"])
            print(f"seed {seed} {name}: {report[name][-1]:.4f}", file=sys.stderr)
    return report


def folder_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], name: str, image_size: int
) -> argparse.ArgumentParser:
    """A subcommand that reads an image folder in batches: the folder, and the batch shape (``--image-size``, default
    ``image_size``; ``--batch-size``, default 64) it reads it in."""
    command = commands.add_parser(name)
    command.add_argument("folder", type=Path)
    command.add_argument("--image-size", type=int, default=image_size)
    command.add_argument("--batch-size", type=int, default=64)
    return command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("make-folder")
    make.add_argument("out", type=Path)
    make.add_argument("--count", type=int, default=50_000)
    make.add_argument("--processes", type=int, default=2)
    fashion = commands.add_parser("fashion-folder")
    fashion.add_argument("out", type=Path)
    fashion.add_argument("--train-count", type=int, help="Only the first N train images (and IDX files of them).")
    fashion.add_argument("--test-count", type=int, help="Only the first N test images.")
    first = folder_command(commands, "first-step", image_size=64)
    first.add_argument("--old-checkout", type=Path, help="A checkout of the code before (git worktree add DIR REV).")
    speed = folder_command(commands, "throughput", image_size=224)
    speed.add_argument("--shards", help="A shard pattern written from the same folder (sslx shard).")
    speed.add_argument("--workers", type=int, default=2)
    speed.add_argument("--batches", type=int, default=20)
    speed.add_argument("--repeats", type=int, default=3)
    mem = folder_command(commands, "memory", image_size=64)
    mem.add_argument("--sizes", default="5000,20000,50000")
    mem.add_argument("--steps", type=int, default=20)
    agree = commands.add_parser("regimes")
    agree.add_argument("folder", type=Path)
    agree.add_argument("--out", type=Path, required=True)
    agree.add_argument("--steps", type=int, default=300)
    agree.add_argument("--seeds", default="0,1")
    agree.add_argument("--data-dir", type=Path, help="Where fashion-mnist's IDX files are (a subset's).")
    agree.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.command == "make-folder":
        make_folder(args.out, args.count, args.processes)
        return
    if args.command == "fashion-folder":
        fashion_folder(args.out, args.train_count, args.test_count)
        return
    if args.command == "first-step":
        result: object = first_step(args.folder, args.old_checkout, args.image_size, args.batch_size)
    elif args.command == "throughput":
        result = throughput(args.folder, args.workers, args.batch_size, args.image_size, args.batches, args.repeats,
                            args.shards)  # fmt: skip
    elif args.command == "memory":
        sizes = [int(v) for v in re.split(r"[, ]+", args.sizes) if v]
        result = memory(args.folder, sizes, args.image_size, args.batch_size, args.steps)
    else:
        seeds = [int(v) for v in args.seeds.split(",")]
        result = regimes(args.folder, args.out, args.steps, seeds, args.data_dir, args.batch_size)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
