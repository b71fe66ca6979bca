"""The files of a run directory: creating it, checking it for ``--resume``, and keeping it consistent.

``RUN_DIR/config.toml`` (the resolved config), ``metrics.jsonl``, the checkpoints and ``latest`` (see
:mod:`ssl_engine.checkpoint`), ``damaged/`` (checkpoints a resume could not use, kept for inspection).
"""

from __future__ import annotations

import json
from pathlib import Path

from ssl_engine.atomic_files import write_text_atomic
from ssl_engine.config import CONFIG_FILE, RESUMABLE_CHANGES, PretrainConfig

DAMAGED_DIR = "damaged"
METRICS_FILE = "metrics.jsonl"


class RunDirectoryError(ValueError):
    """The run directory can't be used as asked (exists without --resume, nothing to resume, ...)."""


def saved_config(out: Path) -> PretrainConfig:
    """The resolved config kept in a run directory (for ``--resume``)."""
    path = out / CONFIG_FILE
    if not path.is_file():
        raise RunDirectoryError(f"--resume: {out} is not a run directory (no {CONFIG_FILE})")
    config = PretrainConfig.load(path)
    if not config.tasks:
        # Written whole by every run (atomically): empty or task-less, it was emptied or edited since.
        raise RunDirectoryError(
            f"--resume: config file {path} names no task (empty or edited?); every run writes its whole config "
            f"there: restore it, or start a new run in another --out"
        )
    return config


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


def set_aside(paths: list[Path] | tuple[Path, ...], out: Path) -> list[Path]:
    """Move unusable checkpoint files into ``out/damaged/`` (kept for inspection, out of the resume's way)."""
    if not paths:
        return []
    folder = out / DAMAGED_DIR
    folder.mkdir(exist_ok=True)
    moved = []
    for path in paths:
        if path.exists():
            target = folder / path.name
            path.replace(target)
            moved.append(target)
    return moved


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the metric lines up to ``step``: later ones belong to steps a resumed run trains again (a line cut
    short by a crash is dropped too). Rewritten atomically."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    write_text_atomic(path, "".join(line + "\n" for line in kept))


def write_config(out: Path, config: PretrainConfig) -> None:
    """``RUN_DIR/config.toml``, atomically."""
    write_text_atomic(out / CONFIG_FILE, config.to_toml())
