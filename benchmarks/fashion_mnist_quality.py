"""Which pretext task learns the most useful features of real images? Every installed task on Fashion-MNIST.

Runs ``sslx bench`` as a user would on Fashion-MNIST (the Debian package ``dataset-fashion-mnist``: 60,000
train and 10,000 test 28 px grayscale images of 10 clothing classes, MIT licence; no download): every installed
task pretrains the same backbone with the same budget, each is scored by the linear protocol (classifier chosen
on a validation split held out of train) and by kNN (k=200, T=0.1, cosine), beside the two reference rows: the
backbone at its random initialisation and the same backbone trained with the labels. Images are upsampled from
28 to ``--image-size`` px (32 by default, the smallest size every task accepts), and fed to the networks as 3
equal channels; tasks that need colour (colorization, split-brain) are reported n/a on this grayscale set.

Prints the table (also written as ``table.md``, ``table.csv`` and ``chart.png`` under ``--out``) with the
machine and the wall time, for ``benchmarks/RESULTS.md``. Usage::

    python benchmarks/fashion_mnist_quality.py [--steps 300] [--out DIR] [--seed 0]

Needs ``apt-get install -y dataset-fashion-mnist`` (files under ``/usr/share/datasets/fashion-mnist/``).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

DEBIAN_FILES = Path("/usr/share/datasets/fashion-mnist")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="pretraining steps of every task")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="bench directory (resumable) [default: a temporary one]")
    args = parser.parse_args()
    if not (DEBIAN_FILES / "train-images-idx3-ubyte.gz").is_file():
        sys.exit(f"Fashion-MNIST not found under {DEBIAN_FILES}: apt-get install -y dataset-fashion-mnist")
    out = args.out or Path(tempfile.mkdtemp(prefix="sslx-fmnist-"))
    command = [sys.executable, "-m", "ssl_engine.cli", "bench", "--tasks", "all", "--data", "fashion-mnist",
               "--image-size", str(args.image_size), "--steps", str(args.steps), "--protocols", "linear,knn",
               "--seed", str(args.seed), "--out", str(out)]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - started
    print(f"\ncommand: sslx {' '.join(command[3:])}")
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}"
    )
    print(f"wall time: {seconds / 60:.1f} min (rows already in {out} are not recomputed)")
    print((out / "table.md").read_text())


if __name__ == "__main__":
    main()
