"""Training throughput: sslx's step against a plain PyTorch loop and the classic per-image DataLoader pipeline.

For every chosen task and backbone, three contenders train the same model (identical initial weights, each its own
copy and optimiser) on the embedded ``shapes`` data at the task's default image size, and the script reports
training images per second (source images, not views):

* (a) ``sslx``: the step of :meth:`ssl_engine.train.loop.Trainer.train` (``Trainer.device_step``, its logged
  values read back every 10 steps as the loop does with the default ``--log-every``) fed from the Trainer's own
  ``BatchStream``, the engine's real path: uint8 batches from the stream, to the device, base augmentation
  (reflect-padded random crop and flip), the task's pseudo-labels on the device in one vectorised pass, forward,
  loss, backward, SGD step, the learning-rate schedule, the non-finite check and the logged values.
* (b) plain PyTorch: a hand-written loop over uint8 batches already in memory (the stream's first ``--steps``
  batches, cycled, wherever the stream keeps its data) doing the same work with the same model: to the device, the
  same base augmentation and the same task's ``pseudo_labels``/``forward``/loss, ``loss.backward()``,
  ``optimizer.step()`` on a plain ``torch.optim.SGD`` (same lr, momentum 0.9, Nesterov and weight decay, but one
  parameter group: biases and norms are decayed too, which the engine spares); no schedule, no checks, no
  logging. (a)/(b) is the price of the engine's bookkeeping.
* (c) classic per-image pipeline, as the papers' code does it: PIL images and ``torchvision.transforms`` applied
  one image at a time in ``torch.utils.data.DataLoader`` workers, collated into batches, then the same
  forward/backward/step as (b). Every pipeline starts with the engine's base augmentation done per image (PIL
  reflect-padded ``RandomCrop`` and ``RandomHorizontalFlip``), so the three contenders do the same work:

  - simclr (Chen et al. 2020): two views per image, each ``RandomResizedCrop`` (scale ``min_scale``-1),
    ``RandomHorizontalFlip``, ``ColorJitter(0.8 s, 0.8 s, 0.8 s, 0.2 s)`` with p 0.8, ``RandomGrayscale(0.2)``
    (and the blur when the task has it on), ``ToTensor``, ``Normalize``; ``s`` is the task's ``strength`` (0.5);
  - jigsaw (Noroozi & Favaro 2016): grayscale with p 0.3, the 3x3 grid of cells cut with PIL, a tile cropped at a
    random place in each cell (the gap and jitter), per-tile normalisation, a random permutation from the task's
    own permutation set;
  - rotation (Gidaris et al. 2018): the four rotations made with PIL's ``transpose``, ``ToTensor``,
    ``Normalize``.

Any registered backbone can be measured; ``--backbones timm:vit_tiny_patch16_224`` gives the ViT row (ViT-Tiny with
4 px patches at 32 px, timm's fused attention; the same model in all three contenders).

Measurement: every contender first runs ``--warmup`` untimed steps; then the contenders run interleaved for
``--repeats`` rounds, the order rotated every round (a b c, b c a, c a b, ...), each timing a block of ``--steps``
steps, so that load from other processes falls on all three alike. Before each (c) block the batches its workers
prefetched while the others ran are drained untimed and one untimed step refills the pipeline, so (c) is timed on
what its workers make during its own block; before every block the machine idles ``--settle`` seconds, so no
contender pays for the prefetching (c)'s workers still do after their block.
The table gives each contender's median images/s with the min-max over the repeats, and the ratios of the
medians. On CUDA the clock is read after ``torch.cuda.synchronize()``, every contender runs under bfloat16
autocast as the engine does, and the table adds model FLOPs utilisation: the FLOPs of one training step (forward
and backward, counted by ``torch.utils.flop_counter.FlopCounterMode``) times steps per second, over the device's
peak dense bf16 FLOP/s (:data:`PEAK_BF16_FLOPS`, or ``--peak-flops``). On the CPU, torch's thread count is left as
it is and reported.

Usage::

    python benchmarks/throughput.py [--tasks simclr,jigsaw,rotation] [--backbones smallconv,resnet18]
    python benchmarks/throughput.py --tasks simclr --backbones timm:vit_tiny_patch16_224    # the ViT row
        [--batch-size 64] [--steps 10] [--repeats 5] [--warmup 3] [--workers 2] [--device auto] [--peak-flops F]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import itertools
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torchvision
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from ssl_engine.config import PretrainConfig, TaskSpec
from ssl_engine.data.augment import random_crop_flip
from ssl_engine.distributed import pick_device
from ssl_engine.images import MEAN, STD
from ssl_engine.plugins import get_host
from ssl_engine.randomness import BatchRandom
from ssl_engine.run import build_run
from ssl_engine.task import PretextBatch, PretextTask
from ssl_engine.train.loop import Trainer

LR = 0.05
WEIGHT_DECAY = 5e-4
MOMENTUM = 0.9
# Peak dense bfloat16 FLOP/s by device name, first match wins (the more specific names come first).
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989.5e12),
    ("H200", 989.5e12),
    ("A100", 312e12),
)
CONTENDERS = {
    "a": "(a) sslx step",
    "b": "(b) plain PyTorch loop",
    "c": "(c) per-image DataLoader",
}


# --- devices and clocks --------------------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so the clock measures it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bfloat16 autocast on CUDA, as the engine's Trainer uses; nothing elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def peak_flops(device: torch.device, override: float | None) -> float | None:
    """The device's peak dense bf16 FLOP/s: ``--peak-flops``, else from :data:`PEAK_BF16_FLOPS`, else unknown."""
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS if key in name), None)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({cpu_model()})"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


# --- the model every contender trains ------------------------------------------------------------------------------
@dataclass
class ModelParts:
    """One copy of the run's networks and its task object."""

    backbone: nn.Module
    task: PretextTask
    modules: nn.ModuleDict
    aux: nn.ModuleDict

    def parameters(self) -> list[nn.Parameter]:
        return [*self.backbone.parameters(), *self.modules.parameters()]


def copy_of_model(trainer: Trainer) -> ModelParts:
    """A deep copy of the Trainer's model (same initial weights, its own parameters), in training mode."""
    model = copy.deepcopy(trainer.model)
    model.train()
    runtime = model.runtimes[0]
    return ModelParts(model.backbone, runtime.task, runtime.modules, runtime.aux)


def plain_sgd(parts: ModelParts) -> torch.optim.Optimizer:
    """What a hand-written loop would use: one parameter group, the engine's hyper-parameters."""
    return torch.optim.SGD(parts.parameters(), lr=LR, momentum=MOMENTUM, nesterov=True, weight_decay=WEIGHT_DECAY)


def engine_layout(images: torch.Tensor) -> torch.Tensor:
    """The memory layout the engine gives a batch: channels-last on CUDA (its weights are too), as is elsewhere."""
    return images.contiguous(memory_format=torch.channels_last) if images.is_cuda else images


def task_loss(parts: ModelParts, batch: PretextBatch) -> torch.Tensor:
    """The task's forward and its weighted loss terms (call inside :func:`autocast`)."""
    output = parts.task.forward(parts.backbone, parts.modules, parts.aux, batch)
    return parts.task.weighted_total(output.losses)


def descend(loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


# --- the three contenders ------------------------------------------------------------------------------------------
class Contender(Protocol):
    def prepare(self) -> None:
        """Untimed work before each timed block."""

    def step(self) -> None:
        """One training step on one batch."""


READ_BACK_EVERY = 10  # the loop's default --log-every


class EngineContender:
    """(a): the engine's own training step, fed from its own batch stream."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.batches = trainer.stream.batches(trainer.step)

    def prepare(self) -> None:
        pass

    def step(self) -> None:
        images, labels = next(self.batches)
        logged = self.trainer.device_step(images, labels)
        if self.trainer.step % READ_BACK_EVERY == 0:
            self.trainer.read_back(logged)
            self.trainer.check_finite()


class PlainContender:
    """(b): a hand-written loop over uint8 batches held in memory, calling the task's methods directly."""

    def __init__(self, trainer: Trainer, batches: list[torch.Tensor], seed: int) -> None:
        self.parts = copy_of_model(trainer)
        self.optimizer = plain_sgd(self.parts)
        self.batches, self.seed, self.device = batches, seed, trainer.device
        self.count = 0

    def prepare(self) -> None:
        pass

    def step(self) -> None:
        uint8 = self.batches[self.count % len(self.batches)]
        images = engine_layout(uint8.to(self.device, non_blocking=True).float().div_(255))  # (B, 3, S, S) in [0, 1]
        size, name = len(images), self.parts.task.name
        images = random_crop_flip(images, BatchRandom(self.seed, self.count, "base-augment", size, device=self.device))
        with autocast(self.device):
            random = BatchRandom(self.seed, self.count, name, size, device=self.device)
            loss = task_loss(self.parts, self.parts.task.pseudo_labels(images, random))
        descend(loss, self.optimizer)
        self.count += 1


class ClassicContender:
    """(c): per-image PIL/torchvision transforms in DataLoader workers, then the same step as (b)."""

    def __init__(self, trainer: Trainer, images: torch.Tensor, batch_size: int, workers: int, seed: int) -> None:
        self.parts = copy_of_model(trainer)
        self.optimizer = plain_sgd(self.parts)
        self.device = trainer.device
        self.recipe = recipe_for(self.parts.task, images.shape[-1])
        loader = DataLoader(
            PerImageDataset(images, self.recipe),
            batch_size=batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(seed),
        )
        # Batches a worker pool holds ready: ``prefetch_factor`` (2 by default) per worker.
        self.prefetched = workers * (loader.prefetch_factor or 2) if workers > 0 else 0
        self.batches = endless(loader)

    def prepare(self) -> None:
        # Drop what the workers made while the other contenders ran, then refill the pipeline with one step.
        for _ in range(self.prefetched):
            next(self.batches)
        if self.prefetched:
            self.step()

    def step(self) -> None:
        views, targets = next(self.batches)  # (B, V, C, h, w), per-image targets
        batch = PretextBatch(
            engine_layout(views.flatten(0, 1).to(self.device, non_blocking=True)),  # (B*V, C, h, w), sample-major
            self.recipe.batch_targets(targets).to(self.device, non_blocking=True),
            views=views.shape[1],
        )
        with autocast(self.device):
            loss = task_loss(self.parts, batch)
        descend(loss, self.optimizer)

    def close(self) -> None:
        self.batches.close()  # drops the DataLoader iterator, which shuts its workers down


def endless(loader: DataLoader[Any]) -> Iterator[Any]:
    while True:
        yield from loader


# --- per-image recipes of the classic pipeline ---------------------------------------------------------------------
class PerImageRecipe(Protocol):
    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        """One PIL image -> its views ``(V, C, h, w)`` (normalised) and its targets."""

    def batch_targets(self, targets: torch.Tensor) -> torch.Tensor:
        """Collated per-image targets ``(B, ...)`` -> the task's batch targets."""


def base_augmentation(size: int) -> T.Compose:
    """The engine's base augmentation per image: reflect-padded random crop (``S // 8`` px) and flip."""
    return T.Compose([T.RandomCrop(size, padding=max(1, size // 8), padding_mode="reflect"), T.RandomHorizontalFlip()])


def to_network_input() -> T.Compose:
    return T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])


class SimCLRViews:
    """Two independently augmented views per image (Chen et al. 2020, Appendix A)."""

    def __init__(self, size: int, settings: dict[str, Any]) -> None:
        strength = settings["strength"]
        jitter = T.ColorJitter(0.8 * strength, 0.8 * strength, 0.8 * strength, 0.2 * strength)
        steps: list[Any] = [
            T.RandomResizedCrop(size, scale=(settings["min_scale"], 1.0)),
            T.RandomHorizontalFlip(),
            T.RandomApply([jitter], p=settings["jitter_probability"]),
            T.RandomGrayscale(settings["gray_probability"]),
        ]
        if settings["blur"]:
            kernel = max(3, round(0.1 * size)) | 1  # 10% of the side, odd
            steps.append(T.RandomApply([T.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=0.5))
        self.base = base_augmentation(size)
        self.view = T.Compose([*steps, to_network_input()])

    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.base(image)
        # Each view's positive is the image's other view: local index 1 for view 0, 0 for view 1.
        return torch.stack([self.view(image), self.view(image)]), torch.tensor([1, 0])

    def batch_targets(self, targets: torch.Tensor) -> torch.Tensor:
        first_rows = 2 * torch.arange(len(targets))[:, None]  # (B, 1): row of each image's view 0
        return (first_rows + targets).flatten()  # (B*2,): the row of each view's positive


class JigsawTiles:
    """Nine tiles cut with PIL, shuffled by a permutation of the task's set (Noroozi & Favaro 2016's loader)."""

    def __init__(self, size: int, task: PretextTask) -> None:
        self.grid = task.grid  # type: ignore[attr-defined]  # the task's TileGrid for this image size
        self.permutations = task.permutations.numpy()  # type: ignore[attr-defined]  # (P, 9)
        self.gray_probability = float(task.hparams["gray_probability"])
        self.base = base_augmentation(size)
        self.tile_crop = T.RandomCrop(self.grid.tile)  # the random place of the tile in its cell

    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.base(image)
        if torch.rand(()) < self.gray_probability:
            image = image.convert("L").convert("RGB")
        grid, tiles = self.grid, []
        for cell in range(9):
            top, left = grid.start + grid.cell * (cell // 3), grid.start + grid.cell * (cell % 3)
            tile = TF.to_tensor(self.tile_crop(image.crop((left, top, left + grid.cell, top + grid.cell))))
            # Each tile normalised on its own, against low-level shortcuts (as their loader does).
            mean, std = tile.view(3, -1).mean(dim=1), tile.view(3, -1).std(dim=1)
            std[std == 0] = 1
            tiles.append(TF.normalize(tile, mean.tolist(), std.tolist()))
        order = int(torch.randint(len(self.permutations), ()))
        shuffled = torch.stack([tiles[cell] for cell in self.permutations[order]])  # (9, 3, t, t)
        return shuffled, torch.tensor(order)

    def batch_targets(self, targets: torch.Tensor) -> torch.Tensor:
        return targets  # (B,) permutation indices


class Rotations:
    """The four rotations of each image made with PIL (Gidaris et al. 2018), or one random one."""

    TRANSPOSES = (None, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)

    def __init__(self, size: int, all_rotations: bool) -> None:
        self.base = base_augmentation(size)
        self.to_input = to_network_input()
        self.all_rotations = all_rotations

    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.base(image)
        turns = list(range(4)) if self.all_rotations else [int(torch.randint(4, ()))]
        rotated = [image if self.TRANSPOSES[k] is None else image.transpose(self.TRANSPOSES[k]) for k in turns]
        return torch.stack([self.to_input(view) for view in rotated]), torch.tensor(turns)

    def batch_targets(self, targets: torch.Tensor) -> torch.Tensor:
        return targets.flatten()  # (B*V,)


def recipe_for(task: PretextTask, size: int) -> PerImageRecipe:
    if task.name == "simclr":
        return SimCLRViews(size, dict(task.hparams))
    if task.name == "jigsaw":
        return JigsawTiles(size, task)
    if task.name == "rotation":
        return Rotations(size, bool(task.hparams["all_rotations"]))
    raise ValueError(f"no per-image pipeline for task {task.name!r}; choose from {', '.join(RECIPE_TASKS)}")


RECIPE_TASKS = ("simclr", "jigsaw", "rotation")


class PerImageDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Decoded images held as HWC uint8 arrays and handed to the recipe as PIL images, as torchvision's CIFAR-10."""

    def __init__(self, images: torch.Tensor, recipe: PerImageRecipe) -> None:
        self.arrays = images.cpu().permute(0, 2, 3, 1).contiguous().numpy()  # (N, S, S, 3), on the host
        self.recipe = recipe

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.recipe(Image.fromarray(self.arrays[index]))


# --- one measurement -----------------------------------------------------------------------------------------------
@dataclass
class Options:
    tasks: list[str]
    backbones: list[str]
    batch_size: int
    steps: int
    repeats: int
    warmup: int
    workers: int
    device: torch.device
    seed: int
    peak: float | None
    settle: float = 1.0
    profile: int = 0


@dataclass
class Measurement:
    """Seconds per timed block of each contender, for one task and backbone."""

    task: str
    backbone: str
    image_size: int
    views: int
    seconds: dict[str, list[float]]
    flops_per_step: int

    def images_per_s(self, contender: str, options: Options) -> list[float]:
        return [options.batch_size * options.steps / s for s in self.seconds[contender]]


def make_trainer(task: str, backbone: str, options: Options, out: Path) -> Trainer:
    registry = get_host().registry
    config = PretrainConfig(
        tasks=[TaskSpec(task)],
        backbone=backbone,
        data="shapes",
        image_size=registry.get("task", task).obj.default_image_size,
        batch_size=options.batch_size,
        steps=options.warmup + options.repeats * options.steps,  # the schedule spans the benchmark
        optimizer="sgd",
        lr=LR,
        weight_decay=WEIGHT_DECAY,
        seed=options.seed,
        device=options.device.type,
        workers=options.workers,
        online_probe=False,
    )
    return Trainer(build_run(config, registry, out))


def count_flops(contender: PlainContender) -> int:
    """FLOPs of one training step (forward and backward of the networks), counted while (b) takes a step."""
    with FlopCounterMode(display=False) as counter:
        contender.step()
    return int(counter.get_total_flops())


def timed_blocks(contenders: dict[str, Contender], options: Options, label: str) -> dict[str, list[float]]:
    """Interleaved blocks, the order rotated every repeat (a b c, b c a, c a b, ...); seconds of each block.

    Before each block the machine is left idle for ``options.settle`` seconds: (c)'s DataLoader workers keep
    filling their prefetch queue after its block ends, and without the pause whichever contender comes next would
    pay for that work (in a fixed a, b, c order that is always (a)).
    """
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for repeat in range(options.repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            contender = contenders[name]
            contender.prepare()
            synchronize(options.device)
            time.sleep(options.settle)
            started = time.perf_counter()
            for _ in range(options.steps):
                contender.step()
            synchronize(options.device)
            seconds[name].append(time.perf_counter() - started)
        rates = ", ".join(f"({name}) {rate(options.batch_size * options.steps / seconds[name][-1])}" for name in names)
        print(f"  {label} repeat {repeat + 1}/{options.repeats}: images/s {rates}", flush=True)
    return seconds


def measure(task: str, backbone: str, options: Options) -> Measurement:
    label = f"{task}/{backbone}"
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(task, backbone, options, Path(tmp) / "run")
        images = trainer.stream.images
        if images is None:
            raise RuntimeError(f"{label}: the data set is not held in memory")
        first_batches = [batch for batch, _ in itertools.islice(trainer.stream.batches(0), options.steps)]
        engine = EngineContender(trainer)
        plain = PlainContender(trainer, first_batches, options.seed)
        classic = ClassicContender(trainer, images, options.batch_size, options.workers, options.seed)
        contenders: dict[str, Contender] = {"a": engine, "b": plain, "c": classic}
        try:
            print(f"{label}: {trainer.image_size} px, warm-up ({options.warmup} steps each)", flush=True)
            for contender in contenders.values():
                for _ in range(options.warmup):
                    contender.step()
            flops = count_flops(plain)
            seconds = timed_blocks(contenders, options, label)
            if options.profile:
                profile_contenders({"a": engine, "b": plain}, options, label)
        finally:
            classic.close()
        views = trainer.model.runtimes[0].task.views
    return Measurement(task, backbone, trainer.image_size, views, seconds, flops)


def profile_contenders(contenders: dict[str, Contender], options: Options, label: str) -> None:
    """``--profile N``: N more steps of each contender under ``torch.profiler`` (host and, on CUDA, device), printed
    as operators per step and the operators that take the most host time, to see where (a) spends what (b) does
    not. Profiled steps are slower than timed ones; only the comparison between the two is meant."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if options.device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    for name, contender in contenders.items():
        synchronize(options.device)
        start = time.perf_counter()
        with torch.profiler.profile(activities=activities) as profiler:
            for _ in range(options.profile):
                contender.step()
            synchronize(options.device)
        elapsed = time.perf_counter() - start
        averages = profiler.key_averages()
        operators = sum(event.count for event in averages if event.key.startswith("aten::"))
        print(
            f"{label} ({name}) under the profiler: {1000 * elapsed / options.profile:.1f} ms/step, "
            f"{operators / options.profile:.0f} aten operators/step",
            flush=True,
        )
        print(averages.table(sort_by="self_cpu_time_total", row_limit=15), flush=True)


# --- report --------------------------------------------------------------------------------------------------------
def rate(value: float) -> str:
    """Three significant figures or whole numbers: ``812``, ``81.2``, ``8.12``."""
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def spread(values: list[float]) -> str:
    """``median [min-max]``."""
    return f"{rate(statistics.median(values))} [{rate(min(values))}-{rate(max(values))}]"


def mfu(images_per_s: float, measurement: Measurement, options: Options) -> str:
    if options.peak is None:
        return "n/a"
    achieved = measurement.flops_per_step * images_per_s / options.batch_size
    return f"{100 * achieved / options.peak:.1f}%"


def markdown_table(measurements: list[Measurement], options: Options) -> str:
    header = [
        "task",
        "backbone",
        "px",
        "views/img",
        "GFLOP/step",
        *(f"{CONTENDERS[name]} img/s" for name in CONTENDERS),
        "(a)/(b)",
        "(a)/(c)",
    ]
    if options.peak is not None:
        header += [f"MFU ({name})" for name in CONTENDERS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for m in measurements:
        rates = {name: m.images_per_s(name, options) for name in CONTENDERS}
        medians = {name: statistics.median(values) for name, values in rates.items()}
        row = [
            m.task,
            m.backbone,
            str(m.image_size),
            str(m.views),
            f"{m.flops_per_step / 1e9:.1f}",
            *(spread(rates[name]) for name in CONTENDERS),
            f"{medians['a'] / medians['b']:.2f}",
            f"{medians['a'] / medians['c']:.2f}",
        ]
        if options.peak is not None:
            row += [mfu(medians[name], m, options) for name in CONTENDERS]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def paired_ratios(measurements: list[Measurement], options: Options) -> list[str]:
    """Per-repeat ratios of neighbouring blocks: less sensitive to load that drifts over the run."""
    lines = []
    for m in measurements:
        a, b, c = (m.images_per_s(name, options) for name in "abc")
        ab = [x / y for x, y in zip(a, b, strict=True)]
        ac = [x / y for x, y in zip(a, c, strict=True)]
        lines.append(
            f"- {m.task}/{m.backbone}: per-repeat (a)/(b) median {statistics.median(ab):.2f} "
            f"[{min(ab):.2f}-{max(ab):.2f}], (a)/(c) median {statistics.median(ac):.2f} [{min(ac):.2f}-{max(ac):.2f}]"
        )
    return lines


def machine_line(options: Options, load_before: tuple[float, ...]) -> str:
    load_after = os.getloadavg()
    peak = f", peak bf16 {options.peak / 1e12:.1f} TFLOP/s" if options.peak is not None else ""
    return (
        f"Machine: {device_name(options.device)}{peak}; {os.cpu_count()} CPUs, torch threads "
        f"{torch.get_num_threads()}; torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"Python {platform.python_version()}; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after; "
        f"{datetime.date.today().isoformat()}."
    )


def settings_line(options: Options) -> str:
    precision = "bf16 autocast" if options.device.type == "cuda" else "float32"
    return (
        f"Batch {options.batch_size} images, {options.warmup} warm-up steps, then {options.repeats} interleaved "
        f"repeats of {options.steps} steps per contender; (c) with {options.workers} DataLoader workers; "
        f"{precision}; cells: median images/s [min-max over repeats]; ratios of the medians."
    )


# --- command line --------------------------------------------------------------------------------------------------
def parse_options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="simclr,jigsaw,rotation", help=f"comma-separated, of {RECIPE_TASKS}")
    parser.add_argument(
        "--backbones",
        default="smallconv",
        help="comma-separated, e.g. smallconv,resnet18,timm:vit_tiny_patch16_224 (a ViT, patch 4 at 32 px)",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks per contender")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per contender first")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of (c)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peak-flops", type=float, help="peak FLOP/s of the device for MFU (default: by name)")
    parser.add_argument(
        "--settle", type=float, default=1.0, help="idle seconds before each timed block (lets workers finish)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads of the training process (default: torch's); on a shared, loaded machine 1 avoids "
        "threads waiting for each other",
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="after timing, profile N steps of (a) and (b) with torch.profiler and print where the time goes",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tasks = [name.strip() for name in args.tasks.split(",") if name.strip()]
    unknown = [name for name in tasks if name not in RECIPE_TASKS]
    if unknown:
        parser.error(f"no per-image pipeline for {', '.join(unknown)}; choose from {', '.join(RECIPE_TASKS)}")
    if min(args.steps, args.repeats, args.batch_size) < 1 or min(args.warmup, args.workers) < 0:
        parser.error("--steps, --repeats and --batch-size must be positive; --warmup and --workers not negative")
    device = pick_device(args.device)
    return Options(
        tasks=tasks,
        backbones=[name.strip() for name in args.backbones.split(",") if name.strip()],
        batch_size=args.batch_size,
        steps=args.steps,
        repeats=args.repeats,
        warmup=args.warmup,
        workers=args.workers,
        device=device,
        seed=args.seed,
        peak=peak_flops(device, args.peak_flops),
        settle=args.settle,
        profile=max(0, args.profile),
    )


def main(argv: list[str] | None = None) -> None:
    options = parse_options(argv)
    load_before = os.getloadavg()
    print("command: python " + " ".join(sys.argv), flush=True)
    measurements = [measure(task, backbone, options) for backbone in options.backbones for task in options.tasks]
    print()
    print(machine_line(options, load_before))
    print(settings_line(options))
    print()
    print(markdown_table(measurements, options))
    print()
    print("\n".join(paired_ratios(measurements, options)))


if __name__ == "__main__":
    main()
