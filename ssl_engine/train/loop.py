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
    latest_complete_checkpoint,
    module_tensors,
    optimizer_tensors,
    prune_checkpoints,
    restore_optimizer,
    restore_rng,
    rng_tensors,
    write_atomic,
)
from ssl_engine.config import CONFIG_FILE, RESUMABLE_CHANGES, PretrainConfig
from ssl_engine.data.augment import random_crop_flip
from ssl_engine.data.batches import BatchStream
from ssl_engine.data.catalog import resolve_data
from ssl_engine.data.options import DataOptions
from ssl_engine.images import to_float
from ssl_engine.randomness import BatchRandom
from ssl_engine.registry import Registry
from ssl_engine.train.interrupt import StopRequest, TrainingInterrupted
from ssl_engine.train.metrics_log import MetricsLog
from ssl_engine.train.model import PretrainModel, RunSetupError, resolve_image_size, task_classes
from ssl_engine.train.online_probe import OnlineProbe, count_classes
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


def saved_config(out: Path) -> PretrainConfig:
    """The resolved config kept in a run directory (for ``--resume``)."""
    if not (out / CONFIG_FILE).is_file():
        raise RunDirectoryError(f"--resume: {out} is not a run directory (no {CONFIG_FILE})")
    return PretrainConfig.load(out / CONFIG_FILE)


def check_resume_changes(saved: PretrainConfig, config: PretrainConfig, force: bool) -> None:
    """Refuse a resume whose config differs in anything but budget, logging and placement (unless ``force``)."""
    changed = [(key, old, new) for key, old, new in saved.differences(config) if key not in RESUMABLE_CHANGES]
    if changed and not force:
        details = "; ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in changed)
        raise RunDirectoryError(f"--resume would change the run ({details}); pass --force to accept")


def prepare_run_dir(out: Path, resume: bool) -> LoadedCheckpoint | None:
    """Create ``out`` for a new run, or find its latest complete checkpoint for ``--resume``."""
    if resume:
        saved_config(out)
        return latest_complete_checkpoint(out)
    if out.exists() and any(out.iterdir()):
        raise RunDirectoryError(
            f"run directory {out} already exists; pass --resume to continue it or pick another --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    return None


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the metric lines up to ``step``: later ones belong to steps a resumed run trains again (a line cut
    short by a crash is dropped too)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError):
            continue
    path.write_text("".join(line + "\n" for line in kept))


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

    def __init__(
        self, config: PretrainConfig, registry: Registry, out: Path, resume: bool = False, force: bool = False
    ) -> None:
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
        for runtime in self.model.runtimes:
            # The kept config pins every setting's parsed value, defaults included, so it reproduces the run.
            runtime.spec.settings = dict(runtime.task.config)
        dataset = self.source.split(self.source.pretrain_split, self.image_size)  # opened (and checked), not read
        if resume:
            check_resume_changes(saved_config(out), config, force)
        self.resumed = prepare_run_dir(out, resume)
        self.lr = config.lr if config.lr is not None else DEFAULT_LR.get(config.optimizer, 0.05)
        self.optimizer = make_optimizer(
            config.optimizer, self.model.main_parameters_modules(), self.lr, config.weight_decay
        )
        self.aux_optimizers = {
            runtime.spec.name: make_optimizer(config.optimizer, [runtime.aux], self.lr, config.weight_decay)
            for runtime in self.model.runtimes
            if any(True for _ in runtime.aux.parameters())
        }
        self.stream = BatchStream.for_dataset(dataset, config.batch_size, config.seed, workers=config.workers)
        self.total = total_steps(config, self.stream.steps_per_epoch)
        self.online_probe: OnlineProbe | None = None
        if config.online_probe:
            if not self.source.labelled:
                raise RunSetupError(f"--online-probe needs labels; data {config.data!r} has none")
            classes = count_classes(dataset, self.stream.labels)
            self.online_probe = OnlineProbe(self.model.representation().feature_dim, classes).to(self.device)
        self.step = 0
        if self.resumed is not None:
            self._restore(self.resumed)

    def _restore(self, checkpoint: LoadedCheckpoint) -> None:
        self.model.backbone.load_state_dict(checkpoint.module_state("model"))
        for name in self.model.task_modules:
            self.model.task_modules[name].load_state_dict(checkpoint.module_state(f"task/{name}"))
            self.model.aux_modules[name].load_state_dict(checkpoint.module_state(f"aux/{name}"))
        groups = json.loads(checkpoint.metadata["optim"])
        restore_optimizer(self.optimizer, "optim/main", checkpoint.tensors, groups["main"])
        for name, optimizer in self.aux_optimizers.items():
            restore_optimizer(optimizer, f"optim/aux/{name}", checkpoint.tensors, groups[name])
        if self.online_probe is not None and "probe" in groups:
            self.online_probe.load_state_dict(checkpoint.module_state("probe"))
            restore_optimizer(self.online_probe.optimizer, "optim/probe", checkpoint.tensors, groups["probe"])
        restore_rng(checkpoint.tensors, checkpoint.metadata["python_rng"])
        self.step = checkpoint.step
        truncate_metrics(self.out / "metrics.jsonl", self.step)

    def save_checkpoint(self) -> Path:
        tensors = self.model.state_tensors()
        main_tensors, main_groups = optimizer_tensors("optim/main", self.optimizer)
        tensors |= main_tensors
        groups = {"main": main_groups}
        for name, optimizer in self.aux_optimizers.items():
            aux_tensors, groups[name] = optimizer_tensors(f"optim/aux/{name}", optimizer)
            tensors |= aux_tensors
        if self.online_probe is not None:
            tensors |= module_tensors("probe", self.online_probe.state_dict())
            probe_tensors, groups["probe"] = optimizer_tensors("optim/probe", self.online_probe.optimizer)
            tensors |= probe_tensors
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
        prune_checkpoints(self.out, self.config.keep_checkpoints)
        return path

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self, images_uint8: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, float]:
        """One optimisation step on a uint8 batch ``(B, 3, S, S)`` (labels only feed the online probe)."""
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
                if not torch.isfinite(task_loss):
                    terms = ", ".join(f"{term}={float(value):.4g}" for term, value in output.losses.items())
                    raise FloatingPointError(
                        f"non-finite loss of task {name!r} at step {step + 1} ({terms}); nothing was saved for "
                        f"this step (try a lower --lr)"
                    )
                total = total + runtime.spec.weight * task_loss
                outputs.append((runtime, pretext, output))
                logged[f"{name}/loss"] = float(task_loss.detach())
                logged |= {f"{name}/{term}": float(value.detach()) for term, value in output.losses.items()}
                logged |= {f"{name}/{metric}": float(value) for metric, value in output.metrics.items()}
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        logged["loss"] = float(total.detach())
        if self.online_probe is not None and labels is not None:
            logged |= self.online_probe.step(self.model.representation(), images, labels.to(self.device))
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
        if "probe/accuracy" in logged:
            shown["probe"] = logged["probe/accuracy"]
        return shown

    def train(self) -> RunResult:
        """Run from the current step to the end of the budget, logging and checkpointing as configured."""
        # Written on resume too, so the kept config shows the budget the run now has.
        (self.out / CONFIG_FILE).write_text(self.config.to_toml())
        progress = Progress(self.total, start=self.step, every=self.config.log_every)
        logged: dict[str, float] = {}
        last = time.perf_counter()
        stop = StopRequest()
        with MetricsLog(self.out) as metrics, stop.installed():
            for images, labels in self.stream.batches(self.step):
                if self.step >= self.total:
                    break
                if stop.signal_number is not None:
                    progress.close()
                    self.save_checkpoint()
                    raise TrainingInterrupted(stop.signal_number, self.step)
                logged = self.train_step(images, labels)
                now = time.perf_counter()
                images_per_s = len(images) / max(now - last, 1e-9)
                last = now
                if self.step % self.config.log_every == 0 or self.step == self.total:
                    metrics.write(self.step, {"images_per_s": images_per_s, **logged})
                progress.update(self.step, self.headline(logged), images_per_s)
                if self.step % self.config.checkpoint_every == 0 and self.step < self.total:
                    self.save_checkpoint()
        progress.close()
        self.save_checkpoint()
        return RunResult(self.out, self.step, {k: v for k, v in logged.items() if k != "lr"})
