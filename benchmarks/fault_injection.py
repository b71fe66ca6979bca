"""Fault injection campaign (issue 16): real ``sslx pretrain`` processes killed and resumed, damaged and crafted files.

Every trial runs the command line as a user does (``python -m ssl_engine.cli ...`` subprocesses, small images from a
generated two-class PNG folder, batch 8, ``--workers 0``) and is classified as one of:

* ``bitwise``: the run resumed and its final checkpoint holds exactly the tensors (``torch.equal``, every one) of an
  uninterrupted reference run, its ``metrics.jsonl`` the same values, and it resumed from where it should have;
* ``refused``: exit 1 or 2 with one ``Error:`` line (a refusal listing several files adds lines below it) and no
  traceback, where a refusal is what the promise is (nothing touched where that is promised too);
* ``handled``: exit 0 doing what is documented for an odd input (a decompression bomb skipped and counted, an
  unreadable features cache extracted again);
* ``traceback``: a Python traceback on the terminal;
* ``silent restart``: a resume that started again from step 0 without saying so;
* ``wrong``: anything else (different weights, an unexpected refusal, a fallback that was not needed, a damaged file
  not set aside, a refusal that took too long or too much memory, a hang).

Trials:

* SIGKILL at seeded random moments over rotation, simclr, inpainting and a mixed run (rotation + jigsaw=0.5): at a
  random time, while a checkpoint's temporary file exists (mid-write), while ``latest`` is being replaced, just after
  a checkpoint's rename, before the first checkpoint, and twice (the resume killed as well); then ``--resume`` and a
  comparison with the reference run;
* every damage kind of the issue on a run "killed" after step K (its checkpoints 1..K): truncated newest, all
  truncated (refused exit 2 touching nothing, then ``--restart``), a bit flip in tensor data (raw bytes: checksum
  mismatch), ``config``/``optim`` metadata missing, a non-integer step, a wrong-shaped tensor, a stray
  ``checkpoint-abc.safetensors``, a directory named like a checkpoint, ``latest`` deleted or empty, ``image_size =
  100000`` and a header of 600k empty tensors (resume falls back; ``show``/``evaluate`` refuse fast), crafted config
  files and a crafted ``config.toml`` in the run directory, a truncated ``config.toml``, a decompression-bomb PNG in
  the data, a truncated features cache, a non-finite loss, a full disk while checkpointing and a read-only run
  directory (both on a tmpfs mounted for the purpose: needs root; skipped with a note otherwise).

Crafted checkpoints whose checksum must still match are written with :func:`ssl_engine.checkpoint.write_atomic`
(which computes it), so that what is tested is the reader's validation; damage meant to break the checksum (the bit
flip) edits raw bytes. The header of a 600k-tensor file is written by hand (8-byte little-endian length, JSON).

Usage::

    python benchmarks/fault_injection.py [--seed 0] [--kills 6] [--out DIR] [--quick] [--keep]

Prints one line per trial, then the table; writes ``OUT/table.md`` and ``OUT/trials.json``. Exits 1 if any trial is
a traceback, a silent restart or a wrong result.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w
import torch
from PIL import Image
from safetensors import safe_open

from ssl_engine.checkpoint import write_atomic

CLI = [sys.executable, "-m", "ssl_engine.cli"]
CHECKPOINT = re.compile(r"checkpoint-([0-9]+)\.safetensors")
PROGRESS = re.compile(r"^step (\d+)/(\d+) ", re.MULTILINE)
ANNOUNCED_RESTART = ("again from step 0", "holds no checkpoint yet")
TRACEBACK = "Traceback (most recent call last)"
CLASSES = ("bitwise", "refused", "handled", "traceback", "silent restart", "wrong")
# A refusal of a crafted header must come before anything it declares is allocated: it may take at most this much
# longer and more memory than `sslx export` of a good checkpoint measured just before (start-up dominates both, and
# varies with the load of a shared machine).
SLOW_REFUSAL_FACTOR = 2.0
SLOW_REFUSAL_EXTRA_S = 10.0
EXTRA_MEMORY_MB = 500.0
READ_ONLY = "read-only run directory: `pretrain --resume`, a new `--out`, `export`/`show --out`, `evaluate`; then rw"


# --- running sslx --------------------------------------------------------------------------------------------------
@dataclass
class Finished:
    """One sslx process, finished or killed."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    max_rss_mb: float
    killed: bool = False
    timed_out: bool = False

    @property
    def traceback(self) -> bool:
        return TRACEBACK in self.stdout or TRACEBACK in self.stderr

    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("Error:")]

    def first_step(self) -> int | None:
        """The step the run started from, from its first progress line (``step N/M``: started at N-1)."""
        found = PROGRESS.search(self.stderr)
        return int(found.group(1)) - 1 if found else None

    def announced_restart(self) -> bool:
        return any(words in self.stderr for words in ANNOUNCED_RESTART)

    def summary(self) -> str:
        last = (self.error_lines() or [line for line in self.stderr.splitlines() if line.strip()] or [""])[-1]
        return f"exit {self.returncode} after {self.seconds:.1f}s: {last[:160]}"


Trigger = Callable[[Path], bool]  # called with the running process's stderr file


class Sslx:
    """Runs ``sslx`` subprocesses with their output in files, optionally killed when a trigger fires."""

    def __init__(self, logs: Path, env: dict[str, str]) -> None:
        self.logs, self.env, self.count = logs, env, 0
        logs.mkdir(parents=True, exist_ok=True)

    def run(
        self,
        *args: str | Path,
        trigger: Trigger | None = None,
        timeout: float = 600.0,
        poll: float = 0.02,
        cwd: Path | None = None,
    ) -> Finished:
        """Run ``sslx ARGS``; SIGKILL it as soon as ``trigger(stderr file)`` is true (checked every ``poll`` s)."""
        self.count += 1
        strings = [str(arg) for arg in args]
        out_path, err_path = self.logs / f"{self.count:04d}.out", self.logs / f"{self.count:04d}.err"
        with open(out_path, "w") as out, open(err_path, "w") as err:
            started = time.monotonic()
            process = subprocess.Popen([*CLI, *strings], stdout=out, stderr=err, env=self.env, cwd=cwd)
            try:
                status, usage, killed, timed_out = self._wait(process, started, trigger, timeout, poll, err_path)
            except BaseException:  # the campaign itself is stopped: leave no sslx process behind
                process.kill()
                process.wait()
                raise
            seconds = time.monotonic() - started
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        (self.logs / f"{self.count:04d}.cmd").write_text(" ".join(strings) + "\n")
        return Finished(
            strings,
            process.returncode,
            out_path.read_text(errors="replace"),
            err_path.read_text(errors="replace"),
            seconds,
            usage.ru_maxrss / 1024,
            killed,
            timed_out,
        )

    @staticmethod
    def _wait(
        process: subprocess.Popen[bytes],
        started: float,
        trigger: Trigger | None,
        timeout: float,
        poll: float,
        err_path: Path,
    ) -> tuple[int, Any, bool, bool]:
        """Reap ``process`` (``os.wait4``, for its peak memory), killing it when ``trigger`` fires or on timeout."""
        killed = timed_out = False
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if trigger is not None and trigger(err_path):
                os.kill(process.pid, signal.SIGKILL)
                killed = True
                break
            if time.monotonic() - started > timeout:
                os.kill(process.pid, signal.SIGKILL)
                timed_out = True
                break
            time.sleep(poll)
        if killed or timed_out:
            _, status, usage = os.wait4(process.pid, 0)
        return status, usage, killed, timed_out


# --- files ---------------------------------------------------------------------------------------------------------
def checkpoint_files(run: Path) -> dict[int, Path]:
    """Step -> file, for the files named like checkpoints (whether they read or not)."""
    found = {}
    for path in run.glob("checkpoint-*.safetensors"):
        match = CHECKPOINT.fullmatch(path.name)
        if match and path.is_file():
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:08d}.safetensors"


def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata() or {})


def same_tensors(path: Path, reference: Path) -> tuple[bool, str]:
    """Whether two checkpoints hold the same tensor names and ``torch.equal`` tensors; what differs if not."""
    try:
        mine, _ = read_tensors(path)
    except Exception as error:  # whatever safetensors raises, it is a finding
        return False, f"{path.name} does not read: {error}"
    theirs, _ = read_tensors(reference)
    if set(mine) != set(theirs):
        return False, f"tensor names differ: {sorted(set(mine) ^ set(theirs))[:3]}"
    differing = [key for key in sorted(mine) if not torch.equal(mine[key], theirs[key])]
    if differing and all(key.startswith("rng/") for key in differing):
        return False, f"only the generator state differs ({', '.join(differing)}); the other tensors are equal"
    if differing:
        return False, f"{len(differing)} of {len(mine)} tensors differ (first {differing[0]})"
    return True, f"{len(mine)} tensors equal" + (", files byte-identical" if same_bytes(path, reference) else "")


def same_bytes(first: Path, second: Path) -> bool:
    return first.read_bytes() == second.read_bytes()


def metric_rows(run: Path) -> list[dict[str, Any]]:
    """``metrics.jsonl`` without the timing column."""
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        row.pop("images_per_s", None)
        rows.append(row)
    return rows


def snapshot(run: Path) -> dict[str, str]:
    """Every entry under ``run`` and a hash of its bytes ("dir" for directories)."""
    listing = {}
    for path in sorted(run.rglob("*")):
        key = str(path.relative_to(run))
        listing[key] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return listing


def leftovers(run: Path) -> list[str]:
    return sorted(path.name for path in run.iterdir() if path.name.endswith(".tmp"))


def landed(run: Path) -> str:
    """Where a kill landed: the checkpoints there and any temporary file left mid-write."""
    if not run.exists():
        return "no run directory yet"
    steps = list(checkpoint_files(run))
    left = leftovers(run)
    return f"checkpoints {steps or 'none'}" + (f", {', '.join(left)} left mid-write" if left else "")


def write_data(root: Path, per_class: int, size: int, seed: int) -> Path:
    """Two classes of PNGs: horizontal stripes and vertical stripes, with noise and random colours."""
    rng = np.random.default_rng(seed)
    for label in range(2):
        folder = root / f"c{label}"
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            period = int(rng.integers(3, 8))
            stripes = (np.arange(size) // period) % 2
            pattern = stripes[:, None] if label == 0 else stripes[None, :]
            colour = rng.integers(0, 256, 3)
            image = np.broadcast_to(pattern, (size, size))[..., None] * colour + rng.integers(0, 60, (size, size, 3))
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"img{index:03d}.png")
    return root


def decompression_bomb(path: Path) -> None:
    """A PNG of about 100 bytes declaring 100000 x 100000 pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 1, 0, 0, 0, 0)  # 1-bit grayscale
    data = (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )
    path.write_bytes(data)


# --- crafting checkpoints ------------------------------------------------------------------------------------------
def raw_header(path: Path) -> tuple[int, dict[str, Any]]:
    """The safetensors header: its length and the JSON object (8-byte little-endian length, then JSON)."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        return length, json.loads(handle.read(length))


def truncate(path: Path, rng: random.Random) -> str:
    size = path.stat().st_size
    keep = int(size * rng.uniform(0.05, 0.95))
    os.truncate(path, keep)
    return f"{path.name} cut to {keep} of {size} bytes"


def flip_bit(path: Path, rng: random.Random) -> str:
    """Flip one bit inside the data of the largest model tensor (raw bytes: the checksum no longer matches)."""
    length, header = raw_header(path)
    header.pop("__metadata__", None)
    name, entry = max(
        ((k, v) for k, v in header.items() if k.startswith("model/")),
        key=lambda item: item[1]["data_offsets"][1] - item[1]["data_offsets"][0],
    )
    start, end = entry["data_offsets"]
    offset = 8 + length + rng.randrange(start, end)
    bit = rng.randrange(8)
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([byte ^ (1 << bit)]))
    return f"bit {bit} of byte {offset} flipped ({name})"


def rewrite(path: Path, change: Callable[[dict[str, torch.Tensor], dict[str, str]], str]) -> str:
    """Read ``path``, let ``change`` edit its tensors and metadata, write it back with a valid checksum."""
    tensors, metadata = read_tensors(path)
    for key in ("format", "version", "checksum"):
        metadata.pop(key, None)
    what = change(tensors, metadata)
    write_atomic(path, tensors, metadata)
    return what


def drop_metadata(key: str) -> Callable[[Path, random.Random], str]:
    def damage(path: Path, rng: random.Random) -> str:
        def change(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
            del metadata[key]
            return f"metadata {key!r} removed"

        return rewrite(path, change)

    return damage


def set_metadata(key: str, value: str) -> Callable[[Path, random.Random], str]:
    def damage(path: Path, rng: random.Random) -> str:
        def change(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
            metadata[key] = value
            return f"metadata {key} = {value!r}"

        return rewrite(path, change)

    return damage


def wrong_shape(path: Path, rng: random.Random) -> str:
    def change(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
        name = next(key for key in sorted(tensors) if key.startswith("model/") and tensors[key].ndim >= 2)
        shape = list(tensors[name].shape)
        shape[0] += 1
        tensors[name] = torch.zeros(shape, dtype=tensors[name].dtype)
        return f"{name} reshaped to {tuple(shape)}"

    return rewrite(path, change)


def many_empty_tensors(path: Path, rng: random.Random, count: int = 600_000) -> str:
    """Replace the file by one whose header declares ``count`` empty tensors (and the original metadata)."""
    _, header = raw_header(path)
    entries = {f"t{index}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for index in range(count)}
    encoded = json.dumps({"__metadata__": header.get("__metadata__", {}), **entries}, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded)
    return f"header of {count} empty tensors ({len(encoded) / 2**20:.1f} MiB)"


def stray_file(path: Path, rng: random.Random) -> str:
    stray = path.parent / "checkpoint-abc.safetensors"
    stray.write_bytes(b"not a checkpoint at all")
    return stray.name


def checkpoint_directory(path: Path, rng: random.Random) -> str:
    folder = path.parent / checkpoint_name(99_999_999)
    folder.mkdir()
    (folder / "inside").write_text("a directory named like the newest checkpoint\n")
    return f"directory {folder.name}"


def latest_deleted(path: Path, rng: random.Random) -> str:
    (path.parent / "latest").unlink()
    return "latest removed"


def latest_empty(path: Path, rng: random.Random) -> str:
    (path.parent / "latest").write_bytes(b"")
    return "latest of 0 bytes"


# --- trials --------------------------------------------------------------------------------------------------------
@dataclass
class Trial:
    kind: str
    detail: str
    verdict: str
    why: str
    seconds: float = 0.0


@dataclass
class Campaign:
    root: Path
    steps: int
    kills: int
    seed: int
    quick: bool
    sslx: Sslx
    data: Path = field(init=False)
    trials: list[Trial] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    # -- bookkeeping
    def record(self, kind: str, detail: str, verdict: str, why: str, started: float) -> None:
        trial = Trial(kind, detail, verdict, why, time.monotonic() - started)
        self.trials.append(trial)
        print(f"[{verdict:>14}] {kind}: {detail} -- {why} ({trial.seconds:.0f}s)", flush=True)

    def common(self, steps: int | None = None) -> list[str]:
        return ["--data", str(self.data), "--image-size", "32", "--batch-size", "8", "--steps",
                str(steps or self.steps), "--log-every", "1", "--no-probe", "--workers", "0", "--seed", "0",
                "--device", "cpu"]  # fmt: skip

    def fresh(self, name: str) -> Path:
        path = self.root / "trials" / name
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path

    # -- judging
    def judge_refusal(self, result: Finished, codes: tuple[int, ...] = (1, 2)) -> tuple[str, str]:
        if result.traceback:
            return "traceback", result.summary()
        if result.timed_out:
            return "wrong", f"hung: killed after {result.seconds:.0f}s"
        errors = result.error_lines()
        if result.returncode in codes and len(errors) == 1:
            return "refused", result.summary()
        return "wrong", f"expected a one-line refusal (exit {'/'.join(map(str, codes))}); got {result.summary()}"

    def judge_resume(
        self, result: Finished, run: Path, reference: Path, expected_start: int, restart_ok: bool = False
    ) -> tuple[str, str]:
        """A finished resume: where it started from, then its final weights and metrics against the reference."""
        if result.traceback:
            return "traceback", result.summary()
        if result.timed_out:
            return "wrong", f"hung: killed after {result.seconds:.0f}s"
        if result.returncode != 0:
            return "wrong", f"resume failed: {result.summary()}"
        start = result.first_step()
        if start is None:
            start = self.steps  # nothing left to train: it resumed from the final checkpoint
        if start == 0 and not result.announced_restart():
            return "silent restart", f"started from step 0 without saying so (expected step {expected_start})"
        if start != expected_start:
            if not (start == 0 and restart_ok):
                return "wrong", f"resumed from step {start}, expected {expected_start}"
        equal, detail = same_tensors(run / checkpoint_name(self.steps), reference / checkpoint_name(self.steps))
        if not equal:
            return "wrong", f"final checkpoint differs from the uninterrupted run's: {detail}"
        if metric_rows(run) != metric_rows(reference):
            return "wrong", "final weights equal, but metrics.jsonl differs from the uninterrupted run"
        stale = leftovers(run)
        return "bitwise", f"from step {start}: {detail}" + (f"; left behind: {', '.join(stale)}" if stale else "")

    # -- reference runs
    def reference(self, name: str, task_args: list[str], every: int, keep: int | None = None) -> tuple[Path, float]:
        """An uninterrupted run, and how long it trained: from ``config.toml`` being written to the final checkpoint
        appearing (the window random kills are drawn in; the process's exit comes later)."""
        run = self.root / "references" / name
        if run.exists():
            shutil.rmtree(run)
        run.parent.mkdir(parents=True, exist_ok=True)
        extra = ["--keep-checkpoints", str(keep)] if keep else []
        seen: dict[str, float] = {}
        final = run / checkpoint_name(self.steps)

        def watch(err: Path) -> bool:
            if "config" not in seen and (run / "config.toml").exists():
                seen["config"] = time.monotonic()
            if "final" not in seen and final.exists():
                seen["final"] = time.monotonic()
            return False

        result = self.sslx.run(
            "pretrain", *task_args, *self.common(), "--checkpoint-every", str(every), *extra, "--out", run,
            trigger=watch, poll=0.002,
        )  # fmt: skip
        if result.returncode != 0:
            raise SystemExit(f"reference run {name} failed: {result.summary()}\n{result.stderr}")
        if "config" not in seen or "final" not in seen:
            return run, 1.0
        return run, max(seen["final"] - seen["config"], 0.2)

    # -- SIGKILL trials
    def kill_trials(self) -> None:
        tasks = [
            ("rotation", ["--task", "rotation"], 1),
            ("simclr", ["--task", "simclr"], 2),
            ("inpainting", ["--task", "inpainting"], 1),
            ("rotation+jigsaw=0.5", ["--task", "rotation", "--task", "jigsaw=0.5"], 2),
        ]
        moments = ["random", "checkpoint-tmp", "latest-tmp", "before-first", "after-rename", "double"]
        rng = random.Random(self.seed)
        for name, task_args, every in tasks:
            reference, training = self.reference(name.replace("=", ""), task_args, every)
            for index in range(self.kills):
                moment = moments[index % len(moments)]
                started = time.monotonic()
                verdict, why, detail = self.kill_trial(name, task_args, every, reference, training, moment, rng)
                self.record(f"SIGKILL + resume: {name}", f"#{index + 1} {moment}, {detail}", verdict, why, started)

    def kill_trigger(
        self, run: Path, moment: str, every: int, training: float, rng: random.Random, start: int = 0
    ) -> tuple[Trigger, str]:
        """When to kill a run that starts at step ``start``, drawn with ``rng``, and the moment in words.

        ``random``: a step ``s`` drawn from those left to train, then a delay drawn within one step's average time
        (``training / steps``) after the run reports step ``s`` (``s == start``: after ``config.toml`` appears, or
        for a resume after its ``pretraining ...`` line), so the kills spread over the whole of training."""
        saves = list(range(every, self.steps + 1, every))
        if saves[-1] != self.steps:
            saves.append(self.steps)
        if moment == "random":
            step = rng.randrange(start, self.steps)
            delay = rng.uniform(0, training / self.steps)
            line = re.compile(rf"^step {step}/" if step > start else r"^pretraining ", re.MULTILINE)
            begun: list[float] = []

            def reached(err: Path) -> bool:
                if step == 0:
                    return (run / "config.toml").exists()
                return bool(line.search(err.read_text(errors="replace")))

            def after_delay(err: Path) -> bool:
                if not begun and reached(err):
                    begun.append(time.monotonic())
                return bool(begun) and time.monotonic() - begun[0] >= delay

            return after_delay, f"{delay:.2f}s after step {step}"
        if moment == "before-first":
            return (lambda err: (run / "config.toml").exists()), "as config.toml appears"
        step = rng.choice(saves)
        target = run / checkpoint_name(step)
        if moment == "checkpoint-tmp":
            temporary = run / f".{target.name}.tmp"
            return (lambda err: temporary.exists()), f"while .{target.name}.tmp exists"
        if moment == "latest-tmp":
            return (
                lambda err: target.exists() and (run / ".latest.tmp").exists()
            ), f"while latest -> step {step} is written"
        return (lambda err: target.exists()), f"as {target.name} appears"  # after-rename

    def kill_once(
        self,
        args: list[str | Path],
        run: Path,
        moment: str,
        every: int,
        training: float,
        rng: random.Random,
        start: int = 0,
    ) -> tuple[Finished, str]:
        """Run ``args`` and SIGKILL it at ``moment``; a trigger that never fired (the run was quicker) is drawn again,
        up to three times."""
        result, detail = None, ""
        for _attempt in range(3):
            trigger, detail = self.kill_trigger(run, moment, every, training, rng, start)
            result = self.sslx.run(*args, trigger=trigger, poll=0.0005 if moment.endswith("tmp") else 0.005)
            if result.killed or result.returncode != 0:
                return result, detail
            if "--resume" in args:
                return result, detail + " (the resume finished first)"
            shutil.rmtree(run)
        assert result is not None
        return result, detail + " (missed three times: not killed)"

    def kill_trial(
        self,
        name: str,
        task_args: list[str],
        every: int,
        reference: Path,
        training: float,
        moment: str,
        rng: random.Random,
    ) -> tuple[str, str, str]:
        trial = self.fresh(f"kill-{name.replace('=', '')}-{len(self.trials)}")
        run = trial / "run"
        args: list[str | Path] = [
            "pretrain",
            *task_args,
            *self.common(),
            "--checkpoint-every",
            str(every),
            "--out",
            run,
        ]
        killed, detail = self.kill_once(args, run, "random" if moment == "double" else moment, every, training, rng)
        detail += f" [{landed(run)}]"
        if killed.traceback:
            return "traceback", killed.summary(), detail
        if not killed.killed and killed.returncode != 0:
            return "wrong", f"the run itself failed: {killed.summary()}", detail
        resume_args: list[str | Path] = ["pretrain", "--out", run, "--resume"]
        if moment == "double" and max(checkpoint_files(run), default=0) < self.steps:
            expected = max(checkpoint_files(run), default=0)
            second, second_detail = self.kill_once(resume_args, run, "random", every, training, rng, expected)
            detail += f", then the resume killed {second_detail} [{landed(run)}]"
            if second.traceback:
                return "traceback", second.summary(), detail
            if not second.killed and second.returncode != 0:
                return "wrong", f"the first resume failed: {second.summary()}", detail
            start = second.first_step()
            if start == 0 and expected > 0 and not second.announced_restart():
                return "silent restart", f"first resume started from step 0 (step {expected} was there)", detail
        expected = max(checkpoint_files(run), default=0)
        resumed = self.sslx.run(*resume_args)
        verdict, why = self.judge_resume(resumed, run, reference, expected)
        if verdict == "bitwise" and (run / "damaged").exists():
            verdict, why = "wrong", f"set aside as damaged: {sorted(p.name for p in (run / 'damaged').iterdir())}"
        return verdict, why, detail

    # -- damage trials
    def killed_copy(self, base: Path, name: str, after: int) -> Path:
        """A copy of ``base`` as a run killed just after writing checkpoint ``after``."""
        run = self.fresh(name) / "run"
        shutil.copytree(base, run)
        for step, path in checkpoint_files(run).items():
            if step > after:
                path.unlink()
        (run / "latest").write_text(checkpoint_name(after) + "\n")
        return run

    def damage_trials(self, base: Path) -> None:
        k = self.steps - 3
        rng = random.Random(self.seed + 1)
        fallbacks: list[tuple[str, Callable[[Path, random.Random], str], int]] = [
            ("truncated newest checkpoint", truncate, k - 1),
            ("bit flip in tensor data", flip_bit, k - 1),
            ("metadata 'config' missing", drop_metadata("config"), k - 1),
            ("metadata 'optim' missing", drop_metadata("optim"), k - 1),
            ("non-integer step", set_metadata("step", "7.5"), k - 1),
            ("wrong-shaped tensor", wrong_shape, k - 1),
            ("image_size = 100000 in the header", set_metadata("image_size", "100000"), k - 1),
            ("header of 600k empty tensors", many_empty_tensors, k - 1),
            ("stray checkpoint-abc.safetensors", stray_file, k),
            ("directory named like a checkpoint", checkpoint_directory, k),
            ("latest deleted", latest_deleted, k),
            ("latest of 0 bytes", latest_empty, k),
        ]
        for kind, damage, expected in fallbacks:
            started = time.monotonic()
            run = self.killed_copy(base, f"damage-{len(self.trials)}", k)
            detail = damage(run / checkpoint_name(k), rng)
            verdict, why = self.judge_resume(self.sslx.run("pretrain", "--out", run, "--resume"), run, base, expected)
            if verdict == "bitwise" and expected < k and not (run / "damaged" / checkpoint_name(k)).is_file():
                verdict, why = "wrong", f"{checkpoint_name(k)} was not set aside in damaged/"
            if verdict == "bitwise" and kind.startswith("stray") and not (run / "checkpoint-abc.safetensors").exists():
                verdict, why = "wrong", "the stray file was moved or deleted"
            if verdict == "bitwise" and kind.startswith("latest"):
                exported = self.sslx.run("export", run, "--out", run.parent / "backbone.safetensors")
                if exported.returncode != 0 or exported.traceback:
                    verdict, why = ("traceback" if exported.traceback else "wrong"), f"export: {exported.summary()}"
            self.record(f"damage, then --resume: {kind}", detail, verdict, why, started)
        # crafted headers read by the other commands: refused, fast, before allocating what they declare
        good = self.sslx.run("export", base, "--out", self.fresh("export-baseline") / "backbone.safetensors")
        if good.returncode != 0:
            raise SystemExit(f"export of the reference run failed: {good.summary()}")
        slowest = SLOW_REFUSAL_FACTOR * good.seconds + SLOW_REFUSAL_EXTRA_S
        largest = good.max_rss_mb + EXTRA_MEMORY_MB
        self.notes.append(
            f"crafted-header refusals are bounded by `sslx export` of a good checkpoint run just before "
            f"({good.seconds:.1f}s, {good.max_rss_mb:.0f} MB peak): at most {slowest:.0f}s and {largest:.0f} MB"
        )
        for kind, damage in (("image_size = 100000", set_metadata("image_size", "100000")),
                             ("600k empty tensors", many_empty_tensors),
                             ("metadata 'config' missing", drop_metadata("config")),
                             ("wrong-shaped tensor", wrong_shape)):  # fmt: skip
            run = self.killed_copy(base, f"crafted-{len(self.trials)}", k)
            for step, path in checkpoint_files(run).items():
                if step != k:
                    path.unlink()
            detail = damage(run / checkpoint_name(k), rng)
            commands: list[tuple[str, list[str | Path]]] = [
                ("show", ["show", run, "--out", run.parent / "show.png"]),
                ("evaluate", ["evaluate", run, "--protocol", "knn", "--device", "cpu"]),
                ("export", ["export", run, "--out", run.parent / "backbone.safetensors"]),
            ]
            for command, args in commands:
                started = time.monotonic()
                result = self.sslx.run(*args, timeout=300)
                verdict, why = self.judge_refusal(result, (2,))
                if verdict == "refused" and (result.seconds > slowest or result.max_rss_mb > largest):
                    verdict = "wrong"
                    why = f"refused only after {result.seconds:.1f}s / {result.max_rss_mb:.0f} MB: {why}"
                elif verdict == "refused":
                    why += f" ({result.seconds:.1f}s, {result.max_rss_mb:.0f} MB peak)"
                self.record(
                    "the only checkpoint crafted: `show`, `evaluate`, `export` refuse it",
                    f"sslx {command}: {kind} ({detail})",
                    verdict,
                    why,
                    started,
                )
        self.all_damaged_trials(base, k, rng)

    def all_damaged_trials(self, base: Path, k: int, rng: random.Random) -> None:
        started = time.monotonic()
        run = self.killed_copy(base, f"all-damaged-{len(self.trials)}", k)
        cut = [truncate(path, rng) for path in checkpoint_files(run).values()]
        before = snapshot(run)
        refused = self.sslx.run("pretrain", "--out", run, "--resume")
        verdict, why = self.judge_refusal(refused, (2,))
        if verdict == "wrong" and refused.returncode == 2 and not refused.traceback and refused.error_lines():
            verdict, why = "refused", refused.summary()  # one Error: line, then one line per file
        missing = [path.name for path in checkpoint_files(run).values() if path.name not in refused.stderr]
        if verdict == "refused" and missing:
            verdict, why = "wrong", f"the refusal does not list {missing}"
        if verdict == "refused" and snapshot(run) != before:
            verdict, why = "wrong", "refused, but the run directory changed"
        self.record("all checkpoints truncated: --resume", f"{len(cut)} files cut", verdict, why, started)
        started = time.monotonic()
        restarted = self.sslx.run("pretrain", "--out", run, "--resume", "--restart")
        verdict, why = self.judge_resume(restarted, run, base, 0, restart_ok=True)
        if verdict == "bitwise" and not restarted.announced_restart():
            verdict, why = "silent restart", "--restart started from step 0 without saying so"
        moved = sorted(path.name for path in (run / "damaged").glob("*")) if (run / "damaged").exists() else []
        if verdict == "bitwise" and len(moved) != len(cut):
            verdict, why = "wrong", f"damaged/ holds {moved}, expected the {len(cut)} files"
        self.record("all checkpoints truncated: --resume --restart", f"{len(moved)} set aside", verdict, why, started)

    # -- configs
    def config_trials(self, base: Path) -> None:
        saved = tomllib_load(base / "config.toml")
        cases: list[tuple[str, str, Callable[[dict[str, Any]], None]]] = [
            ("keep_checkpoints = -1", "keep_checkpoints", lambda c: c.update(keep_checkpoints=-1)),
            ("batch_size = 0", "batch_size", lambda c: c.update(batch_size=0)),
            ("batch_size = -3", "batch_size", lambda c: c.update(batch_size=-3)),
            ("log_every = 0", "log_every", lambda c: c.update(log_every=0)),
            ("checkpoint_every = 0", "checkpoint_every", lambda c: c.update(checkpoint_every=0)),
            ("steps = 0", "steps", lambda c: c.update(steps=0)),
            ("epochs = -1", "epochs", lambda c: c.update(epochs=-1.0)),
            ("warmup_fraction = 1.5", "warmup_fraction", lambda c: c.update(warmup_fraction=1.5)),
            ("workers = -1", "workers", lambda c: c.update(workers=-1)),
            ("weight_decay = -0.1", "weight_decay", lambda c: c.update(weight_decay=-0.1)),
            ("device = 'tpu'", "device", lambda c: c.update(device="tpu")),
            ("lr = nan", "lr", lambda c: c.update(lr=float("nan"))),
            ("lr = inf", "lr", lambda c: c.update(lr=float("inf"))),
            ("task weight nan", "rotation", lambda c: c["tasks"]["rotation"].update(weight=float("nan"))),
            ("task weight -1", "rotation", lambda c: c["tasks"]["rotation"].update(weight=-1.0)),
            ("task weight 0", "rotation", lambda c: c["tasks"]["rotation"].update(weight=0)),
            ("task weight 'abc'", "rotation", lambda c: c["tasks"]["rotation"].update(weight="abc")),
            ("a 100000-character backbone", "backbone", lambda c: c.update(backbone="x" * 100_000)),
            ("unknown field", "bogus", lambda c: c.update(bogus=1)),
        ]
        if self.quick:
            cases = cases[:: max(1, len(cases) // 5)]
        for kind, field_name, change in cases:
            started = time.monotonic()
            trial = self.fresh(f"config-{len(self.trials)}")
            config = json.loads(json.dumps(saved))
            change(config)
            path = trial / "crafted.toml"
            path.write_text(tomli_w.dumps(config))
            result = self.sslx.run("pretrain", "--config", path, "--out", trial / "run")
            verdict, why = self.judge_refusal(result, (2,))
            if verdict == "refused" and not (path.name in result.stderr and field_name in result.stderr):
                why += f"  [does not name {'the file' if path.name not in result.stderr else repr(field_name)}]"
            if verdict == "refused" and (trial / "run").exists():
                verdict, why = "wrong", "refused, but the run directory was created"
            self.record("crafted config file: pretrain --config", kind, verdict, why, started)
        # a crafted or torn config.toml in a run directory, read by --resume
        k = self.steps - 3
        for kind, edit in (("log_every = 0 in RUN_DIR/config.toml", "log_every"),
                           ("RUN_DIR/config.toml cut in half", "cut"),
                           ("RUN_DIR/config.toml of 0 bytes", "empty")):  # fmt: skip
            started = time.monotonic()
            run = self.killed_copy(base, f"run-config-{len(self.trials)}", k)
            text = (run / "config.toml").read_text()
            if edit == "log_every":
                text = re.sub(r"^log_every = .*$", "log_every = 0", text, flags=re.MULTILINE)
            else:
                text = text[: len(text) // 2] if edit == "cut" else ""
            (run / "config.toml").write_text(text)
            before = snapshot(run)
            result = self.sslx.run("pretrain", "--out", run, "--resume")
            verdict, why = self.judge_refusal(result, (2,))
            if verdict == "refused" and snapshot(run) != before:
                verdict, why = "wrong", "refused, but the run directory changed"
            self.record("crafted run directory: --resume", kind, verdict, why, started)

    # -- data and evaluation
    def data_trials(self, base: Path) -> None:
        started = time.monotonic()
        trial = self.fresh(f"bomb-{len(self.trials)}")
        flat = trial / "flat"  # unlabelled: every image is in the pretraining split
        flat.mkdir()
        for path in self.data.glob("*/*.png"):
            shutil.copy(path, flat / f"{path.parent.name}-{path.name}")
        decompression_bomb(flat / "bomb.png")
        common = self.common()
        common[common.index("--data") + 1] = str(flat)
        result = self.sslx.run("pretrain", "--task", "rotation", *common, "--out", trial / "run", timeout=300)
        verdict, why = self.judge_handled(result, ("bomb.png", "skipped"))
        self.record("decompression bomb in the data folder", "pretrain: a 100000x100000 PNG of 97 bytes", verdict,
                    why, started)  # fmt: skip
        started = time.monotonic()
        data = trial / "labelled"
        shutil.copytree(self.data, data)
        for label in ("c0", "c1"):
            for index in range(4):  # some in every split
                decompression_bomb(data / label / f"img{index:03d}-bomb.png")
        run = self.killed_copy(base, f"bomb-eval-{len(self.trials)}", self.steps)
        result = self.sslx.run("evaluate", run, "--data", data, "--protocol", "knn", "--device", "cpu", timeout=300)
        verdict, why = self.judge_handled(result, ("bomb.png", "skipped"))
        self.record("decompression bomb in the data folder", "evaluate --data FOLDER", verdict, why, started)
        # a truncated features cache: extracted again, with a warning, the same result
        started = time.monotonic()
        run = self.killed_copy(base, f"features-{len(self.trials)}", self.steps)
        first = self.sslx.run("evaluate", run, "--protocol", "knn", "--device", "cpu", "--json")
        caches = sorted((run / "features").glob("*.safetensors")) if (run / "features").exists() else []
        if first.returncode != 0 or not caches:
            verdict, why = "wrong", f"first evaluate: {first.summary()}, {len(caches)} cache files"
        else:
            for path in caches:
                os.truncate(path, path.stat().st_size // 2)
            again = self.sslx.run("evaluate", run, "--protocol", "knn", "--device", "cpu", "--json")
            verdict, why = self.judge_handled(again, ("unreadable",))
            if verdict == "handled":
                same = json.loads(first.stdout)["accuracy"] == json.loads(again.stdout)["accuracy"]
                rewritten = all(read_tensors(path)[0]["features"].ndim == 2 for path in caches)
                if not (same and rewritten):
                    verdict, why = "wrong", f"accuracy equal: {same}, cache rewritten whole: {rewritten}"
                else:
                    why += "; same accuracy, cache rewritten"
        self.record("truncated features cache", f"{len(caches)} cache files cut in half", verdict, why, started)
        # a non-finite loss: exit 1 naming the last good checkpoint, and no checkpoint holds a non-finite tensor
        started = time.monotonic()
        trial = self.fresh(f"nonfinite-{len(self.trials)}")
        result = self.sslx.run("pretrain", "--task", "rotation", *self.common(), "--checkpoint-every", "1",
                               "--lr", "1e30", "--out", trial / "run")  # fmt: skip
        verdict, why = self.judge_refusal(result, (1,))
        if verdict == "refused":
            poisoned = [
                path.name
                for path in checkpoint_files(trial / "run").values()
                if not all(torch.isfinite(t).all() for t in read_tensors(path)[0].values() if t.is_floating_point())
            ]
            if poisoned:
                verdict, why = "wrong", f"checkpoints with non-finite tensors: {poisoned}"
            elif "checkpoint" not in result.error_lines()[0]:
                why += "  [does not name the last good checkpoint]"
        self.record("non-finite loss (--lr 1e30)", "pretrain", verdict, why, started)

    def judge_handled(self, result: Finished, words: tuple[str, ...]) -> tuple[str, str]:
        if result.traceback:
            return "traceback", result.summary()
        if result.returncode != 0:
            return "wrong", result.summary()
        warned = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
        if not any(all(word in line for word in words) for line in warned):
            return "wrong", f"exit 0 but no warning mentioning {words}"
        return "handled", next(line for line in warned if all(word in line for word in words))[:160]

    # -- full and read-only disks
    def disk_trials(self, base: Path) -> None:
        size = checkpoint_files(base)[1].stat().st_size
        mount = self.root / "mnt-full"
        mount.mkdir(exist_ok=True)
        capacity = int(size * 2.5)
        if not try_mount(mount, f"size={capacity}"):
            self.notes.append("disk-full rows skipped: `mount -t tmpfs` is not permitted here")
            return
        try:
            started = time.monotonic()
            run = mount / "run"
            result = self.sslx.run("pretrain", "--task", "rotation", *self.common(), "--checkpoint-every", "1",
                                   "--keep-checkpoints", "100", "--out", run)  # fmt: skip
            verdict, why = self.judge_refusal(result, (1,))
            written = checkpoint_files(run)
            if verdict == "refused":
                last = max(written, default=0)
                intact = [same_tensors(path, base / path.name)[0] for path in written.values()]
                latest = (run / "latest").read_text().strip() if (run / "latest").exists() else None
                if not written or not all(intact) or latest != checkpoint_name(last) or leftovers(run):
                    verdict = "wrong"
                    why = f"checkpoints {list(written)} intact {intact}, latest {latest!r}, left {leftovers(run)}"
                elif "No space left" not in result.stderr:
                    why += "  [does not say the disk is full]"
            self.record("disk full while checkpointing", f"tmpfs of {capacity} bytes", verdict, why, started)
            if verdict == "refused":
                started = time.monotonic()
                subprocess.run(["mount", "-o", f"remount,size={size * 30}", str(mount)], check=True)
                expected = max(written)
                verdict, why = self.judge_resume(self.sslx.run("pretrain", "--out", run, "--resume"), run, base,
                                                 expected)  # fmt: skip
                self.record("disk full while checkpointing", "space freed, then --resume", verdict, why, started)
        finally:
            subprocess.run(["umount", str(mount)], check=False)
        self.read_only_trials(base)

    def read_only_trials(self, base: Path) -> None:
        mount = self.root / "mnt-ro"
        mount.mkdir(exist_ok=True)
        if not try_mount(mount, "size=256m"):
            self.notes.append("read-only rows skipped: `mount -t tmpfs` is not permitted here")
            return
        try:
            k = self.steps - 3
            run = mount / "run"
            shutil.copytree(self.killed_copy(base, f"ro-{len(self.trials)}", k), run)
            if subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=False).returncode != 0:
                self.notes.append("read-only rows skipped: remounting the tmpfs read-only failed")
                return
            before = snapshot(run)
            commands: list[tuple[str, list[str | Path], tuple[int, ...]]] = [
                ("pretrain --resume", ["pretrain", "--out", run, "--resume"], (1, 2)),
                ("pretrain --out (new run)", ["pretrain", "--task", "rotation", *self.common(), "--out",
                                              mount / "new"], (2,)),
                ("export --out", ["export", run, "--out", mount / "backbone.safetensors"], (1, 2)),
                ("show --out", ["show", run, "--out", mount / "show.png"], (1, 2)),
                ("evaluate (results written into RUN_DIR)", ["evaluate", run, "--protocol", "knn", "--device",
                                                             "cpu"], (1, 2)),
            ]  # fmt: skip
            for kind, args, codes in commands:
                started = time.monotonic()
                verdict, why = self.judge_refusal(self.sslx.run(*args), codes)
                self.record(READ_ONLY, f"{kind} (tmpfs remounted ro)", verdict, why, started)
            subprocess.run(["mount", "-o", "remount,rw", str(mount)], check=True)
            started = time.monotonic()
            if snapshot(run) != before:
                self.record(READ_ONLY, "then rw, --resume", "wrong", "the directory changed", started)
                return
            verdict, why = self.judge_resume(self.sslx.run("pretrain", "--out", run, "--resume"), run, base, k)
            self.record(READ_ONLY, "remounted rw, then --resume", verdict, why, started)
        finally:
            subprocess.run(["umount", str(mount)], check=False)

    # -- everything
    def run_all(self) -> None:
        self.data = write_data(self.root / "data", 16, 32, self.seed)
        self.kill_trials()
        base, _ = self.reference("damage-base-rotation", ["--task", "rotation"], 1, keep=100)
        self.damage_trials(base)
        self.config_trials(base)
        self.data_trials(base)
        self.disk_trials(base)


def tomllib_load(path: Path) -> dict[str, Any]:
    import tomllib

    with open(path, "rb") as handle:
        return tomllib.load(handle)


def try_mount(mount: Path, options: str) -> bool:
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], capture_output=True)
    return done.returncode == 0


# --- the table -----------------------------------------------------------------------------------------------------
def table(trials: list[Trial]) -> list[str]:
    kinds: dict[str, list[Trial]] = {}
    for trial in trials:
        kinds.setdefault(trial.kind, []).append(trial)
    header = ["trial kind", "trials", "bitwise-equal resumes", "clean refusals", "handled as documented",
              "tracebacks", "silent restarts", "wrong results"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def row(name: str, group: list[Trial]) -> str:
        counts = [sum(trial.verdict == verdict for trial in group) for verdict in CLASSES]
        return "| " + " | ".join([name, str(len(group)), *map(str, counts)]) + " |"

    lines += [row(kind, group) for kind, group in kinds.items()]
    lines.append(row("**total**", trials))
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="Seeds the kill moments and the damage.")
    parser.add_argument("--kills", type=int, help="SIGKILL trials per task [default: 6, 1 with --quick].")
    parser.add_argument("--out", type=Path, help="Working directory [default: a temporary one, removed at the end].")
    parser.add_argument("--quick", action="store_true", help="6-step runs, one kill per task, fewer crafted configs.")
    parser.add_argument("--keep", action="store_true", help="Keep the temporary working directory.")
    options = parser.parse_args()
    # Stopped with SIGTERM: unwind, so the running sslx process is killed, the tmpfs unmounted and the table printed.
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))
    root = options.out or Path(tempfile.mkdtemp(prefix="sslx-faults-"))
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("SSLX_DEBUG", None)
    kills = options.kills if options.kills is not None else (1 if options.quick else 6)
    steps = 6 if options.quick else 10
    campaign = Campaign(root, steps, kills, options.seed, options.quick, Sslx(root / "logs", env))
    started = time.monotonic()
    print(f"fault injection: seed {options.seed}, {kills} kills per task, {steps}-step runs, in {root}", flush=True)
    try:
        campaign.run_all()
    finally:
        lines = table(campaign.trials)
        minutes = (time.monotonic() - started) / 60
        kills = [trial for trial in campaign.trials if trial.kind.startswith("SIGKILL")]
        mid_write = sum("left mid-write" in trial.detail for trial in kills)
        footer = [f"{len(campaign.trials)} trials, {campaign.sslx.count} sslx processes, {minutes:.1f} min"]
        moments: dict[str, int] = {}
        for trial in kills:
            moment = trial.detail.split(" ", 1)[1].split(",", 1)[0]
            moments[moment] = moments.get(moment, 0) + 1
        footer += [
            f"{mid_write} of the {len(kills)} SIGKILL trials left a temporary file (killed mid-write); kill moments: "
            + ", ".join(f"{moment} {count}" for moment, count in moments.items())
        ]
        footer += [f"note: {note}" for note in campaign.notes]
        print("\n" + "\n".join(lines + [""] + footer), flush=True)
        (root / "table.md").write_text("\n".join(lines + [""] + footer) + "\n")
        (root / "trials.json").write_text(json.dumps([trial.__dict__ for trial in campaign.trials], indent=2) + "\n")
        stamp = f"{datetime.now():%Y-%m-%d %H:%M}"
        print(f"({stamp}; details in {root / 'trials.json'}, logs in {root / 'logs'})")
        if options.out is None and not options.keep:
            shutil.rmtree(root, ignore_errors=True)
    bad = [trial for trial in campaign.trials if trial.verdict in ("traceback", "silent restart", "wrong")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
