"""Do the reconstruction tasks beat the fill that needs no network? Inpainting against the mean fill and
super-resolution against bicubic upsampling, on held-out shapes images.

Loads finished ``sslx pretrain --task inpainting`` and ``--task superres`` runs (any number, any mix) and scores
each of their reconstruction tasks on the embedded data's test split, which pretraining never sees:

* ``inpainting``: holes drawn as in training (the run's mask settings, a fixed seed); squared error on the hole,
  in [0, 1] pixel units, of the context encoder's fill against two fills without a network: every hole pixel set
  to the mean colour of the train split (the best constant under l2), and to the engine's fixed normalisation
  mean (what the network's input holds in the hole).
* ``superres``: squared error over the whole image of the output against its bicubic input.

PSNR is ``10 log10(1 / MSE)`` of the pooled squared error (dB). Usage::

    python benchmarks/reconstruction_quality.py RUN_DIR [RUN_DIR ...] [--train-images 10000] [--test-images 2000]
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Iterator

import torch

from ssl_engine.data.shapes import ShapesDataset
from ssl_engine.images import MEAN, denormalize, to_float
from ssl_engine.randomness import BatchRandom
from ssl_engine.run import Run, load_run
from ssl_engine.task import PretextBatch
from ssl_engine.train.model import TaskRuntime

BATCH = 250
SEED = 12345  # the holes of the benchmark, fixed so every run is scored on the same ones


def batches(split: str, image_size: int, count: int) -> Iterator[torch.Tensor]:
    """The first ``count`` images of a shapes split as float batches ``(<= BATCH, 3, S, S)`` in [0, 1]."""
    dataset = ShapesDataset(split, image_size)
    count = min(count, len(dataset))
    for start in range(0, count, BATCH):
        yield to_float(torch.stack([dataset[i][0] for i in range(start, min(start + BATCH, count))]))


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """Normalised network images ``(B, 3, H, W)`` back to [0, 1], clamped as a stored image would be."""
    return denormalize(images.float()).clamp(0, 1)


def psnr(squared_error: float, count: float) -> float:
    return 10 * math.log10(count / squared_error)


def train_mean_colour(image_size: int, count: int) -> torch.Tensor:
    """Per-channel mean of the train split's pixels, ``(3,)`` in [0, 1]."""
    total, pixels = torch.zeros(3, dtype=torch.float64), 0
    for images in batches("train", image_size, count):
        total += images.double().sum(dim=(0, 2, 3))
        pixels += images.shape[0] * images.shape[2] * images.shape[3]
    return (total / pixels).float()


def reconstructions(
    run: Run, runtime: TaskRuntime, count: int
) -> Iterator[tuple[torch.Tensor, PretextBatch, torch.Tensor]]:
    """A reconstruction task's work on the first ``count`` test images, batch by batch: the images
    ``(B, 3, S, S)`` in [0, 1], their pretext batch (drawn with the benchmark's :data:`SEED`) and the network's
    reconstruction ``(B, 3, S, S)`` back in [0, 1]."""
    task = runtime.task
    for index, images in enumerate(batches("test", run.image_size, count)):
        batch = task.pseudo_labels(images, BatchRandom(SEED, index, task.name, len(images)))
        output = task.forward(run.model.backbone, runtime.modules, runtime.aux, batch)
        assert output.predictions is not None  # the reconstructed images
        yield images, batch, to_unit_range(output.predictions)


def score_inpainting(run: Run, runtime: TaskRuntime, args: argparse.Namespace) -> dict[str, float]:
    mean_colour = train_mean_colour(run.image_size, args.train_images)
    fills = {"model": 0.0, "train mean colour": 0.0, "normalisation mean": 0.0}
    hole_values = 0
    for images, batch, filled in reconstructions(run, runtime, args.test_images):
        hole = batch.extras["mask"].expand_as(images)
        guesses = {
            "model": filled,
            "train mean colour": mean_colour.view(1, 3, 1, 1).expand_as(images),
            "normalisation mean": torch.tensor(MEAN).view(1, 3, 1, 1).expand_as(images),
        }
        for name, guess in guesses.items():
            fills[name] += float((guess - images)[hole].double().square().sum())
        hole_values += int(hole.sum())
    settings = runtime.task.hparams
    print(f"  mask {settings['mask']}, hole fraction {settings['hole_fraction']}, {hole_values // 3} hole pixels")
    print(f"  train mean colour: {', '.join(f'{v:.3f}' for v in mean_colour.tolist())} (RGB)")
    print("  | fill | hole MSE | hole PSNR (dB) |")
    print("  |---|---|---|")
    for name, squared in fills.items():
        print(f"  | {name} | {squared / hole_values:.5f} | {psnr(squared, hole_values):.2f} |")
    ratio = fills["model"] / fills["train mean colour"]
    verdict = "beats" if ratio < 1 else "does NOT beat"
    print(f"  model {verdict} the mean fill: squared error ratio {ratio:.3f}")
    return {name: squared / hole_values for name, squared in fills.items()}


def score_superres(run: Run, runtime: TaskRuntime, args: argparse.Namespace) -> dict[str, float]:
    squared = {"model": 0.0, "bicubic": 0.0}
    values = 0
    for images, batch, upsampled in reconstructions(run, runtime, args.test_images):
        squared["model"] += float((upsampled - images).double().square().sum())
        squared["bicubic"] += float((to_unit_range(batch.inputs) - images).double().square().sum())
        values += images.numel()
    print(f"  factor {runtime.task.hparams['factor']}")
    print("  | output | MSE | PSNR (dB) |")
    print("  |---|---|---|")
    for name, error in squared.items():
        print(f"  | {name} | {error / values:.5f} | {psnr(error, values):.2f} |")
    gain = psnr(squared["model"], values) - psnr(squared["bicubic"], values)
    print(f"  model {'beats' if gain > 0 else 'does NOT beat'} bicubic: {gain:+.2f} dB")
    return {name: error / values for name, error in squared.items()}


SCORERS = {"inpainting": score_inpainting, "superres": score_superres}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+")
    parser.add_argument("--train-images", type=int, default=10000, help="images for the mean colour")
    parser.add_argument("--test-images", type=int, default=2000)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    for run_dir in args.run_dirs:
        started = time.perf_counter()
        run = load_run(run_dir)
        scored = [runtime for runtime in run.model.eval().runtimes if runtime.task.name in SCORERS]
        if not scored:
            print(f"run {run_dir}: no inpainting or superres task, skipped")
            continue
        for runtime in scored:
            print(f"run {run_dir}: task {runtime.task.name}, {run.image_size} px, step {run.checkpoint.step}")
            SCORERS[runtime.task.name](run, runtime, args)
        print(f"  ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
