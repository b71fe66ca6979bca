"""The pretraining loop: reads top to bottom, one step as in ``ssl_engine.task``'s diagram."""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

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
from ssl_engine.distributed import (
    World,
    average_gradients,
    barrier,
    init_from_env,
    max_over_ranks,
    mean_over_ranks,
)
from ssl_engine.images import to_float
from ssl_engine.registry import Registry
from ssl_engine.train.interrupt import StopRequest, TrainingInterrupted
from ssl_engine.train.metrics_log import MetricsLog
from ssl_engine.train.model import PretrainModel, RunSetupError, resolve_image_size, task_classes
from ssl_engine.train.online_probe import OnlineProbe, count_classes
from ssl_engine.train.optim import DEFAULT_LR, make_optimizer
from ssl_engine.train.progress import Progress
from ssl_engine.train.schedule import warmup_cosine
from ssl_engine.train.step import PretextStep, StepResult, StepSlice
from ssl_engine.train.sync_batchnorm import convert_to_global_batchnorm

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


def prepare_run_dir(out: Path, resume: bool, create: bool = True) -> LoadedCheckpoint | None:
    """Create ``out`` for a new run (only checked when ``create`` is False: ranks other than 0), or find its
    latest complete checkpoint for ``--resume``."""
    if resume:
        saved_config(out)
        return latest_complete_checkpoint(out)
    if out.exists() and any(out.iterdir()):
        raise RunDirectoryError(
            f"run directory {out} already exists; pass --resume to continue it or pick another --out"
        )
    if create:
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
        self.world: World = init_from_env(self.device.type)
        if self.device.type == "cuda" and self.world.distributed:
            self.device = torch.device("cuda", self.world.local_rank)
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
        model = PretrainModel(config, registry, self.image_size)
        if config.sync_bn and self.world.distributed:
            convert_to_global_batchnorm(model, self.device.type)
        self.model = model.to(self.device)
        if self.device.type == "cuda":
            self.model.to(memory_format=torch.channels_last)
        for runtime in self.model.runtimes:
            # The kept config pins every setting's parsed value, defaults included, so it reproduces the run.
            runtime.spec.settings = dict(runtime.task.config)
        dataset = self.source.split(self.source.pretrain_split, self.image_size)  # opened (and checked), not read
        if resume:
            check_resume_changes(saved_config(out), config, force)
        self.resumed = prepare_run_dir(out, resume, create=self.world.is_main)
        barrier(self.world)  # every rank has checked the directory before rank 0 writes into it
        base_lr = config.lr if config.lr is not None else DEFAULT_LR.get(config.optimizer, 0.05)
        # Linear scaling rule (Goyal et al. 2017): the given lr is that of one process's batch.
        self.lr = base_lr * (self.world.size if config.scale_lr else 1)
        self.optimizer = make_optimizer(
            config.optimizer, self.model.main_parameters_modules(), self.lr, config.weight_decay
        )
        self.aux_optimizers = {
            runtime.spec.name: make_optimizer(config.optimizer, [runtime.aux], self.lr, config.weight_decay)
            for runtime in self.model.runtimes
            if any(True for _ in runtime.aux.parameters())
        }
        self.stream = BatchStream.for_dataset(
            dataset,
            config.batch_size,
            config.seed,
            workers=config.workers,
            device=self.device,
            rank=self.world.rank,
            world=self.world.size,
        )
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
        self.forward_step = PretextStep(self.model)
        if config.compile:
            self.model.backbone.compile()
            for modules in self.model.task_modules.values():
                for module in modules.values():  # type: ignore[operator]
                    module.compile()
        self.step_module: torch.nn.Module = self.forward_step
        if self.world.distributed:
            # Several tasks may leave parameters unused in a step (a head of a task whose loss weight is 0);
            # DDP must then look for them rather than wait for their gradients forever.
            self.step_module = DistributedDataParallel(
                self.forward_step,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True,
            )
        # Per task: the first step whose loss was not finite (0: none yet), kept on the device.
        self._first_non_finite = torch.zeros(len(self.model.runtimes), dtype=torch.long, device=self.device)

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
        if self.world.is_main:
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
        """One optimisation step on a uint8 batch ``(B, 3, S, S)``, its logged values read back (a host sync;
        the loop itself reads back only every ``log_every`` steps). Labels only feed the online probe."""
        return self.read_back(self.device_step(images_uint8, labels))

    def device_step(
        self, images_uint8: torch.Tensor, labels: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor | float]:
        """One optimisation step, with no host-device synchronisation: the logged values stay 0-d tensors on
        the device (the lr is a float)."""
        config, step = self.config, self.step
        scale = warmup_cosine(step, self.total, round(config.warmup_fraction * self.total))
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * scale
        images = to_float(images_uint8.to(self.device, non_blocking=True))  # (B, 3, S, S) in [0, 1]
        if self.device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        batch = len(images)
        where = StepSlice(config.seed, step, batch * self.world.size, batch * self.world.rank)
        images = random_crop_flip(images, where.random("base-augment", batch, self.device))
        self.model.train()
        with self.autocast():
            result: StepResult = self.step_module(images, where)
        finite = torch.stack([torch.isfinite(loss.detach()).all() for loss in result.task_losses.values()])
        self._first_non_finite = torch.where(
            (self._first_non_finite == 0) & ~finite, torch.full_like(self._first_non_finite, step + 1),
            self._first_non_finite,
        )  # fmt: skip
        self.optimizer.zero_grad(set_to_none=True)
        result.total.backward()
        self.optimizer.step()
        logged: dict[str, torch.Tensor | float] = {"lr": self.lr * scale, **result.logged}
        if self.online_probe is not None and labels is not None:
            logged |= self.online_probe.step(self.model.representation(), images, labels.to(self.device), self.world)
        # Auxiliary modules (discriminators) step after the main networks, on detached outputs.
        for runtime, pretext, output in result.outputs:
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
                average_gradients(runtime.aux, self.world)
                aux_optimizer.step()
                logged |= {f"{runtime.spec.name}/{term}": value.detach() for term, value in aux_terms.items()}
        self.step += 1
        return logged

    def check_finite(self, logged: dict[str, float] | None = None) -> None:
        """Raise :class:`FloatingPointError` naming the task and the first step whose loss was not finite (on any
        process: every rank takes the same decision, so none waits for the others forever)."""
        first = max_over_ranks(self._first_non_finite, self.world).tolist()
        bad = [(step, runtime.spec.name) for step, runtime in zip(first, self.model.runtimes, strict=True) if step]
        if not bad:
            return
        step, name = min(bad)
        terms = ", ".join(f"{k}={v:.4g}" for k, v in (logged or {}).items() if k.startswith(f"{name}/"))
        raise FloatingPointError(
            f"non-finite loss of task {name!r} at step {step} (logged at step {self.step}: {terms or 'n/a'}); "
            f"no checkpoint was written after it (try a lower --lr)"
        )

    def read_back(self, logged: dict[str, torch.Tensor | float]) -> dict[str, float]:
        """The logged values as floats, averaged over all processes: one copy from the device for all of them."""
        keys = [key for key, value in logged.items() if isinstance(value, torch.Tensor)]
        values: dict[str, float] = {key: value for key, value in logged.items() if not isinstance(value, torch.Tensor)}
        if keys:
            stacked = torch.stack([logged[key].float().reshape(()) for key in keys])  # type: ignore[union-attr]
            values |= dict(zip(keys, mean_over_ranks(stacked, self.world).tolist(), strict=True))
        return values

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

    def agreed_stop(self, stop: StopRequest) -> int | None:
        """The signal that asks the run to stop, if any. One process: as soon as it arrives. Under torchrun the
        processes agree at the next ``log_every`` step (a signal seen by any rank stops all of them at the same
        step), so none is left waiting in a collective for ranks that have already left."""
        if not self.world.distributed:
            return stop.signal_number
        if self.step % self.config.log_every:
            return None
        seen = torch.tensor([stop.signal_number or 0], device=self.device)
        agreed = int(max_over_ranks(seen, self.world).item())
        return agreed or None

    def train(self) -> RunResult:
        """Run from the current step to the end of the budget, logging and checkpointing as configured.

        Values are read back from the device only every ``log_every`` steps (and before a checkpoint), so the
        accelerator never waits for the host inside that span. Only rank 0 writes files and shows progress.
        """
        main = self.world.is_main
        if main:  # written on resume too, so the kept config shows the budget the run now has
            (self.out / CONFIG_FILE).write_text(self.config.to_toml())
        progress = Progress(self.total, start=self.step, every=self.config.log_every, enabled=main)
        logged: dict[str, float] = {}
        since, images_since = time.perf_counter(), 0
        stop = StopRequest()
        with MetricsLog(self.out, enabled=main) as metrics, stop.installed():
            for images, labels in self.stream.batches(self.step):
                if self.step >= self.total:
                    break
                signal_number = self.agreed_stop(stop)
                if signal_number is not None:
                    progress.close()
                    self.check_finite()
                    if main:
                        self.save_checkpoint()
                    raise TrainingInterrupted(signal_number, self.step)
                on_device = self.device_step(images, labels)
                images_since += len(images) * self.world.size
                last = self.step == self.total
                if self.step % self.config.log_every == 0 or last:
                    logged = self.read_back(on_device)
                    self.check_finite(logged)
                    now = time.perf_counter()
                    images_per_s = images_since / max(now - since, 1e-9)
                    since, images_since = now, 0
                    metrics.write(self.step, {"images_per_s": images_per_s, **logged})
                    progress.update(self.step, self.headline(logged), images_per_s)
                else:
                    progress.advance(self.step)
                if self.step % self.config.checkpoint_every == 0 and not last:
                    self.check_finite()
                    if main:
                        self.save_checkpoint()
        progress.close()
        self.check_finite(logged)
        if main:
            self.save_checkpoint()
        barrier(self.world)  # no rank reads the final checkpoint before it is written
        return RunResult(self.out, self.step, {k: v for k, v in logged.items() if k != "lr"})
