"""What do relpatch's shortcut guards change? Pretext accuracy (and optionally the linear probe) per guard removed.

Doersch et al. 2015 found that without a gap and jitter the network solves the relative-position task from
low-level cues (edges and textures continuing from one patch into the other) and learns little else; colour
dropping and downsampling remove chromatic aberration and sharpness cues. A guard that blocks a shortcut makes
the pretext task *harder*: removing it should raise the pretext accuracy. This runs ``sslx pretrain --task
relpatch`` as a user would, once with the paper's guards and once with each guard switched off, and prints the
pretext accuracy over the last logged steps (and the linear probe with ``--probe``) as a Markdown table.

Usage::

    python benchmarks/relpatch_shortcuts.py [--steps 300] [--seed 0] [--probe] [--extra "--image-size 96"]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS: dict[str, list[str]] = {
    "all guards (paper)": [],
    "no gap, no jitter": ["relpatch.gap=0", "relpatch.jitter=0"],
    "no jitter": ["relpatch.jitter=0"],
    "no downsampling": ["relpatch.downsample_probability=0"],
    "no colour dropping": ["relpatch.color_drop_probability=0"],
    "no guards": [
        "relpatch.gap=0",
        "relpatch.jitter=0",
        "relpatch.downsample_probability=0",
        "relpatch.color_drop_probability=0",
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", default="0")
    parser.add_argument("--probe", action="store_true", help="also run the closing linear probe (slower)")
    parser.add_argument("--tail", type=int, default=5, help="logged steps averaged for the pretext accuracy")
    parser.add_argument("--extra", default="", help="more sslx pretrain options, quoted")
    parser.add_argument("--out", type=Path, help="keep the run directories here")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="sslx-relpatch-"))
    rows = []
    for index, (variant, settings) in enumerate(VARIANTS.items()):
        run = out / f"variant{index}-seed{args.seed}"
        command = [sys.executable, "-m", "ssl_engine.cli", "pretrain", "--task", "relpatch", "--seed", args.seed,
                   "--steps", str(args.steps), "--out", str(run), *shlex.split(args.extra)]  # fmt: skip
        for setting in settings:
            command += ["--set", setting]
        if not args.probe:
            command.append("--no-probe")
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seconds = time.perf_counter() - started
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        tail = metrics[-args.tail :]
        pretext = sum(line["relpatch/accuracy"] for line in tail) / len(tail)
        probe = json.loads((run / "probe.json").read_text()) if args.probe else None
        rows.append((variant, pretext, probe, seconds))
        print(f"{variant}: pretext accuracy {pretext:.3f} ({seconds:.0f} s)", flush=True)
    print(f"\n{args.steps} steps, seed {args.seed}, pretext accuracy averaged over the last {args.tail} logged steps")
    print("\n| guards | pretext accuracy | linear probe, pretrained | linear probe, random init | wall time |")
    print("|---|---|---|---|---|")
    for variant, pretext, probe, seconds in rows:
        trained = f"{probe['pretrained']['accuracy']:.4f}" if probe else "-"
        random_init = f"{probe['random_init']['accuracy']:.4f}" if probe else "-"
        print(f"| {variant} | {pretext:.3f} | {trained} | {random_init} | {seconds:.0f} s |")


if __name__ == "__main__":
    main()
