"""Checkpoints: safetensors only, one documented and versioned key layout (never pickle).

Layout version 2 (``FORMAT_VERSION``), tensor keys:

====================================== ===============================================================
``model/<key>``                        the shared backbone's ``state_dict``
``task/<task>/<key>``                  each task's modules (heads, decoders, extra networks)
``aux/<task>/<key>``                   each task's auxiliary modules (discriminators)
``probe/<key>``                        the online probe, when the run has one
``optim/main/<param>/<state>``         main optimizer state per parameter index (e.g. ``momentum_buffer``)
``optim/aux/<task>/<param>/<state>``   each task's aux optimizer state
``optim/probe/<param>/<state>``        the online probe's optimizer state
``rng/torch``                          ``torch.get_rng_state()``
``rng/cuda/<device>``                  CUDA generator states, when CUDA is used
====================================== ===============================================================

Header metadata (all strings; JSON where structured): ``format`` (``"sslx.checkpoint"``), ``version``, ``step``,
``image_size``, ``config`` (the resolved run config), ``optim`` (param groups without tensors, per optimizer),
``python_rng``, ``sslx_version`` and ``checksum``: ``crc32:<8 hex digits>``, a CRC-32 over every other metadata
field and every tensor's name, dtype, shape and bytes, in sorted order (see :func:`checkpoint_checksum`). CRC-32
detects every burst of up to 32 flipped bits and runs at 1.4-3.4 GB/s, so a 205 MB ResNet-50 checkpoint takes
0.06-0.2 s more to write and to read (``benchmarks/RESULTS.md``). Version 2 added ``checksum``; version 1 files,
which have none, are still read (without the check). Later features add keys and metadata fields; readers ignore
what they don't know.

Files are written atomically (temporary file, fsync, rename), so a crash never leaves a partial checkpoint; so is
the run directory's ``latest`` file (:func:`write_latest`).

Every read goes through :func:`read_checkpoint`, which refuses a file sslx can't use with a
:class:`CheckpointError` naming the file and the problem, before allocating anything the header declares: the
header's size, tensor count, metadata size and tensor offsets are bounded (``MAX_*`` below), and the metadata
(``step``, ``image_size``, ``config``, ...) is checked. Modules are loaded with :func:`load_module_state`, which
turns a missing, unexpected or wrong-shaped tensor into a :class:`CheckpointError` too, so a resumed run can fall
back to an older checkpoint (:class:`CheckpointScan`) and every other reader can stop with one clear message.
"""

from __future__ import annotations

import json
import os
import random
import re
import struct
import warnings
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ssl_engine.atomic_files import replace_atomically, with_user_permissions
from ssl_engine.config import ConfigError, PretrainConfig

FORMAT = "sslx.checkpoint"
FORMAT_VERSION = 2
CHECKPOINT_GLOB = "checkpoint-*.safetensors"
CHECKPOINT_NAME = re.compile(r"checkpoint-([0-9]+)\.safetensors")
REQUIRED_METADATA = ("step", "image_size", "config", "optim", "python_rng")

# What a header may declare. A ResNet-50 run with SGD has about 500 tensors, a 60 kB header and 30 kB of
# metadata; these bounds leave orders of magnitude of room and refuse a crafted header before it costs much.
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit
MAX_TENSORS = 100_000
MAX_METADATA_BYTES = 16 * 2**20
# The command line caps --image-size at 1024; a task's default may be larger, so allow 4x that, which still bounds
# what `show` and `evaluate` allocate for a batch of images (6 x 3 x 4096^2 floats: 1.2 GB).
MAX_IMAGE_SIZE = 4096
MAX_STEP = 10**12


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, damaged or unusable; the message names the file and the problem."""


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
    """Inverse of :func:`optimizer_tensors` (trusts its input; :func:`load_optimizer_state` checks it)."""
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
    """Inverse of :func:`rng_tensors` (trusts its input; :func:`load_rng_state` checks it)."""
    torch.set_rng_state(tensors["rng/torch"])
    cuda_states = [tensors[key] for key in sorted(k for k in tensors if k.startswith("rng/cuda/"))]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    version, internal, gauss = json.loads(python_json)
    random.setstate((version, tuple(internal), gauss))


# --- writing -------------------------------------------------------------------------------------------------------
def checkpoint_checksum(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> str:
    """``crc32:<8 hex digits>`` over the metadata (but ``checksum``) and every tensor, in sorted key order.

    Each tensor contributes its name, dtype and shape, then its bytes, so a renamed, retyped or reshaped tensor
    changes the sum as surely as a flipped bit does.

    Args:
        tensors: CPU tensors (contiguous ones are hashed in place, others copied first).
        metadata: the header metadata, all strings.
    """
    crc = 0
    for key in sorted(metadata):
        if key != "checksum":
            crc = zlib.crc32(f"{key}\0{metadata[key]}\0".encode(), crc)
    for key in sorted(tensors):
        tensor = tensors[key]
        crc = zlib.crc32(f"{key}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode(), crc)
        # A flat byte view: no copy for contiguous tensors, and works for dtypes numpy lacks (bfloat16).
        crc = zlib.crc32(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().data, crc)
    return f"crc32:{crc:08x}"


def write_atomic(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """Write a checkpoint: tensors (moved to the CPU) and metadata plus ``format``, ``version`` and ``checksum``.

    Written to a temporary file beside ``path``, fsynced and renamed, so a crash leaves the old file or the new one;
    the temporary file is removed if writing fails.
    """
    cpu = {key: value.detach().cpu().contiguous() for key, value in tensors.items()}
    header = {"format": FORMAT, "version": str(FORMAT_VERSION), **metadata}
    header["checksum"] = checkpoint_checksum(cpu, header)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        save_file(cpu, str(temporary), metadata=header)
        _sort_metadata_in_place(temporary)
        with_user_permissions(temporary)
        replace_atomically(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _sort_metadata_in_place(path: Path) -> None:
    """Rewrite the header of a just-written file with its metadata keys sorted, at the same length.

    safetensors keeps the metadata in a hash map whose order changes from one process to the next, so two identical
    runs would write different bytes; sorted, identical runs write identical files. The header is re-encoded as
    compactly as safetensors writes it and padded with spaces to its old length (as safetensors pads it); in the
    unexpected case that the re-encoding is longer, the file is left as it is.
    """
    with open(path, "r+b") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
        metadata = header.pop("__metadata__", None)
        ordered = {"__metadata__": dict(sorted(metadata.items()))} if metadata is not None else {}
        encoded = json.dumps(ordered | header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(encoded) <= length:
            handle.seek(8)
            handle.write(encoded.ljust(length, b" "))


def write_latest(run_dir: Path, checkpoint: Path) -> None:
    """Point ``run_dir/latest`` at ``checkpoint`` (its file name and a newline), atomically like the checkpoints."""
    path = run_dir / "latest"
    temporary = run_dir / ".latest.tmp"
    try:
        temporary.write_text(checkpoint.name + "\n")
        replace_atomically(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


# --- reading -------------------------------------------------------------------------------------------------------
@dataclass
class LoadedCheckpoint:
    """A checkpoint read back: its tensors (on the CPU) and header metadata (checked by :func:`read_checkpoint`)."""

    path: Path
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]

    @property
    def step(self) -> int:
        """The optimisation steps done when it was written."""
        return _metadata_int(self.path, self.metadata, "step", 0, MAX_STEP)

    @property
    def image_size(self) -> int:
        """The side of the images the run trained on, in px."""
        return _metadata_int(self.path, self.metadata, "image_size", 1, MAX_IMAGE_SIZE)

    @property
    def config(self) -> PretrainConfig:
        """The run's resolved config."""
        return _metadata_config(self.path, self.metadata)

    def module_state(self, prefix: str) -> dict[str, torch.Tensor]:
        """The ``state_dict`` saved under ``prefix/``."""
        start = prefix + "/"
        return {key[len(start) :]: value for key, value in self.tensors.items() if key.startswith(start)}


def read_checkpoint(path: Path) -> LoadedCheckpoint:
    """Read a checkpoint, refusing anything sslx can't use before allocating what its header declares.

    Raises:
        CheckpointError: naming ``path`` and the problem: not a file, unreadable or truncated, a header beyond the
            ``MAX_*`` bounds or with tensor data past the end of the file, not an sslx checkpoint, a layout
            version newer than this sslx reads, metadata missing or ill-formed (``step``, ``image_size``,
            ``config``, ``optim``, ``python_rng``), or a checksum mismatch (damaged data).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: not a file")
    metadata = _read_metadata(path)
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path}: not an sslx checkpoint (format {metadata.get('format')!r})")
    version = _metadata_int(path, metadata, "version", 1, 10**9)
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path}: layout version {version} is newer than this sslx reads ({FORMAT_VERSION})"
        )
    _check_metadata(path, metadata)
    try:
        with safe_open(str(path), framework="pt") as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a dict
    except Exception as error:  # safetensors raises its own error types, and OSError
        raise CheckpointError(f"checkpoint {path}: cannot read it: {error}") from None
    if version >= 2:
        if metadata.get("checksum") != checkpoint_checksum(tensors, metadata):
            raise CheckpointError(f"checkpoint {path}: checksum mismatch: tensor data damaged (or header altered)")
    return LoadedCheckpoint(path, tensors, metadata)


def _read_metadata(path: Path) -> dict[str, str]:
    """The header's metadata, after bounding the header and checking every tensor's offsets against the file."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"checkpoint {path}: truncated ({size} bytes, no safetensors header)")
            (header_size,) = struct.unpack("<Q", prefix)
            if header_size > MAX_HEADER_BYTES:
                raise CheckpointError(
                    f"checkpoint {path}: header of {header_size} bytes refused (at most {MAX_HEADER_BYTES})"
                )
            if 8 + header_size > size:
                raise CheckpointError(
                    f"checkpoint {path}: truncated (header of {header_size} bytes, file of {size} bytes)"
                )
            raw = handle.read(header_size)
    except OSError as error:
        raise CheckpointError(f"checkpoint {path}: cannot read it: {error.strerror or error}") from None
    # Counted before parsing: a JSON string can't hold an unescaped quote, so each match is one tensor entry.
    if raw.count(b'"data_offsets"') > MAX_TENSORS:
        raise CheckpointError(f"checkpoint {path}: header declares more than {MAX_TENSORS} tensors")
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise CheckpointError(f"checkpoint {path}: header is not valid JSON ({error})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"checkpoint {path}: header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"checkpoint {path}: header metadata is not a table of strings")
    if len(header) > MAX_TENSORS:
        raise CheckpointError(f"checkpoint {path}: header declares {len(header)} tensors (at most {MAX_TENSORS})")
    metadata_size = sum(len(key) + len(value) for key, value in metadata.items())
    if metadata_size > MAX_METADATA_BYTES:
        raise CheckpointError(
            f"checkpoint {path}: header metadata of {metadata_size} characters refused (at most {MAX_METADATA_BYTES})"
        )
    data_size = size - 8 - header_size
    for name, entry in header.items():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(type(offset) is int for offset in offsets)
            and 0 <= offsets[0] <= offsets[1] <= data_size
        ):
            raise CheckpointError(
                f"checkpoint {path}: tensor {name!r} declares data at {offsets!r}, outside the file's "
                f"{data_size} bytes of data (truncated or crafted)"
            )
    return metadata


def _check_metadata(path: Path, metadata: Mapping[str, str]) -> None:
    """Every field a reader of an sslx checkpoint relies on is there and well-formed."""
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise CheckpointError(f"checkpoint {path}: metadata lacks {', '.join(map(repr, missing))}")
    _metadata_int(path, metadata, "step", 0, MAX_STEP)
    _metadata_int(path, metadata, "image_size", 1, MAX_IMAGE_SIZE)
    _metadata_config(path, metadata)
    optim = _metadata_json(path, metadata, "optim")
    if not isinstance(optim, dict) or not all(isinstance(groups, str) for groups in optim.values()):
        raise CheckpointError(f"checkpoint {path}: metadata 'optim' is not a table of optimizer states")
    _metadata_json(path, metadata, "python_rng")
    if int(metadata["version"]) >= 2 and not metadata.get("checksum", "").startswith("crc32:"):
        raise CheckpointError(f"checkpoint {path}: metadata 'checksum' missing or of an unknown kind")


def _metadata_int(path: Path, metadata: Mapping[str, str], key: str, low: int, high: int) -> int:
    """Metadata ``key`` as an integer in ``[low, high]`` (plain decimal digits only)."""
    text = metadata.get(key)
    if text is None:
        raise CheckpointError(f"checkpoint {path}: metadata lacks {key!r}")
    if not (text.isascii() and text.isdigit() and len(text) <= 20):
        raise CheckpointError(f"checkpoint {path}: metadata {key!r} is {text[:40]!r}, not an integer")
    value = int(text)
    if not low <= value <= high:
        raise CheckpointError(f"checkpoint {path}: metadata {key!r} is {value}, outside [{low}, {high}]")
    return value


def _metadata_json(path: Path, metadata: Mapping[str, str], key: str) -> Any:
    if key not in metadata:
        raise CheckpointError(f"checkpoint {path}: metadata lacks {key!r}")
    try:
        return json.loads(metadata[key])
    except (ValueError, RecursionError) as error:
        raise CheckpointError(f"checkpoint {path}: metadata {key!r} is not valid JSON ({error})") from None


def _metadata_config(path: Path, metadata: Mapping[str, str]) -> PretrainConfig:
    data = _metadata_json(path, metadata, "config")
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint {path}: metadata 'config' is not a JSON object")
    try:
        config = PretrainConfig.from_dict(data, source="metadata 'config'")
    except ConfigError as error:
        raise CheckpointError(f"checkpoint {path}: {error}") from None
    except (TypeError, ValueError, AttributeError) as error:  # shapes from_dict does not expect
        raise CheckpointError(f"checkpoint {path}: metadata 'config' is not a valid config ({error})") from None
    if not config.tasks:
        raise CheckpointError(f"checkpoint {path}: metadata 'config' names no task")
    return config


# --- loading into modules ------------------------------------------------------------------------------------------
def load_module_state(module: torch.nn.Module, checkpoint: LoadedCheckpoint, prefix: str) -> None:
    """Load the ``state_dict`` saved under ``prefix/`` into ``module``, strictly.

    Raises:
        CheckpointError: naming the file, ``prefix`` and the first missing, unexpected or wrong-shaped key.
    """
    state = checkpoint.module_state(prefix)
    expected = module.state_dict()
    where = f"checkpoint {checkpoint.path}: {prefix}/"
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CheckpointError(f"{where} lacks {missing[0]!r} ({len(missing)} key(s) of the model missing)")
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise CheckpointError(f"{where} has {unexpected[0]!r}, which the model lacks ({len(unexpected)} such key(s))")
    for key, value in expected.items():
        if isinstance(value, torch.Tensor) and state[key].shape != value.shape:
            raise CheckpointError(
                f"{where}{key} has shape {tuple(state[key].shape)}, the model expects {tuple(value.shape)}"
            )
    try:
        module.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, TypeError, KeyError) as error:  # a module's own load hook refusing
        raise CheckpointError(f"{where} does not load: {error}") from None


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, checkpoint: LoadedCheckpoint, name: str, prefix: str
) -> None:
    """Restore the optimizer saved as ``name`` in the ``optim`` metadata, its tensors under ``prefix/``.

    Raises:
        CheckpointError: naming the file and the optimizer: missing, ill-formed or not fitting ``optimizer``.
    """
    groups = json.loads(checkpoint.metadata["optim"])
    if name not in groups:
        raise CheckpointError(f"checkpoint {checkpoint.path}: no state of optimizer {name!r}")
    try:
        restore_optimizer(optimizer, prefix, checkpoint.tensors, groups[name])
    except (KeyError, ValueError, TypeError, IndexError, AttributeError, RuntimeError) as error:
        raise CheckpointError(
            f"checkpoint {checkpoint.path}: state of optimizer {name!r} does not load: {error!r}"
        ) from None


def load_rng_state(checkpoint: LoadedCheckpoint) -> None:
    """Restore the torch, CUDA and Python RNG states.

    Raises:
        CheckpointError: naming the file: RNG states missing or ill-formed.
    """
    try:
        restore_rng(checkpoint.tensors, checkpoint.metadata["python_rng"])
    except (KeyError, ValueError, TypeError, RuntimeError) as error:
        raise CheckpointError(f"checkpoint {checkpoint.path}: RNG state does not load: {error!r}") from None


# --- a run directory's checkpoints ---------------------------------------------------------------------------------
def checkpoint_path(run_dir: Path, step: int) -> Path:
    """Where the checkpoint of ``step`` goes."""
    return run_dir / f"checkpoint-{step:08d}.safetensors"


def checkpoint_paths(run_dir: Path) -> list[Path]:
    """The run's checkpoint files, oldest first.

    Only files named ``checkpoint-<step>.safetensors`` count: temporary files, other names
    (``checkpoint-abc.safetensors``) and directories are ignored.
    """
    found = []
    for path in run_dir.glob(CHECKPOINT_GLOB):
        match = CHECKPOINT_NAME.fullmatch(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint file in ``run_dir``, or ``None``."""
    found = checkpoint_paths(run_dir)
    return found[-1] if found else None


@dataclass(frozen=True)
class SkippedCheckpoint:
    """A checkpoint file that could not be used, and why (the :class:`CheckpointError` message)."""

    path: Path
    reason: str


@dataclass
class CheckpointScan:
    """A run's readable checkpoints, newest first, read one at a time; each one that fails is kept with why.

    Iterating reads the files lazily (one checkpoint in memory at a time). A caller that finds a checkpoint it
    can't use after all (a module that doesn't fit) reports it with :meth:`skip` and takes the next::

        scan = CheckpointScan(run_dir)
        for checkpoint in scan:
            try:
                restore(checkpoint)  # raises CheckpointError
            except CheckpointError as error:
                scan.skip(checkpoint, error)
                continue
            break
        else:
            if scan.skipped:
                raise scan.failure()  # every file, and why
            ...  # no checkpoint at all
    """

    run_dir: Path
    skipped: list[SkippedCheckpoint] = field(default_factory=list)

    def __iter__(self) -> Iterator[LoadedCheckpoint]:
        for path in reversed(checkpoint_paths(self.run_dir)):
            try:
                yield read_checkpoint(path)
            except CheckpointError as error:
                self.skipped.append(SkippedCheckpoint(path, str(error)))

    def skip(self, checkpoint: LoadedCheckpoint, error: CheckpointError) -> None:
        """Record that ``checkpoint`` read but could not be used."""
        self.skipped.append(SkippedCheckpoint(checkpoint.path, str(error)))

    def failure(self) -> CheckpointError:
        """The error for a run directory none of whose checkpoints can be used: one line per file and why."""
        if not self.skipped:
            return CheckpointError(f"run directory {self.run_dir} holds no checkpoint")
        if len(self.skipped) == 1:
            return CheckpointError(f"run directory {self.run_dir} holds no usable checkpoint: {self.skipped[0].reason}")
        reasons = "".join(f"\n  {skipped.reason}" for skipped in self.skipped)
        return CheckpointError(f"run directory {self.run_dir} holds no usable checkpoint:{reasons}")


def latest_complete_checkpoint(run_dir: Path) -> LoadedCheckpoint | None:
    """The newest checkpoint that reads back; each damaged newer one is reported (a warning) and skipped."""
    scan = CheckpointScan(run_dir)
    for checkpoint in scan:
        for skipped in scan.skipped:
            warnings.warn(f"{skipped.reason}; falling back to an earlier checkpoint", stacklevel=2)
        return checkpoint
    for skipped in scan.skipped:
        warnings.warn(f"{skipped.reason}; skipped, and no checkpoint of this run reads", stacklevel=2)
    return None


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoints (the newest is always kept)."""
    for path in checkpoint_paths(run_dir)[: -max(keep, 1)]:
        path.unlink(missing_ok=True)
