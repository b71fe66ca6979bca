"""MAE on a ViT: reconstruction of masked patches against the mean-patch baseline, and the linear probe against the
same ViT at its random initialisation.

For each seed: ``sslx pretrain --task mae --backbone timm:vit_tiny_patch16_224`` at 32 px as a user runs it
(``--no-probe``, AdamW), then, on the finished run (``ssl_engine.run.load_run``):

* **reconstruction**: the task's own pretext batch on ``--test`` held-out test images (masks drawn from a fixed
  seed, 75 % of the patches), the squared error on the masked patches in the loss's units (per-patch normalised
  pixels), beside the **mean-patch baseline** that predicts every masked patch as the mean of the image's visible
  patches (the task's ``mean_patch_mse``);
* **linear probe**: the linear protocol's classifier (``ssl_engine.eval.linear.fit_linear``, multinomial logistic
  regression on standardised frozen features, the weight decay chosen on val) fitted on the first ``--train``
  train images, chosen on ``--val`` val images and scored (top-1) on ``--test`` test images, for the trained
  encoder and for the network the run started from (``build_model(..., seed=SEED)``), on the representation (the
  class token of the encoder on all patches) and, beside it, the mean patch token of the same forward pass.

Subsets instead of the whole splits, and a short budget, because a ViT-Tiny forward pass costs 0.69 GFLOP per
32 px image (``benchmarks/vit_flops.py``) and the machine this was written on is two shared cores.

Usage::

    python benchmarks/mae_quality.py --seeds 0,1 --steps 200 [--data shapes|fashion-mnist] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import Subset

from ssl_engine.eval.linear import WEIGHT_DECAYS, fit_linear, top1
from ssl_engine.images import normalize, to_float
from ssl_engine.randomness import BatchRandom
from ssl_engine.run import load_run
from ssl_engine.train.model import build_model

BACKBONE = "timm:vit_tiny_patch16_224"
MASK_SEED = 1234


def pretrain(run: Path, seed: int, args: argparse.Namespace) -> float:
    command = [sys.executable, "-m", "ssl_engine.cli", "pretrain", "--task", "mae", "--backbone", BACKBONE,
               "--image-size", "32", "--data", args.data, "--steps", str(args.steps), "--batch-size",
               str(args.batch_size), "--optimizer", "adamw", "--lr", str(args.lr), "--weight-decay", "0.05",
               "--seed", str(seed), "--no-probe", "--out", str(run), *shlex.split(args.extra)]  # fmt: skip
    print("$ " + " ".join(command[2:]), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - started


def images_of(source, split: str, count: int) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    dataset = source.split(split, 32)
    subset = Subset(dataset, range(min(count, len(dataset))))
    pairs = [subset[i] for i in range(len(subset))]
    return torch.stack([image for image, _ in pairs]), torch.tensor([label for _, label in pairs])


def features(backbone, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    """Class token (the representation) and mean patch token of the encoder on all patches, ``(N, D)`` each."""
    cls, mean = [], []
    backbone.eval()
    with torch.no_grad():
        for start in range(0, len(images), 256):
            tokens = backbone.model.forward_features(normalize(to_float(images[start : start + 256])))
            cls.append(backbone.pool_tokens(tokens))
            mean.append(tokens[:, backbone.num_prefix_tokens :].mean(dim=1))
    return torch.cat(cls), torch.cat(mean)


def probe(train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
          test: tuple[torch.Tensor, torch.Tensor], classes: int) -> float:  # fmt: skip
    """Test top-1 of the linear classifier whose weight decay is best on val (the linear protocol's choice)."""
    mean, std = train[0].mean(0), train[0].std(0) + 1e-6
    best = None
    for decay in WEIGHT_DECAYS:
        classifier = fit_linear((train[0] - mean) / std, train[1], classes, decay)
        accuracy = top1(classifier, (val[0] - mean) / std, val[1])
        if best is None or accuracy > best[0]:
            best = (accuracy, classifier)
    assert best is not None
    return top1(best[1], (test[0] - mean) / std, test[1])


def reconstruction(run, images: torch.Tensor) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Masked-patch squared error of the model and of the mean-patch baseline on ``images``."""
    [runtime] = run.model.runtimes
    task, errors, baselines = runtime.task, [], []
    with torch.no_grad():
        for start in range(0, len(images), 256):
            chunk = to_float(images[start : start + 256])
            batch = task.pseudo_labels(chunk, BatchRandom(MASK_SEED, 0, "mae", len(chunk)))
            output = task.forward(run.model.backbone, runtime.modules, runtime.aux, batch)
            errors.append(float(output.metrics["masked_mse"]) * len(chunk))
            baselines.append(float(output.metrics["mean_patch_mse"]) * len(chunk))
    return sum(errors) / len(images), sum(baselines) / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--data", default="shapes")
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--extra", default="", help="more sslx pretrain options, quoted")
    parser.add_argument("--out", type=Path, help="keep the run directories here")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="sslx-mae-"))
    rows = []
    for seed in (int(text) for text in args.seeds.split(",")):
        run_dir = out / f"mae-{args.data}-seed{seed}"
        wall = pretrain(run_dir, seed, args) if not (run_dir / "metrics.jsonl").exists() else float("nan")
        run = load_run(run_dir)
        source = run.data()
        train, val, test = (images_of(source, split, count) for split, count in
                            (("train", args.train), ("val", args.val), ("test", args.test)))  # fmt: skip
        classes = int(max(train[1].max(), test[1].max())) + 1
        masked, baseline = reconstruction(run, test[0])
        started = time.perf_counter()
        initial = build_model(run.config, run.registry, run.image_size, seed=seed).backbone
        accuracies = {}
        for name, backbone in (("trained", run.model.backbone), ("random", initial)):
            splits = [features(backbone, images) for images, _ in (train, val, test)]
            for kind, index in (("cls", 0), ("mean", 1)):
                accuracies[f"{name}/{kind}"] = probe(
                    *((splits[i][index], labels) for i, (_, labels) in enumerate((train, val, test))), classes
                )
        row = {"seed": seed, "wall_s": wall, "eval_s": time.perf_counter() - started, "masked_mse": masked,
               "mean_patch_mse": baseline, **accuracies}  # fmt: skip
        print(json.dumps(row), flush=True)
        rows.append(row)
    print()
    print(f"data {args.data}, {args.steps} steps of {args.batch_size}, probe on {args.train}/{args.val}/{args.test} "
          f"train/val/test images; runs in {out}")  # fmt: skip
    print()
    print("| seed | masked-patch MSE | mean-patch baseline | probe, class token: MAE | random init | "
          "probe, mean token: MAE | random init | pretraining wall time |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['seed']} | {row['masked_mse']:.4f} | {row['mean_patch_mse']:.4f} | "
              f"{row['trained/cls']:.4f} | {row['random/cls']:.4f} | {row['trained/mean']:.4f} | "
              f"{row['random/mean']:.4f} | {row['wall_s']:.0f} s |")  # fmt: skip


if __name__ == "__main__":
    main()
