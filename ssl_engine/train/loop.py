"""The pretraining loop: reads top to bottom, one step as in ``ssl_engine.task``'s diagram.

It consumes a :class:`~ssl_engine.run.Run` (built and validated by :func:`~ssl_engine.run.build_run`) and adds only
what training needs: the optimizers, the online probe, DDP, the resumed optimizer and generator states::

    run = build_run(config, registry, out, resume=...)   # validated, model restored, stream ready
    Trainer(run).train()                                 # steps, logging, checkpoints
"""

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
    CheckpointError,
    LoadedCheckpoint,
    checkpoint_path,
    checkpoint_paths,
    load_module_state,
    module_tensors,
    optimizer_tensors,
    prune_checkpoints,
    restore_optimizer,
    restore_rng,
    rng_tensors,
    write_atomic,
    write_latest,
)
from ssl_engine.distributed import average_gradients, barrier, max_over_ranks, mean_over_ranks
from ssl_engine.images import to_float
from ssl_engine.plugin_failure import PluginCodeError
from ssl_engine.run import Run
from ssl_engine.run_directory import METRICS_FILE, set_aside, truncate_metrics, write_config
from ssl_engine.train.interrupt import StopRequest, TrainingInterrupted
from ssl_engine.train.memory_format import uses_channels_last
from ssl_engine.train.metrics_log import MetricsLog
from ssl_engine.train.online_probe import OnlineProbe, count_classes
from ssl_engine.train.optim import make_optimizer
from ssl_engine.train.progress import Progress
from ssl_engine.train.schedule import warmup_cosine
from ssl_engine.train.step import PretextStep, StepResult, StepSlice

# The gradient scalers' states in the checkpoint's ``optim`` metadata (a "/" can't be in a task's name).
SCALERS_KEY = "amp/scalers"


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the message names the file, the cause and the last good checkpoint."""

    def __init__(self, path: Path, error: BaseException, last_good: str) -> None:
        cause = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        super().__init__(f"cannot write checkpoint {path}: {cause}; {last_good}")


@dataclass
class RunResult:
    """What a finished run reports."""

    run_dir: Path
    steps: int
    final: dict[str, float] = field(default_factory=dict)
    probe: dict[str, Any] | None = None


class Trainer:
    """Trains a :class:`~ssl_engine.run.Run` from its current step to the end of its budget.

    Args:
        run: the assembled run (with ``out`` and ``stream``); its model is trained in place.

    Raises:
        CheckpointError: the checkpoint the run resumed from holds optimizer or generator states that do not fit.
    """

    def __init__(self, run: Run) -> None:
        if run.out is None or run.stream is None or run.source is None:
            raise ValueError("Trainer needs a run built by build_run (with a run directory and a batch stream)")
        self.run = run
        self.config, self.model, self.device, self.world = run.config, run.model, run.device, run.world
        self.out: Path = run.out
        self.stream = run.stream
        self.source = run.source
        self.image_size, self.total, self.lr = run.image_size, run.total_steps, run.lr
        config = self.config
        self.loggers = list(run.loggers)  # resolved (and an unknown name refused) by build_run
        self.optimizer = make_optimizer(
            run.optimizer, self.model.main_parameters_modules(), self.lr, config.weight_decay
        )
        self.aux_optimizers = {
            runtime.spec.name: make_optimizer(run.optimizer, [runtime.aux], self.lr, config.weight_decay)
            for runtime in self.model.runtimes
            if any(True for _ in runtime.aux.parameters())
        }
        # One gradient scaler per optimizer under --precision 16-mixed (none otherwise); saved with the checkpoint.
        self.scalers: dict[str, torch.amp.GradScaler] = {}
        if run.precision.scaled:
            for name in ["main", *self.aux_optimizers]:
                scaler = run.precision.scaler()
                assert scaler is not None
                self.scalers[name] = scaler
        self.online_probe: OnlineProbe | None = None
        if config.online_probe:
            dataset = self.source.split(self.source.pretrain_split, self.image_size)
            classes = count_classes(dataset, self.stream.labels)
            self.online_probe = OnlineProbe(self.model.representation().feature_dim, classes).to(self.device)
        self.step = 0
        if run.checkpoint is not None:
            self._restore_training_state(run.checkpoint)
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

    def _restore_training_state(self, checkpoint: LoadedCheckpoint) -> None:
        """The optimizers, online probe and generators of ``checkpoint`` (the model was restored by the run)."""
        try:
            groups = json.loads(checkpoint.metadata["optim"])
            restore_optimizer(self.optimizer, "optim/main", checkpoint.tensors, groups["main"])
            for name, optimizer in self.aux_optimizers.items():
                restore_optimizer(optimizer, f"optim/aux/{name}", checkpoint.tensors, groups[name])
            if self.online_probe is not None and "probe" in groups:
                load_module_state(self.online_probe, checkpoint, "probe")
                restore_optimizer(self.online_probe.optimizer, "optim/probe", checkpoint.tensors, groups["probe"])
            saved_scalers = json.loads(groups.get(SCALERS_KEY, "{}"))
            for name, scaler in self.scalers.items():
                if name in saved_scalers:
                    scaler.load_state_dict(saved_scalers[name])
            restore_rng(checkpoint.tensors, checkpoint.metadata["python_rng"])
        except CheckpointError:
            raise
        except (KeyError, ValueError, TypeError, RuntimeError) as error:
            raise CheckpointError(f"{checkpoint.path} does not fit this run: {type(error).__name__}: {error}") from None
        self.step = checkpoint.step

    def checked_state(self) -> list[tuple[str, torch.Tensor]]:
        """Every floating tensor a checkpoint would hold (model, task and aux modules, optimizer states), by name,
        without copies."""
        named: list[tuple[str, torch.Tensor]] = []
        modules: list[tuple[str, torch.nn.Module]] = [("model", self.model.backbone)]
        modules += [(f"task/{name}", module) for name, module in self.model.task_modules.items()]
        modules += [(f"aux/{name}", module) for name, module in self.model.aux_modules.items()]
        if self.online_probe is not None:
            modules.append(("probe", self.online_probe))
        for prefix, module in modules:
            named += [(f"{prefix}/{key}", value) for key, value in module.state_dict().items()]
        optimizers = {"main": self.optimizer, **{f"aux/{k}": v for k, v in self.aux_optimizers.items()}}
        for prefix, optimizer in optimizers.items():
            for index, per_param in enumerate(optimizer.state.values()):
                named += [(f"optim/{prefix}/{index}/{key}", v) for key, v in per_param.items() if torch.is_tensor(v)]
        return [(name, tensor) for name, tensor in named if tensor.is_floating_point()]

    def check_state_finite(self) -> None:
        """Raise :class:`FloatingPointError` if any process's state holds a NaN or inf (checked on the device,
        one read-back for all tensors), so that no checkpoint is ever written with one."""
        named = self.checked_state()
        finite = [torch.isfinite(tensor).all() for _, tensor in named]
        finite.append(torch.ones((), dtype=torch.bool, device=self.device))
        flags = torch.stack(finite).to(self.device)
        bad = (~flags.all()).long().reshape(1)
        if not int(max_over_ranks(bad, self.world).item()):
            return
        first = next((name for (name, _), ok in zip(named, flags.tolist(), strict=False) if not ok), None)
        raise FloatingPointError(
            f"the model state is not finite at step {self.step} (first bad tensor: {first or 'on another process'}); "
            f"no checkpoint was written; {self.last_good_checkpoint()}"
        )

    def last_good_checkpoint(self) -> str:
        """Which checkpoint a user can go back to, said in a sentence."""
        paths = checkpoint_paths(self.out)
        if not paths:
            return "there is no earlier checkpoint"
        return f"the last good checkpoint is {paths[-1]} (step {int(paths[-1].stem.rsplit('-', 1)[1])})"

    def checkpoint(self) -> Path | None:
        """Check every process's losses and state, then write a checkpoint (rank 0; others get ``None``)."""
        self.check_finite()
        self.check_state_finite()
        return self.save_checkpoint() if self.world.is_main else None

    def save_checkpoint(self) -> Path:
        """Write the checkpoint of the current step (no checks: :meth:`checkpoint` checks first).

        Raises:
            CheckpointWriteError: the file could not be written (disk full, read-only); the earlier checkpoints
                and ``latest`` are untouched.
        """
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
        if self.scalers:
            groups[SCALERS_KEY] = json.dumps({name: scaler.state_dict() for name, scaler in self.scalers.items()})
        random_tensors, python_rng = rng_tensors()
        tensors |= random_tensors
        path = checkpoint_path(self.out, self.step)
        metadata = {
            "step": str(self.step),
            "config": self.config.to_json(),
            "image_size": str(self.image_size),
            "optim": json.dumps(groups),
            "python_rng": python_rng,
            "sslx_version": __version__,
        }
        try:
            write_atomic(path, tensors, metadata)
            write_latest(self.out, path)
        except Exception as error:  # OSError, or safetensors' own error for the same causes
            raise CheckpointWriteError(path, error, self.last_good_checkpoint()) from error
        prune_checkpoints(self.out, self.config.keep_checkpoints)
        return path

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The run's autocast region (``--precision``; nothing for float32)."""
        return self.run.precision.autocast()

    def optimizer_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, name: str) -> None:
        """``loss.backward()`` and the optimizer's step, through its gradient scaler under ``16-mixed``."""
        scaler = self.scalers.get(name)
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            optimizer.step()
            return
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

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
        self.model.clock.step = step
        schedule = self.run.schedule_steps
        scale = warmup_cosine(step, schedule, round(config.warmup_fraction * schedule))
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * scale
        images = to_float(images_uint8.to(self.device, non_blocking=True))  # (B, 3, S, S) in [0, 1]
        batch = len(images)
        where = StepSlice(config.seed, step, batch * self.world.size, batch * self.world.rank)
        images = self.stream.base_augment(images, where.random("base-augment", batch, self.device))
        if uses_channels_last(self.device):  # after the augmentation, whose crops give the default layout
            images = images.contiguous(memory_format=torch.channels_last)
        self.model.train()
        with self.autocast():
            result: StepResult = self.step_module(images, where)
        finite = torch.stack([torch.isfinite(loss.detach()).all() for loss in result.task_losses.values()])
        self._first_non_finite = torch.where(
            (self._first_non_finite == 0) & ~finite, torch.full_like(self._first_non_finite, step + 1),
            self._first_non_finite,
        )  # fmt: skip
        self.optimizer_step(result.total, self.optimizer, "main")
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
                aux_total = sum(aux_terms.values(), torch.zeros((), device=self.device))
                scaler = self.scalers.get(runtime.spec.name)
                aux_optimizer.zero_grad(set_to_none=True)
                (scaler.scale(aux_total) if scaler is not None else aux_total).backward()
                average_gradients(runtime.aux, self.world)
                if scaler is None:
                    aux_optimizer.step()
                else:
                    scaler.step(aux_optimizer)
                    scaler.update()
                logged |= {f"{runtime.spec.name}/{term}": value.detach() for term, value in aux_terms.items()}
        # Momentum teachers, queues and centres follow the updated networks, outside autograd.
        with torch.no_grad(), self.autocast():
            for runtime, pretext, output in result.outputs:
                try:
                    runtime.task.after_step(self.model.backbone, runtime.modules, runtime.aux, pretext, output)
                except Exception as error:
                    if runtime.origin is None:
                        raise
                    raise PluginCodeError(runtime.origin, "after_step", error) from error
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
            f"no checkpoint was written after it; {self.last_good_checkpoint()} (try a lower --lr)"
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
        barrier(self.world)  # every process has read the checkpoints before any file is moved
        if main:  # written on resume too, so the kept config shows the budget the run now has
            set_aside(self.run.damaged, self.out)
            truncate_metrics(self.out / METRICS_FILE, self.step)
            write_config(self.out, self.config)
        progress = Progress(self.total, start=self.step, every=self.config.log_every, enabled=main)
        logged: dict[str, float] = {}
        since, images_since = time.perf_counter(), 0
        stop = StopRequest()
        metrics_log = MetricsLog(
            self.loggers, self.out, start_step=self.step, config=self.config.to_dict(), enabled=main
        )
        with metrics_log as metrics, stop.installed():
            for images, labels in self.stream.batches(self.step):
                if self.step >= self.total:
                    break
                signal_number = self.agreed_stop(stop)
                if signal_number is not None:
                    progress.close()
                    self.checkpoint()
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
                    data_health = self.stream.unreadable_report(self.world, self.device)
                    metrics.write(self.step, {"images_per_s": images_per_s, **logged, **data_health})
                    progress.update(self.step, self.headline(logged), images_per_s)
                else:
                    progress.advance(self.step)
                if self.step % self.config.checkpoint_every == 0 and not last:
                    self.checkpoint()
            progress.close()
            unreadable = self.stream.warn_unreadable(self.world, self.device)  # files skipped: named once, at the end
            if unreadable:
                metrics.write(self.step, unreadable)
        progress.close()
        self.check_finite(logged)
        self.checkpoint()
        barrier(self.world)  # no rank reads the final checkpoint before it is written
        return RunResult(self.out, self.step, {k: v for k, v in logged.items() if k != "lr"})
