"""Checkpoints: safetensors only, one documented and versioned key layout (never pickle).

Layout version 1 (``FORMAT_VERSION``), tensor keys:

====================================== ===============================================================
``model/<key>``                        the shared backbone's ``state_dict``
``task/<task>/<key>``                  each task's modules (heads, decoders, extra networks)
``aux/<task>/<key>``                   each task's auxiliary modules (discriminators)
``optim/main/<param>/<state>``         main optimizer state per parameter index (e.g. ``momentum_buffer``)
``optim/aux/<task>/<param>/<state>``   each task's aux optimizer state
``rng/torch``                          ``torch.get_rng_state()``
``rng/cuda/<device>``                  CUDA generator states, when CUDA is used
====================================== ===============================================================

Header metadata (all strings; JSON where structured): ``format`` (``"sslx.checkpoint"``), ``version``, ``step``,
``config`` (the resolved run config), ``optim`` (param groups without tensors, per optimizer), ``python_rng``,
``sslx_version``. Later features add keys and metadata fields; readers ignore what they don't know.
Files are written atomically (temporary file, fsync, rename), so a crash never leaves a partial checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

FORMAT = "sslx.checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_GLOB = "checkpoint-*.safetensors"


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or of an unknown format; the message names the file."""


def module_tensors(prefix: str, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state_dict`` entries under ``prefix/`` (contiguous copies, as safetensors requires)."""
    return {f"{prefix}/{key}": value.detach().contiguous().clone() for key, value in state.items()}


def optimizer_tensors(prefix: str, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], str]:
    """An optimizer's per-parameter state as tensors under ``prefix/`` and its param groups as JSON."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for index, per_param in state["state"].items():
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}/{index}/{name}"] = value.detach().contiguous().clone()
            else:
                scalars[f"{index}/{name}"] = value
    return tensors, json.dumps({"param_groups": state["param_groups"], "scalars": scalars})


def restore_optimizer(
    optimizer: torch.optim.Optimizer, prefix: str, tensors: Mapping[str, torch.Tensor], groups_json: str
) -> None:
    """Inverse of :func:`optimizer_tensors`."""
    saved = json.loads(groups_json)
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith(prefix + "/"):
            index, name = key[len(prefix) + 1 :].split("/", 1)
            state.setdefault(int(index), {})[name] = value
    for key, value in saved["scalars"].items():
        index, name = key.split("/", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})


def rng_tensors() -> tuple[dict[str, torch.Tensor], str]:
    """The torch (and CUDA) RNG states as tensors, Python's as JSON."""
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{index}"] = cuda_state
    version, internal, gauss = random.getstate()
    return tensors, json.dumps([version, list(internal), gauss])


def restore_rng(tensors: Mapping[str, torch.Tensor], python_json: str) -> None:
    """Inverse of :func:`rng_tensors`."""
    torch.set_rng_state(tensors["rng/torch"])
    cuda_states = [tensors[key] for key in sorted(k for k in tensors if k.startswith("rng/cuda/"))]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    version, internal, gauss = json.loads(python_json)
    random.setstate((version, tuple(internal), gauss))


def write_atomic(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write a safetensors file via a temporary file, fsync and rename."""
    metadata = {"format": FORMAT, "version": str(FORMAT_VERSION), **metadata}
    temporary = path.with_name(f".{path.name}.tmp")
    save_file({key: value.cpu() for key, value in tensors.items()}, str(temporary), metadata=metadata)
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


@dataclass
class LoadedCheckpoint:
    """A checkpoint read back: its tensors (on the CPU) and header metadata."""

    path: Path
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]

    @property
    def step(self) -> int:
        return int(self.metadata["step"])

    def module_state(self, prefix: str) -> dict[str, torch.Tensor]:
        """The ``state_dict`` saved under ``prefix/``."""
        start = prefix + "/"
        return {key[len(start) :]: value for key, value in self.tensors.items() if key.startswith(start)}


def read_checkpoint(path: Path) -> LoadedCheckpoint:
    """Open a checkpoint and check its format."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a dict
    except Exception as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {error}") from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an sslx checkpoint (format {metadata.get('format')!r})")
    if int(metadata.get("version", "0")) > FORMAT_VERSION:
        raise CheckpointError(f"{path} has layout version {metadata['version']}, newer than this sslx reads")
    return LoadedCheckpoint(path, tensors, metadata)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint file in ``run_dir`` (temporary files never match), or ``None``."""
    found = checkpoint_paths(run_dir)
    return found[-1] if found else None


def checkpoint_paths(run_dir: Path) -> list[Path]:
    """The run's checkpoint files, oldest first (temporary files never match)."""
    return sorted(run_dir.glob(CHECKPOINT_GLOB), key=lambda p: int(p.stem.rsplit("-", 1)[1]))


def latest_complete_checkpoint(run_dir: Path) -> LoadedCheckpoint | None:
    """The newest checkpoint that reads back; a corrupted or truncated newer one is reported and skipped."""
    for path in reversed(checkpoint_paths(run_dir)):
        try:
            return read_checkpoint(path)
        except CheckpointError as error:
            warnings.warn(f"{error}; falling back to the previous checkpoint", stacklevel=2)
    return None


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoints."""
    for path in checkpoint_paths(run_dir)[:-keep]:
        path.unlink(missing_ok=True)


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / f"checkpoint-{step:08d}.safetensors"
