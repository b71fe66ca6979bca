"""Fine-tuning vs the linear probe at 1%, 10% and 100% of the labels (issue 23).

For every data set, pretext task and seed, the backbone is pretrained with the CLI as a user would
(``sslx pretrain --task T --data D --steps N --image-size S --seed K --no-probe``); the same backbone at its random
initialisation (the network that run started from) is the reference. Each backbone is then evaluated by the linear
protocol and the fine-tuning protocol (its defaults: head from the linear probe, a step budget, warm-up then
cosine, crop+flip, step chosen on val) with 1%, 10% and 100% of the train labels, per class and seeded with the
same seed. Everything is kept under ``--out`` (pretraining runs, cached features, one JSON per evaluation), so
an interrupted benchmark continues where it stopped.

Fashion-MNIST (``apt-get install -y dataset-fashion-mnist``) is evaluated on a seeded subset of its train split
(``--fmnist-train-size``, 10,000 of 54,000 by default) and of its val split (``--fmnist-val-size``, 2,000 of 6,000),
with the whole test split (10,000): this keeps the benchmark within the hour on two shared CPU cores. Pretraining
reads the whole train split (its cost is the step budget). ``--fmnist-train-size 0`` evaluates on everything.

``--pretrain-options`` passes more ``sslx pretrain`` options (quoted, split as a shell would), e.g. a backbone and
its optimiser: MAE on a ViT as ``benchmarks/mae_quality.py`` pretrains it (issue 20). Those options name a tag (the
backbone's name, if one is given, and a hash of the options) that ends every run directory, feature-cache key and
result file of such a run, so runs with different options never share a cache entry; ``--eval-size SPLIT=N``
(seeded subsets of any data set's splits) adds its own tag to the cache keys. Without either, names are as they
always were, and results cached before these options existed are reused.

Prints a Markdown table (mean of the seeds, each seed in brackets), the targets of issue 23 checked, and the wall
times, for ``benchmarks/RESULTS.md``. Usage::

    python benchmarks/finetune_vs_linear.py --out benchmarks/results/finetune_vs_linear \\
        [--pretrain-steps 300] [--image-size 32] [--seeds 0,1] [--threads 1] [--finetune-set batch_size=64]

MAE on a ViT-Tiny at 32 px (issue 20; AdamW as in ``benchmarks/mae_quality.py``), on subsets of the splits::

    python benchmarks/finetune_vs_linear.py --out benchmarks/results/mae-ft --data shapes,fashion-mnist \\
        --tasks mae --seeds 0,1 --fractions 1 --image-size 32 --pretrain-steps 600 \\
        --pretrain-options "--backbone timm:vit_tiny_patch16_224 --optimizer adamw --lr 0.001 --weight-decay 0.05" \\
        --eval-size train=2000 --eval-size val=500 --eval-size test=1000 --finetune-set steps=200

(the fine-tuning protocol trains the ViT with AdamW: ``optimizer=auto``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any, cast

import torch
from torch.utils.data import Dataset

from ssl_engine.data.batches import materialize
from ssl_engine.data.catalog import DataSource, resolve_data
from ssl_engine.data.options import DataOptions
from ssl_engine.eval.context import EvalContext
from ssl_engine.plugins import get_host
from ssl_engine.registry import Registry
from ssl_engine.run import load_run
from ssl_engine.task import Representation
from ssl_engine.train.model import build_model

RANDOM_INIT = "random init"
PROTOCOLS = ("linear", "finetune")
SPLITS = ("train", "val", "test")
# sslx pretrain options this script sets itself: --pretrain-options may not give them again
SET_HERE = ("--task", "--data", "--steps", "--epochs", "--image-size", "--seed", "--batch-size", "--device", "--out",
            "--resume", "--no-probe")  # fmt: skip


class HeldImages(Dataset[tuple[torch.Tensor, int]]):
    """A split decoded once: uint8 images ``(N, 3, S, S)``, labels ``(N,)`` and the class names."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> None:
        self.images, self.labels, self.classes = images, labels, classes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


class HeldSource:
    """A data set's splits decoded once (shapes are rendered, Fashion-MNIST resized, only once per benchmark),
    with seeded subsets of some splits; it answers what :class:`~ssl_engine.eval.context.EvalContext` asks."""

    def __init__(self, source: DataSource, image_size: int, sizes: dict[str, int]) -> None:
        self.name, self.labelled, self.color = source.name, source.labelled, source.color
        self.splits: dict[str, HeldImages] = {}
        for split in ("train", "val", "test"):
            dataset = source.split(split, image_size)
            images, labels = materialize(dataset)
            if sizes.get(split, 0) and sizes[split] < len(labels):
                keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))[: sizes[split]].sort()
                images, labels = images[keep.values], labels[keep.values]
            self.splits[split] = HeldImages(images, labels, list(getattr(dataset, "classes", []) or []))

    def split(self, split: str, image_size: int) -> HeldImages:
        return self.splits[split]


def options_tag(options: list[str]) -> str:
    """A short, stable name for extra pretraining options: ``""`` for none (the names runs had before the option),
    else ``-`` then the backbone's name when one is given and the options' hash, e.g.
    ``-vit_tiny_patch16_224-3f2a9c1e``."""
    if not options:
        return ""
    digest = hashlib.sha256(shlex.join(options).encode()).hexdigest()[:8]
    backbone = ""
    for index, option in enumerate(options):
        if option.startswith("--backbone="):
            backbone = option.split("=", 1)[1]
        elif option == "--backbone" and index + 1 < len(options):
            backbone = options[index + 1]
    name = re.sub(r"[^A-Za-z0-9_.]+", "_", re.split(r"[:/]", backbone)[-1]).strip("_.")
    return f"-{name}-{digest}" if name else f"-{digest}"


def eval_size_tag(eval_sizes: dict[str, int]) -> str:
    """Names the ``--eval-size`` subsets in the cache keys: ``""`` for none, e.g. ``-train2000-val500``."""
    return "".join(f"-{split}{eval_sizes[split]}" for split in SPLITS if split in eval_sizes)


def check_reused_run(run_dir: Path, args: argparse.Namespace) -> None:
    """Refuse to reuse (or resume) a run directory pretrained at another image size, budget or batch size: the
    run directory's name does not carry them, the evaluation keys do, so results would be filed under the wrong
    settings."""
    config_path = run_dir / "config.toml"
    if not config_path.exists():
        return
    config = tomllib.loads(config_path.read_text())
    wanted = {"image_size": args.image_size, "steps": args.pretrain_steps, "batch_size": args.batch_size}
    found = {key: config.get(key) for key in wanted}
    if found != wanted:
        raise SystemExit(
            f"{run_dir} was pretrained with {found}, not {wanted}: give another --out (or remove that run)"
        )


def pretrain(args: argparse.Namespace, data: str, task: str, seed: int) -> tuple[Path, float]:
    """The run of ``task`` on ``data`` with ``seed``, pretrained with the CLI unless done before; its wall time."""
    run_dir = args.out / "runs" / f"{data}-{task}-seed{seed}{options_tag(args.pretrain_options)}"
    done = run_dir / "pretrain-wall-time.json"
    check_reused_run(run_dir, args)
    if done.exists():
        return run_dir, float(json.loads(done.read_text())["seconds"])
    options = {"--task": task, "--data": data, "--steps": args.pretrain_steps, "--image-size": args.image_size,
               "--seed": seed, "--batch-size": args.batch_size, "--device": args.device, "--out": run_dir}  # fmt: skip
    command = [sys.executable, "-m", "ssl_engine.cli", "pretrain", "--no-probe"]
    command += [str(part) for pair in options.items() for part in pair] + args.pretrain_options
    if (run_dir / "config.toml").exists():
        command.append("--resume")
    print(f"pretraining: sslx {' '.join(command[3:])}", flush=True)
    started = time.perf_counter()
    threads = str(args.threads)
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads})
    seconds = time.perf_counter() - started
    done.write_text(json.dumps({"seconds": seconds}))
    return run_dir, seconds


def representation_of(run_dir: Path, method: str, registry: Registry, device: torch.device) -> Representation:
    """The run's trained representation, or (``random init``) the network that run started from."""
    run = load_run(run_dir, registry, device=device)
    if method == RANDOM_INIT:
        model = build_model(run.config, registry, run.image_size, seed=run.config.seed).to(device)
        return model.representation()
    return run.model.representation()


def evaluate(
    args: argparse.Namespace,
    source: HeldSource,
    representation: Representation,
    key: str,
    seed: int,
    fraction: float,
    protocol: str,
    registry: Registry,
) -> dict[str, Any]:
    """One evaluation (kept as JSON under ``OUT/results``), with its wall time."""
    path = args.out / "results" / f"{key}-labels{fraction:g}-{protocol}.json"
    if path.exists():
        return dict(json.loads(path.read_text()))
    context = EvalContext(
        representation,
        cast(DataSource, source),
        args.image_size,
        torch.device(args.device),
        seed=seed,
        label_fraction=None if fraction >= 1 else fraction,
        options=dict(args.finetune_set) if protocol == "finetune" else {},
        cache_dir=args.out / "features",
        cache_key=key,
    )
    started = time.perf_counter()
    result = registry.get("evaluator", protocol).obj(context)
    result["seconds"] = time.perf_counter() - started
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"{key} labels {fraction:g} {protocol}: {result['accuracy']:.4f} ({result['seconds']:.0f} s)", flush=True)
    return dict(result)


def cell(values: list[float]) -> str:
    """Mean accuracy (%) with each seed's value: ``74.1 (73.5, 74.8)``."""
    return f"{100 * statistics.mean(values):.1f} ({', '.join(f'{100 * v:.1f}' for v in values)})"


def report(args: argparse.Namespace, results: dict[tuple[str, str, float, str], list[dict[str, Any]]]) -> str:
    """The Markdown table, the targets of issue 23 checked, and where the time went."""
    lines = [
        "| data | backbone | labels | linear | fine-tune | fine-tune - linear | best step (of) | s per eval |",
        "|---|---|---|---|---|---|---|---|",
    ]
    mean: dict[tuple[str, str, float, str], float] = {}
    for (data, method, fraction, protocol), found in results.items():
        mean[data, method, fraction, protocol] = statistics.mean(r["accuracy"] for r in found)
    for data in args.data:
        for method in [*args.tasks, RANDOM_INIT]:
            for fraction in args.fractions:
                linear, finetune = (results[data, method, fraction, p] for p in PROTOCOLS)
                gap = 100 * (mean[data, method, fraction, "finetune"] - mean[data, method, fraction, "linear"])
                steps = ", ".join(f"{r['best_step']}/{r['steps']}" for r in finetune)
                seconds = f"{statistics.mean(r['seconds'] for r in linear):.0f} / "
                seconds += f"{statistics.mean(r['seconds'] for r in finetune):.0f}"
                lines.append(
                    f"| {data} | {method} | {fraction:.0%} | {cell([r['accuracy'] for r in linear])} | "
                    f"{cell([r['accuracy'] for r in finetune])} | {gap:+.1f} | {steps} | {seconds} |"
                )
    checks = []
    for data in args.data:
        for method in args.tasks:
            for fraction in (f for f in args.fractions if f >= 0.1):
                lin, ft = mean[data, method, fraction, "linear"], mean[data, method, fraction, "finetune"]
                checks.append(
                    f"{'met' if ft >= lin else 'MISSED'}: {data} {method} {fraction:.0%}: fine-tune "
                    f"{100 * ft:.1f} >= linear {100 * lin:.1f}"
                )
            for fraction in (f for f in args.fractions if f <= 0.1):
                ft, rand = mean[data, method, fraction, "finetune"], mean[data, RANDOM_INIT, fraction, "finetune"]
                checks.append(
                    f"{'met' if ft >= rand else 'MISSED'}: {data} {method} {fraction:.0%}: fine-tuned "
                    f"{100 * ft:.1f} >= random init fine-tuned {100 * rand:.1f}"
                )
    return "\n".join(lines) + "\n\nTargets (means over the seeds):\n" + "\n".join(f"- {c}" for c in checks) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/finetune_vs_linear"))
    parser.add_argument("--data", default="shapes,fashion-mnist")
    parser.add_argument("--tasks", default="rotation,simclr")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--fractions", default="0.01,0.1,1")
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64, help="pretraining batch size")
    # 32 px, the tasks' own default. At 16 px (this script's first default, for speed) SimCLR's random-resized crops
    # are a few pixels wide: fine-tuned with 10% of the shapes labels its backbone scored 0.714-0.7145, and 0.775-0.815
    # at 32 px (benchmarks/RESULTS.md). 32 px costs about four times the compute.
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--fmnist-train-size", type=int, default=10_000, help="0: the whole train split")
    parser.add_argument("--fmnist-val-size", type=int, default=2_000, help="0: the whole val split")
    parser.add_argument(
        "--eval-size",
        action="append",
        default=[],
        metavar="SPLIT=N",
        help="evaluate on a seeded subset of N images of SPLIT (train, val, test) of every data set (0: all)",
    )
    parser.add_argument(
        "--pretrain-options",
        default="",
        metavar="OPTIONS",
        help='more sslx pretrain options, quoted (e.g. "--backbone timm:vit_tiny_patch16_224 --optimizer adamw")',
    )
    parser.add_argument(
        "--finetune-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fine-tuning protocol option (as sslx evaluate --set); default: its defaults",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core box)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    args.data, args.tasks = args.data.split(","), args.tasks.split(",")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.fractions = [float(f) for f in args.fractions.split(",")]
    args.finetune_set = [tuple(pair.split("=", 1)) for pair in args.finetune_set]
    args.pretrain_options = shlex.split(args.pretrain_options)
    taken = sorted({o.split("=", 1)[0] for o in args.pretrain_options if o.split("=", 1)[0] in SET_HERE})
    if taken:
        parser.error(f"--pretrain-options may not set {', '.join(taken)}: this script sets those (use its own options)")
    eval_sizes = {}
    for pair in args.eval_size:
        split, _, count = pair.partition("=")
        if split not in SPLITS or not count.isdigit():
            parser.error(f"--eval-size {pair!r}: expected SPLIT=N with SPLIT one of {', '.join(SPLITS)}")
        eval_sizes[split] = int(count)
    tag = options_tag(args.pretrain_options) + eval_size_tag(eval_sizes)
    torch.set_num_threads(args.threads)
    registry = get_host().registry
    started, load_before = time.perf_counter(), os.getloadavg()
    results: dict[tuple[str, str, float, str], list[dict[str, Any]]] = {}
    pretrain_seconds: dict[str, list[float]] = {}
    for data in args.data:
        sizes = {"train": args.fmnist_train_size, "val": args.fmnist_val_size} if data == "fashion-mnist" else {}
        sizes |= eval_sizes
        source = HeldSource(resolve_data(data, registry, DataOptions()), args.image_size, sizes)
        for seed in args.seeds:
            runs = {task: pretrain(args, data, task, seed) for task in args.tasks}
            for task, (_, seconds) in runs.items():
                pretrain_seconds.setdefault(f"{data} {task}", []).append(seconds)
            for method in [*args.tasks, RANDOM_INIT]:
                run_dir = runs[args.tasks[0] if method == RANDOM_INIT else method][0]
                representation = representation_of(run_dir, method, registry, torch.device(args.device))
                key = (
                    f"{data}-{method.replace(' ', '-')}-seed{seed}-{args.image_size}px-{args.pretrain_steps}steps{tag}"
                )
                for fraction in args.fractions:
                    for protocol in PROTOCOLS:
                        result = evaluate(args, source, representation, key, seed, fraction, protocol, registry)
                        results.setdefault((data, method, fraction, protocol), []).append(result)
    minutes = (time.perf_counter() - started) / 60
    print("\n" + report(args, results))
    print(
        "Pretraining wall time per run (s): "
        + ", ".join(f"{name} {statistics.mean(s):.0f}" for name, s in pretrain_seconds.items())
    )
    settings = " ".join(f"--finetune-set {k}={v}" for k, v in args.finetune_set)
    settings += "".join(f" --eval-size {split}={count}" for split, count in eval_sizes.items())
    if args.pretrain_options:
        settings += f" --pretrain-options {shlex.quote(shlex.join(args.pretrain_options))}"
    print(
        f"command: python benchmarks/finetune_vs_linear.py --out {args.out} --data {','.join(args.data)} "
        f"--tasks {','.join(args.tasks)} --fractions {','.join(f'{f:g}' for f in args.fractions)} "
        f"--pretrain-steps {args.pretrain_steps} --batch-size {args.batch_size} "
        f"--image-size {args.image_size} --seeds {','.join(map(str, args.seeds))} --threads {args.threads} "
        f"--fmnist-train-size {args.fmnist_train_size} --fmnist-val-size {args.fmnist_val_size} {settings}"
    )
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{'CUDA ' + torch.cuda.get_device_name() if args.device == 'cuda' else 'CPU only'}, {args.threads} "
        f"thread(s); load average {load_before[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    )
    print(f"wall time: {minutes:.1f} min (evaluations and runs already under {args.out} are not recomputed)")


if __name__ == "__main__":
    main()
