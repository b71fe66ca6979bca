"""The pretraining loop: reads top to bottom, one step as in ``ssl_engine.task``'s diagram."""

from __future__ import annotations

import contextlib
import json
import random
import time
import warnings
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
    read_checkpoint,
    restore_optimizer,
    restore_rng,
    rng_tensors,
    write_atomic,
    write_latest,
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


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the message names the file, the cause and the last good checkpoint."""

    def __init__(self, path: Path, error: BaseException, last_good: str) -> None:
        cause = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        super().__init__(f"cannot write checkpoint {path}: {cause}; {last_good}")


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


def prepare_run_dir(out: Path, resume: bool, create: bool = True) -> None:
    """Create ``out`` for a new run (only checked when ``create`` is False: ranks other than 0), or check that it
    is a run directory for ``--resume``."""
    if resume:
        saved_config(out)
        return
    if out.exists() and any(out.iterdir()):
        raise RunDirectoryError(
            f"run directory {out} already exists; pass --resume to continue it or pick another --out"
        )
    if create:
        out.mkdir(parents=True, exist_ok=True)


DAMAGED_DIR = "damaged"


def set_aside(paths: list[Path], out: Path) -> list[Path]:
    """Move unusable checkpoint files into ``out/damaged/`` (kept for inspection, out of the resume's way)."""
    if not paths:
        return []
    folder = out / DAMAGED_DIR
    folder.mkdir(exist_ok=True)
    moved = []
    for path in paths:
        target = folder / path.name
        path.replace(target)
        moved.append(target)
    return moved


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
        resume: continue from the latest checkpoint in ``out`` that reads back and fits the model.
        force: with ``resume``, accept config changes beyond budget, logging and placement.
        restart: with ``resume``, start again from step 0 when no checkpoint in ``out`` can be used (the unusable
            files are moved to ``out/damaged/``); without it, that is an error listing each file.
    """

    def __init__(
        self,
        config: PretrainConfig,
        registry: Registry,
        out: Path,
        resume: bool = False,
        force: bool = False,
        restart: bool = False,
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
        random.seed(config.seed)  # Python's generator too: its state is saved, so identical runs write identical files
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
        prepare_run_dir(out, resume, create=self.world.is_main)
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
        self.resumed: LoadedCheckpoint | None = None
        self.damaged: list[Path] = []  # checkpoint files a resume could not use, set aside when training starts
        if resume:
            self.resumed = self._resume(restart)
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

    def _resume(self, restart: bool) -> LoadedCheckpoint | None:
        """Restore the newest checkpoint of the run directory that reads back and fits the model, falling back
        past damaged ones (each reported). ``None``: starting again from step 0, said so.

        Raises:
            RunDirectoryError: checkpoints exist but none can be used, and ``restart`` was not given (each file and
                why are listed; nothing in the directory is touched).
        """
        problems: list[tuple[Path, str]] = []
        for path in reversed(checkpoint_paths(self.out)):
            try:
                checkpoint = read_checkpoint(path)
                self._restore(checkpoint)
            except CheckpointError as error:
                problems.append((path, str(error)))
                continue
            for _, why in problems:
                warnings.warn(
                    f"{why}; it is set aside in {self.out / DAMAGED_DIR} and the run resumes from {path.name}",
                    stacklevel=2,
                )
            self.damaged = [damaged for damaged, _ in problems]
            return checkpoint
        if problems and not restart:
            listed = "".join(f"\n  {why}" for _, why in problems)
            raise RunDirectoryError(
                f"--resume: no checkpoint in {self.out} can be used, nothing was changed:{listed}\n"
                f"pass --restart to set them aside in {self.out / DAMAGED_DIR} and start again from step 0"
            )
        if problems:
            warnings.warn(
                f"--restart: none of the {len(problems)} checkpoints of {self.out} can be used; they are moved to "
                f"{self.out / DAMAGED_DIR} and the run starts again from step 0",
                stacklevel=2,
            )
        else:
            warnings.warn(
                f"{self.out} holds no checkpoint yet (the run stopped before its first one): starting again from "
                "step 0",
                stacklevel=2,
            )
        self.damaged = [path for path, _ in problems]
        if self.world.is_main:
            truncate_metrics(self.out / "metrics.jsonl", 0)
        return None

    def _restore(self, checkpoint: LoadedCheckpoint) -> None:
        """Load every module, optimizer and generator from ``checkpoint`` (:class:`CheckpointError` if it does not
        fit this run's model)."""
        try:
            load_module_state(self.model.backbone, checkpoint, "model")
            for name in self.model.task_modules:
                load_module_state(self.model.task_modules[name], checkpoint, f"task/{name}")
                load_module_state(self.model.aux_modules[name], checkpoint, f"aux/{name}")
            groups = json.loads(checkpoint.metadata["optim"])
            restore_optimizer(self.optimizer, "optim/main", checkpoint.tensors, groups["main"])
            for name, optimizer in self.aux_optimizers.items():
                restore_optimizer(optimizer, f"optim/aux/{name}", checkpoint.tensors, groups[name])
            if self.online_probe is not None and "probe" in groups:
                load_module_state(self.online_probe, checkpoint, "probe")
                restore_optimizer(self.online_probe.optimizer, "optim/probe", checkpoint.tensors, groups["probe"])
            restore_rng(checkpoint.tensors, checkpoint.metadata["python_rng"])
        except CheckpointError:
            raise
        except (KeyError, ValueError, TypeError, RuntimeError) as error:  # optimizer or generator state that fits not
            raise CheckpointError(f"{checkpoint.path} does not fit this run: {type(error).__name__}: {error}") from None
        self.step = checkpoint.step
        if self.world.is_main:
            truncate_metrics(self.out / "metrics.jsonl", self.step)

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
            set_aside(self.damaged, self.out)
            self.damaged = []
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
                    metrics.write(self.step, {"images_per_s": images_per_s, **logged})
                    progress.update(self.step, self.headline(logged), images_per_s)
                else:
                    progress.advance(self.step)
                if self.step % self.config.checkpoint_every == 0 and not last:
                    self.checkpoint()
        progress.close()
        self.check_finite(logged)
        self.checkpoint()
        barrier(self.world)  # no rank reads the final checkpoint before it is written
        return RunResult(self.out, self.step, {k: v for k, v in logged.items() if k != "lr"})
