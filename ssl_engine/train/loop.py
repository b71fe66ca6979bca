"""The pretraining loop: reads top to bottom, one step as in ``ssl_engine.task``'s diagram."""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ssl_engine import __version__
from ssl_engine.checkpoint import (
    LoadedCheckpoint,
    checkpoint_path,
    latest_checkpoint,
    optimizer_tensors,
    read_checkpoint,
    restore_optimizer,
    restore_rng,
    rng_tensors,
    write_atomic,
)
from ssl_engine.config import PretrainConfig
from ssl_engine.data.augment import random_crop_flip
from ssl_engine.data.batches import IN_MEMORY_LIMIT_BYTES, BatchStream, materialize
from ssl_engine.data.catalog import resolve_data
from ssl_engine.data.options import DataOptions
from ssl_engine.images import to_float
from ssl_engine.randomness import BatchRandom
from ssl_engine.registry import Registry
from ssl_engine.train.model import PretrainModel, resolve_image_size, task_classes
from ssl_engine.train.optim import DEFAULT_LR, make_optimizer
from ssl_engine.train.progress import Progress
from ssl_engine.train.schedule import warmup_cosine

DEFAULT_STEPS = 600


class RunDirectoryError(ValueError):
    """The run directory can't be used as asked (exists without --resume, nothing to resume, ...)."""


def pick_device(requested: str) -> torch.device:
    """``auto`` -> CUDA, else MPS, else CPU; an explicit device that isn't there is an error."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but CUDA is not available")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps was asked for but MPS is not available")
    return torch.device(requested)


@dataclass
class RunResult:
    """What a finished run reports."""

    run_dir: Path
    steps: int
    final: dict[str, float] = field(default_factory=dict)
    probe: dict[str, Any] | None = None


def prepare_run_dir(out: Path, resume: bool) -> LoadedCheckpoint | None:
    """Create ``out`` for a new run, or find its latest checkpoint for ``--resume``."""
    if resume:
        if not (out / "config.json").exists():
            raise RunDirectoryError(f"--resume: {out} is not a run directory (no config.json)")
        latest = latest_checkpoint(out)
        return read_checkpoint(latest) if latest is not None else None
    if out.exists() and any(out.iterdir()):
        raise RunDirectoryError(
            f"run directory {out} already exists; pass --resume to continue it or pick another --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    return None


def total_steps(config: PretrainConfig, steps_per_epoch: int) -> int:
    """``--steps``, else ``--epochs`` worth of steps, else :data:`DEFAULT_STEPS`."""
    if config.steps is not None:
        return config.steps
    if config.epochs is not None:
        return max(1, round(config.epochs * steps_per_epoch))
    return DEFAULT_STEPS


class Trainer:
    """Builds everything a run needs from its config, then trains.

    Args:
        config: the resolved run config.
        registry: plugins' registry.
        out: the run directory.
        resume: continue from the latest checkpoint in ``out``.
    """

    def __init__(self, config: PretrainConfig, registry: Registry, out: Path, resume: bool = False) -> None:
        self.config, self.registry, self.out = config, registry, out
        self.device = pick_device(config.device)
        task_classes(config, registry)  # names and mix checked before anything is created
        self.image_size = resolve_image_size(config, registry)
        registry.get("backbone", config.backbone)
        self.source = resolve_data(
            config.data,
            registry,
            DataOptions(Path(config.data_dir) if config.data_dir else None, config.download),
        )
        for spec in config.tasks:
            registry.get("task", spec.name).obj.check_images(self.image_size, self.source.color)
        # Building the model validates settings, heads and losses; it is cheap, so it comes before the run
        # directory is touched and before the data is read.
        torch.manual_seed(config.seed)
        self.model = PretrainModel(config, registry, self.image_size).to(self.device)
        self.resumed = prepare_run_dir(out, resume)
        if resume:
            self._check_resumable()
        self.lr = config.lr if config.lr is not None else DEFAULT_LR.get(config.optimizer, 0.05)
        self.optimizer = make_optimizer(
            config.optimizer, self.model.main_parameters_modules(), self.lr, config.weight_decay
        )
        self.aux_optimizers = {
            runtime.spec.name: make_optimizer(config.optimizer, [runtime.aux], self.lr, config.weight_decay)
            for runtime in self.model.runtimes
            if any(True for _ in runtime.aux.parameters())
        }
        dataset = self.source.split(self.source.pretrain_split, self.image_size)
        in_memory = len(dataset) * 3 * self.image_size**2 <= IN_MEMORY_LIMIT_BYTES  # type: ignore[arg-type]
        images, labels = materialize(dataset) if in_memory else (None, None)
        self.stream = BatchStream(
            dataset, config.batch_size, config.seed, workers=config.workers, images=images, labels=labels
        )
        self.total = total_steps(config, self.stream.steps_per_epoch)
        self.step = 0
        if self.resumed is not None:
            self._restore(self.resumed)

    def _check_resumable(self) -> None:
        saved = json.loads((self.out / "config.json").read_text())
        mine = json.loads(self.config.to_json())
        # The budget and logging frequency may change on resume; anything else would make a different run.
        free = {"steps", "epochs", "log_every", "checkpoint_every", "probe", "device", "workers"}
        changed = sorted(key for key in mine if key not in free and saved.get(key) != mine[key])
        if changed:
            details = "; ".join(f"{key}: {saved.get(key)!r} -> {mine[key]!r}" for key in changed)
            raise RunDirectoryError(f"--resume with a different config ({details})")

    def _restore(self, checkpoint: LoadedCheckpoint) -> None:
        self.model.backbone.load_state_dict(checkpoint.module_state("model"))
        for name in self.model.task_modules:
            self.model.task_modules[name].load_state_dict(checkpoint.module_state(f"task/{name}"))
            self.model.aux_modules[name].load_state_dict(checkpoint.module_state(f"aux/{name}"))
        groups = json.loads(checkpoint.metadata["optim"])
        restore_optimizer(self.optimizer, "optim/main", checkpoint.tensors, groups["main"])
        for name, optimizer in self.aux_optimizers.items():
            restore_optimizer(optimizer, f"optim/aux/{name}", checkpoint.tensors, groups[name])
        restore_rng(checkpoint.tensors, checkpoint.metadata["python_rng"])
        self.step = checkpoint.step

    def save_checkpoint(self) -> Path:
        tensors = self.model.state_tensors()
        main_tensors, main_groups = optimizer_tensors("optim/main", self.optimizer)
        tensors |= main_tensors
        groups = {"main": main_groups}
        for name, optimizer in self.aux_optimizers.items():
            aux_tensors, groups[name] = optimizer_tensors(f"optim/aux/{name}", optimizer)
            tensors |= aux_tensors
        random_tensors, python_rng = rng_tensors()
        tensors |= random_tensors
        path = checkpoint_path(self.out, self.step)
        write_atomic(
            path,
            tensors,
            {
                "step": str(self.step),
                "config": self.config.to_json(),
                "image_size": str(self.image_size),
                "optim": json.dumps(groups),
                "python_rng": python_rng,
                "sslx_version": __version__,
            },
        )
        (self.out / "latest").write_text(path.name + "\n")
        return path

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self, images_uint8: torch.Tensor) -> dict[str, float]:
        """One optimisation step on a uint8 batch ``(B, 3, S, S)``; returns the logged scalars."""
        config, step = self.config, self.step
        scale = warmup_cosine(step, self.total, round(config.warmup_fraction * self.total))
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * scale
        images = to_float(images_uint8.to(self.device, non_blocking=True))  # (B, 3, S, S) in [0, 1]
        batch = len(images)
        images = random_crop_flip(images, BatchRandom(config.seed, step, "base-augment", batch, device=self.device))
        self.model.train()
        logged: dict[str, float] = {"lr": self.lr * scale}
        total = torch.zeros((), device=self.device)
        outputs = []
        with self.autocast():
            for runtime in self.model.runtimes:
                name = runtime.spec.name
                random = BatchRandom(config.seed, step, name, batch, device=self.device)
                pretext = runtime.task.pseudo_labels(images, random)
                output = runtime.task.forward(self.model.backbone, runtime.modules, runtime.aux, pretext)
                task_loss = runtime.task.weighted_total(output.losses)
                total = total + runtime.spec.weight * task_loss
                outputs.append((runtime, pretext, output))
                logged[f"{name}/loss"] = float(task_loss.detach())
                logged |= {f"{name}/{term}": float(value.detach()) for term, value in output.losses.items()}
                logged |= {f"{name}/{metric}": float(value) for metric, value in output.metrics.items()}
        if not torch.isfinite(total):
            raise FloatingPointError(f"loss became {float(total)} at step {step}; lower --lr")
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        logged["loss"] = float(total.detach())
        # Auxiliary modules (discriminators) step after the main networks, on detached outputs.
        for runtime, pretext, output in outputs:
            aux_optimizer = self.aux_optimizers.get(runtime.spec.name)
            if aux_optimizer is None:
                continue
            for group in aux_optimizer.param_groups:
                group["lr"] = self.lr * scale
            with self.autocast():
                aux_terms = runtime.task.aux_losses(runtime.aux, pretext, output)
            if aux_terms:
                aux_optimizer.zero_grad(set_to_none=True)
                sum(aux_terms.values(), torch.zeros((), device=self.device)).backward()
                aux_optimizer.step()
                logged |= {f"{runtime.spec.name}/{term}": float(value.detach()) for term, value in aux_terms.items()}
        self.step += 1
        return logged

    def headline(self, logged: dict[str, float]) -> dict[str, float]:
        """The few numbers the progress bar shows: loss and each task's pretext metric."""
        shown = {"loss": logged["loss"]}
        for runtime in self.model.runtimes:
            key = f"{runtime.spec.name}/{runtime.task.metric}"
            if key in logged:
                shown[key if len(self.model.runtimes) > 1 else runtime.task.metric] = logged[key]
        return shown

    def train(self) -> RunResult:
        """Run from the current step to the end of the budget, logging and checkpointing as configured."""
        if self.resumed is None:
            (self.out / "config.json").write_text(self.config.to_json() + "\n")
        progress = Progress(self.total, start=self.step, every=self.config.log_every)
        logged: dict[str, float] = {}
        last = time.perf_counter()
        with open(self.out / "metrics.jsonl", "a") as metrics:
            for images, _ in self.stream.batches(self.step):
                if self.step >= self.total:
                    break
                logged = self.train_step(images)
                now = time.perf_counter()
                images_per_s = len(images) / max(now - last, 1e-9)
                last = now
                if self.step % self.config.log_every == 0 or self.step == self.total:
                    metrics.write(json.dumps({"step": self.step, "images_per_s": images_per_s, **logged}) + "\n")
                    metrics.flush()
                progress.update(self.step, self.headline(logged), images_per_s)
                if self.step % self.config.checkpoint_every == 0 and self.step < self.total:
                    self.save_checkpoint()
        progress.close()
        self.save_checkpoint()
        return RunResult(self.out, self.step, {k: v for k, v in logged.items() if k != "lr"})
