"""Results of evaluating a backbone at its random initialisation, kept in the user cache between runs.

The closing probe of ``sslx pretrain`` (and the random-init row of ``sslx bench``) evaluates the untrained network
beside the trained one. That baseline depends only on what the key below names, not on the training, yet it cost
as much as evaluating the trained network: half the probe's time. So it is computed once per key and then read
back from ``USER_CACHE/random-init/`` (:func:`~ssl_engine.cache.user_cache_dir`).

The key (:func:`random_init_key`) holds:

- the network: the representation's class and input function, and a SHA-256 digest of its initial weights and
  buffers, which covers the backbone, the seed, and any module a task adds to its representation;
- the data: its name (the resolved path for a folder or shards), the share held out as val, the number of images
  in each evaluated split, the image size, and a digest of the first and last image of each evaluated split (so a
  change of the data's content is noticed too);
- the evaluation: protocol, its options, label fraction and seed, and the device type (results on CUDA and CPU
  differ in the last digits);
- the versions of sslx and torch (a new release may compute features or fit classifiers differently).

An entry stores its key beside the result and is used only when the key matches exactly. A file that cannot be
read, or whose contents are not such an entry, is ignored with a warning and computed again (then replaced).
Writes are atomic (temporary file, fsync, rename): an interrupted write leaves the previous entry or none.
Limitation: a folder whose images in between change while the first and last of each split and the counts stay
the same is not noticed; delete the entry (or the folder) to recompute.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import ssl_engine
from ssl_engine.cache import user_cache_dir
from ssl_engine.data.catalog import DataSource
from ssl_engine.task import Representation

ENTRY_FORMAT = 1
FOLDER = "random-init"
EVALUATED_SPLITS = ("train", "val", "test")


class RandomInitCacheWarning(UserWarning):
    """A cached random-init result could not be read (it is computed again) or written (the run goes on)."""


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer of ``module``: names, dtypes, shapes and values."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        value = tensor.detach().cpu().contiguous().reshape(-1)  # 0-d tensors (num_batches_tracked) as (1,)
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)};".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def evaluated_split_sizes(source: DataSource, image_size: int, known: dict[str, int] | None = None) -> dict[str, int]:
    """Images in the train, val and test splits: from ``known`` (e.g. :meth:`EvalContext.split_sizes` of an
    evaluation that read them) where it has them, else by opening the split."""
    known = known or {}
    return {
        split: known[split] if split in known else len(source.split(split, image_size))  # type: ignore[arg-type]
        for split in EVALUATED_SPLITS
    }


def _callable_name(function: Any) -> str:
    target = getattr(function, "func", function)  # functools.partial: the function it wraps
    name = getattr(target, "__qualname__", type(target).__qualname__)
    return f"{getattr(target, '__module__', '')}.{name}"


def random_init_key(
    representation: Representation,
    source: DataSource,
    split_sizes: dict[str, int],
    image_size: int,
    *,
    protocol: str,
    seed: int,
    device: torch.device,
    backbone: str = "",
    options: dict[str, Any] | None = None,
    label_fraction: float | None = None,
) -> dict[str, Any]:
    """The key of one random-init evaluation (JSON-able; see the module's notes for why each part is there).

    Args:
        representation: the untrained representation, as it will be evaluated.
        source: the labelled data.
        split_sizes: images per evaluated split, e.g. ``{"train": 10000, "val": 2000, "test": 2000}``.
        image_size: the side the images are evaluated at.
        protocol: the evaluator's name.
        seed: the evaluation's seed (and the run's, which initialised the network).
        device: where it is computed.
        backbone: the backbone's registered name (for people reading the key; the digest is what decides).
        options: the protocol's options.
        label_fraction: the share of train labels used, or ``None`` for all.
    """
    return {
        "format": ENTRY_FORMAT,
        "sslx": ssl_engine.__version__,
        "torch": torch.__version__.split("+")[0],
        "protocol": protocol,
        "options": {str(name): str(value) for name, value in sorted((options or {}).items())},
        "label_fraction": label_fraction,
        "seed": seed,
        "device": device.type,
        "data": source.name,
        "data_path": str(Path(source.name).expanduser().resolve()) if source.file_backed else None,
        "val_fraction": source.options.val_fraction,
        "splits": dict(sorted(split_sizes.items())),
        "image_size": image_size,
        "backbone": backbone,
        "representation": f"{type(representation).__module__}.{type(representation).__qualname__}",
        "input": _callable_name(getattr(representation, "prepare", None)),
        "weights": weights_digest(representation),
        "samples": data_sample_digest(source, split_sizes, image_size),
    }


def data_sample_digest(source: DataSource, split_sizes: dict[str, int], image_size: int) -> str:
    """SHA-256 of the first and last image (and label) of each evaluated split, as evaluation sees them: a change
    of the data's content (the embedded data drawn differently by a newer checkout, a folder whose first or last
    files were replaced) makes another key even where the name, the sizes and the version stay the same."""
    digest = hashlib.sha256()
    for split in sorted(split_sizes):
        try:
            dataset = source.split(split, image_size)
            count = len(dataset)  # type: ignore[arg-type]
            for index in sorted({0, count - 1}) if count else ():
                image, label = dataset[index]
                digest.update(f"{split}:{index}:{int(label)}:".encode())
                digest.update(image.contiguous().numpy().tobytes())
        except Exception as error:  # a split that can't be read here fails the evaluation itself, with its message
            digest.update(f"{split}:unreadable:{type(error).__name__}".encode())
    return digest.hexdigest()


def _slug(text: str) -> str:
    kept = "".join(c if c.isalnum() or c in "-_." else "_" for c in text.replace("/", "_")).strip("_.")
    return kept[:40] or "data"


@dataclass(frozen=True)
class CachedResult:
    """A result read back from the cache: the protocol's result, where it was, and how long computing it took."""

    result: dict[str, Any]
    path: Path
    seconds: float


@dataclass(frozen=True)
class RandomInitCache:
    """The folder of random-init results (default: ``USER_CACHE/random-init``)."""

    folder: Path

    @classmethod
    def default(cls) -> RandomInitCache:
        return cls(user_cache_dir() / FOLDER)

    def path(self, key: dict[str, Any]) -> Path:
        """The entry's file: readable parts of the key, then a digest of all of it."""
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        name = f"{key['protocol']}-{_slug(str(key['data']))}-{_slug(str(key['backbone']) or 'backbone')}"
        return self.folder / f"{name}-{key['image_size']}px-seed{key['seed']}-{digest}.json"

    def load(self, key: dict[str, Any]) -> CachedResult | None:
        """The stored result of ``key``; ``None`` when there is none, or none to trust (with a warning)."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            entry = json.loads(path.read_text())
            result, spent = entry["result"], float(entry.get("seconds", 0.0))
            if entry.get("key") != key:
                raise ValueError("its key is not the one asked for")
            if not isinstance(result, dict) or not _is_accuracy(result.get("accuracy")):
                raise ValueError("it holds no accuracy")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            warnings.warn(
                f"cached random-init result {path} is unreadable ({type(error).__name__}: {error}); computing it again",
                RandomInitCacheWarning,
                stacklevel=2,
            )
            return None
        return CachedResult(result, path, spent)

    def store(self, key: dict[str, Any], result: dict[str, Any], seconds: float) -> Path | None:
        """Keep ``result`` under ``key`` (atomically); its path, or ``None`` when it could not be written (a
        warning: the next run computes it again)."""
        path = self.path(key)
        entry = {"key": key, "result": result, "seconds": round(seconds, 3), "created": time.time()}
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # per process: concurrent runs
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(temporary, "w") as handle:
                handle.write(json.dumps(entry, indent=2) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except (OSError, TypeError, ValueError) as error:  # TypeError/ValueError: a result that is not JSON
            warnings.warn(f"could not cache the random-init result at {path}: {error}", RandomInitCacheWarning,
                          stacklevel=2)  # fmt: skip
            return None
        finally:
            with contextlib.suppress(OSError):  # e.g. no folder to have written it in
                temporary.unlink(missing_ok=True)
        return path


def _is_accuracy(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
