"""Progress of the evaluation phases (issue 22.2): every long phase says what it does, as plain lines in a log and
as a bar on a terminal; ``sslx evaluate`` and the closing probe show their phases."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from ssl_engine.data.catalog import resolve_data
from ssl_engine.data.options import DataOptions
from ssl_engine.eval.context import EvalContext
from ssl_engine.eval.linear import WEIGHT_DECAYS, linear_protocol
from ssl_engine.progress import PhaseProgress, seconds
from ssl_engine.task import Representation
from ssl_engine.testing import KIT_BACKBONE, KIT_DATA, KIT_DATA_IMAGES, REFERENCE_TASK, cli_plugins, run_cli
from ssl_engine.train.model import build_model


class Terminal(io.StringIO):
    """A captured stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_plain_lines_name_the_phase_count_down_and_say_when_done() -> None:
    log = io.StringIO()
    progress = PhaseProgress(stream=log, interval=0.0).labelled("pretrained")
    with progress.phase("extracting features of 1,000 train images", 1000, "img") as phase:
        for _ in range(4):
            phase.advance(250)
    lines = log.getvalue().splitlines()
    assert lines[0] == "pretrained: extracting features of 1,000 train images"
    assert lines[1].startswith("pretrained: extracting features of 1,000 train images: 250/1,000 img, about ")
    assert lines[1].endswith("s left") and len(lines) == 5  # start, three counts, done (the last count is "done")
    assert lines[-1].startswith("pretrained: extracting features of 1,000 train images: done in ")
    assert "\r" not in log.getvalue() and "\x1b" not in log.getvalue()  # no control characters in a log


def test_a_short_phase_prints_only_its_start_line_and_an_interrupted_one_no_done_line() -> None:
    log = io.StringIO()
    progress = PhaseProgress(stream=log)  # 10 s between lines: a quick phase shows just what it does
    with progress.phase("fitting 4 linear classifiers", 4, "fit") as phase:
        for _ in range(4):
            phase.advance()
    assert log.getvalue() == "fitting 4 linear classifiers\n"
    log = io.StringIO()
    with pytest.raises(KeyboardInterrupt), PhaseProgress(stream=log, interval=0.0).phase("slow", 10, "step") as phase:
        phase.advance()
        raise KeyboardInterrupt
    assert "done in" not in log.getvalue()


def test_on_a_terminal_a_bar_with_rate_and_eta_that_is_cleared_at_the_end() -> None:
    terminal = Terminal()
    with PhaseProgress(stream=terminal).phase("extracting features of 64 val images", 64, "img") as phase:
        for _ in range(4):
            phase.advance(16)
    shown = terminal.getvalue()
    assert "extracting features of 64 val images:" in shown and "/64 [" in shown and "img/s]" in shown
    assert shown.endswith("\r") and shown.rstrip("\r").split("\r")[-1].strip() == ""  # cleared: leave=False


def test_disabled_progress_says_nothing() -> None:
    log = io.StringIO()
    progress = PhaseProgress(enabled=False, stream=log, interval=0.0)
    with progress.phase("anything", 2) as phase:
        phase.advance(2)
    progress.note("a note")
    assert log.getvalue() == ""


def test_durations_read_as_people_say_them() -> None:
    assert [seconds(s) for s in (0.4, 8, 125, 3720)] == ["0s", "8s", "2 min 5s", "1 h 2 min"]


def test_linear_protocol_reports_extraction_of_each_split_and_the_fits() -> None:
    with cli_plugins() as host:
        source = resolve_data(KIT_DATA, host.registry, DataOptions())
        from ssl_engine.config import PretrainConfig, TaskSpec

        config = PretrainConfig([TaskSpec(REFERENCE_TASK)], backbone=KIT_BACKBONE, data=KIT_DATA)
        model = build_model(config, host.registry, 16, seed=0)
    log = io.StringIO()
    context = EvalContext(
        Representation(model.backbone), source, 16, torch.device("cpu"), progress=PhaseProgress(stream=log)
    )
    result = linear_protocol(context)
    assert 0 <= result["accuracy"] <= 1
    started = [line for line in log.getvalue().splitlines() if not line.endswith("left") and "done in" not in line]
    assert started == [
        f"extracting features of {KIT_DATA_IMAGES} train images",
        f"extracting features of {KIT_DATA_IMAGES} val images",
        f"extracting features of {KIT_DATA_IMAGES} test images",
        f"fitting {len(WEIGHT_DECAYS)} linear classifiers (one per weight decay) on {KIT_DATA_IMAGES} images",
    ]


@pytest.mark.slow
def test_evaluate_and_the_closing_probe_say_what_they_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSLX_CACHE_DIR", str(tmp_path / "cache"))
    common = ("--data", KIT_DATA, "--backbone", KIT_BACKBONE, "--image-size", 16, "--steps", 2, "--batch-size", 8)
    with cli_plugins():
        pretrained = run_cli("pretrain", "--task", REFERENCE_TASK, *common, "--out", tmp_path / "run")
        evaluated = run_cli("evaluate", tmp_path / "run", "--protocol", "linear")
    assert pretrained.exit_code == 0, pretrained.output
    probe = pretrained.stderr
    for network in ("pretrained", "random init"):
        for split in ("train", "val", "test"):
            assert f"{network}: extracting features of {KIT_DATA_IMAGES} {split} images" in probe
        assert f"{network}: fitting {len(WEIGHT_DECAYS)} linear classifiers" in probe
    assert "random init: not in the cache yet: evaluating it, about " in probe
    assert evaluated.exit_code == 0, evaluated.output
    assert f"linear protocol on {KIT_DATA} (16 px): the {REFERENCE_TASK} representation at step 2" in evaluated.stderr
    assert "linear top-1 accuracy" in evaluated.stdout and "extracting" not in evaluated.stdout
    # the probe kept the trained features where evaluate reads them: nothing is extracted again
    assert len(list((tmp_path / "run" / "features").glob("*.safetensors"))) == 3
    assert "extracting" not in evaluated.stderr
    with cli_plugins():
        other = run_cli("evaluate", tmp_path / "run", "--protocol", "linear", "--label-fraction", "0.5")
    assert other.exit_code == 0 and "extracting" not in other.stderr and "fitting 4 linear classifiers" in other.stderr
