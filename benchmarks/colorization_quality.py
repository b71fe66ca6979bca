"""Does a colorization run predict colour better than the mean colour? ab error on held-out shapes images.

Loads a finished ``sslx pretrain --task colorization`` run, colorizes the embedded data's test split (never seen
in pretraining) from its lightness, and compares the error of the predicted ab channels, in Lab units, with two
baselines that need no network:

* mean colour: every pixel gets the mean ab of the train split (the best constant under l2);
* lightness lookup: every pixel gets the mean ab of the train pixels of the same lightness (1-unit L bins), the
  best prediction from a pixel's own lightness alone, so beating it means the network uses context.

Errors are measured on the task's output grid (ab area-averaged to ``S / output_stride``), as the task is
trained. Usage::

    python benchmarks/colorization_quality.py RUN_DIR [--train-images 10000] [--test-images 2000]
"""

from __future__ import annotations

import argparse
import time

import torch
from sslx_colorization.lab import rgb_to_lab
from sslx_colorization.output_grid import to_output_grid

from ssl_engine.data.shapes import ShapesDataset
from ssl_engine.images import to_float
from ssl_engine.randomness import BatchRandom
from ssl_engine.run import load_run
from ssl_engine.task import PretextBatch

BATCH = 256
L_BINS = 100


def batches(split: str, image_size: int, count: int) -> list[torch.Tensor]:
    """The first ``count`` images of a shapes split as float batches ``(<= BATCH, 3, S, S)`` in [0, 1]."""
    dataset = ShapesDataset(split, image_size)
    count = min(count, len(dataset))
    return [
        to_float(torch.stack([dataset[i][0] for i in range(start, min(start + BATCH, count))]))
        for start in range(0, count, BATCH)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--task", default="colorization")
    parser.add_argument("--train-images", type=int, default=10000, help="images for the baselines' statistics")
    parser.add_argument("--test-images", type=int, default=2000)
    args = parser.parse_args()
    started = time.perf_counter()
    run = load_run(args.run_dir)
    model = run.model.eval()
    runtime = next(r for r in model.runtimes if r.spec.name == args.task)
    task = runtime.task
    classify = task.config["loss_mode"] == "classification"

    def targets_of(images: torch.Tensor) -> tuple[PretextBatch, torch.Tensor, torch.Tensor]:
        """(pretext batch, true ab on the output grid (B, 2, h, w), its lightness (B, h, w))."""
        batch = task.pseudo_labels(images, BatchRandom(0, 0, args.task, len(images)))
        lightness = to_output_grid(rgb_to_lab(images)[:, :1], batch.extras["ab"].shape[-1])[:, 0]
        return batch, batch.extras["ab"], lightness

    # Baselines' statistics from the train split: the mean ab, and the mean ab per lightness bin.
    total_ab = torch.zeros(2, dtype=torch.float64)
    per_bin_ab = torch.zeros(L_BINS, 2, dtype=torch.float64)
    per_bin_count = torch.zeros(L_BINS, dtype=torch.float64)
    pixels = 0
    for images in batches("train", run.image_size, args.train_images):
        _, ab, lightness = targets_of(images)
        flat_ab = ab.permute(0, 2, 3, 1).reshape(-1, 2).double()
        bins = lightness.flatten().long().clamp(0, L_BINS - 1)
        total_ab += flat_ab.sum(0)
        per_bin_ab.index_add_(0, bins, flat_ab)
        per_bin_count.index_add_(0, bins, torch.ones_like(bins, dtype=torch.float64))
        pixels += len(flat_ab)
    mean_ab = (total_ab / pixels).float()
    lookup = torch.where(
        per_bin_count[:, None] > 0, per_bin_ab / per_bin_count.clamp(min=1)[:, None], total_ab / pixels
    )

    squared = {"model": 0.0, "mean colour": 0.0, "lightness lookup": 0.0}
    distance = dict.fromkeys(squared, 0.0)
    test_pixels = 0
    with torch.no_grad():
        for images in batches("test", run.image_size, args.test_images):
            batch, ab, lightness = targets_of(images)
            outputs = task.forward(model.backbone, runtime.modules, runtime.aux, batch).predictions
            assert outputs is not None
            predicted = task.predicted_ab(outputs)  # (B, 2, h, w) in Lab units
            bins = lightness.long().clamp(0, L_BINS - 1)
            guesses = {
                "model": predicted,
                "mean colour": mean_ab.view(1, 2, 1, 1).expand_as(ab),
                "lightness lookup": lookup.float()[bins].permute(0, 3, 1, 2),
            }
            for name, guess in guesses.items():
                error = guess - ab
                squared[name] += float(error.square().sum())
                distance[name] += float(error.square().sum(dim=1).sqrt().sum())
            test_pixels += ab.shape[0] * ab.shape[2] * ab.shape[3]

    mode = "classification" if classify else "regression"
    print(f"run {args.run_dir}: task {args.task} ({mode}), {run.image_size} px, step {run.checkpoint.step}")
    print(f"mean colour of the train split: a={float(mean_ab[0]):.2f} b={float(mean_ab[1]):.2f} ({pixels} pixels)")
    print("| predictor | ab RMSE (Lab units, per channel) | mean ab distance |")
    print("|---|---|---|")
    for name in squared:
        rmse = (squared[name] / (2 * test_pixels)) ** 0.5
        print(f"| {name} | {rmse:.3f} | {distance[name] / test_pixels:.3f} |")
    model_mse, mean_mse = squared["model"], squared["mean colour"]
    verdict = "beats" if model_mse < mean_mse else "does NOT beat"
    print(f"model {verdict} the mean colour: squared error ratio {model_mse / mean_mse:.3f}")
    print(f"({test_pixels} test pixels, {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
