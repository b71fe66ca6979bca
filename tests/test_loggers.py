"""Loggers are plugins (``register_loggers``): ``--loggers`` chooses them, each gets every logged step, ``jsonl`` is
always on, a resume shows each step once in TensorBoard, and a logger that fails is named after its plugin."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from ssl_engine.api import LoggerRegister, MetricsLogger, RunOutcome, hookimpl
from ssl_engine.plugins import PluginHost
from ssl_engine.registry import UnknownNameError
from ssl_engine.testing import KIT_BACKBONE, KIT_DATA, REFERENCE_TASK, cli_plugins, pretrain_cli, run_cli
from ssl_engine.train.metrics_log import chosen_loggers

FAST = (
    "--batch-size",
    8,
    "--data",
    KIT_DATA,
    "--backbone",
    KIT_BACKBONE,
    "--image-size",
    32,
    "--workers",
    0,
    "--log-every",
    2,
)


class RecordingLogger(MetricsLogger):
    """Keeps what the loop hands it, in :data:`RECORDED` (one list per run)."""

    def open(self, run_dir: Path, start_step: int, config: Mapping[str, Any]) -> None:
        RECORDED.append({"run_dir": run_dir, "start_step": start_step, "config": dict(config), "steps": []})

    def log(self, step: int, values: Mapping[str, object]) -> None:
        RECORDED[-1]["steps"].append((step, dict(values)))

    def close(self, outcome: RunOutcome = "finished") -> None:
        RECORDED[-1]["outcome"] = outcome


RECORDED: list[dict[str, Any]] = []


class FailingLogger(MetricsLogger):
    """Raises in :meth:`log` (or in :meth:`open` when ``FAIL_IN`` says so)."""

    fail_in = "log"

    def open(self, run_dir: Path, start_step: int, config: Mapping[str, Any]) -> None:
        if self.fail_in == "open":
            raise ConnectionError("tracker unreachable")

    def log(self, step: int, values: Mapping[str, object]) -> None:
        raise ConnectionError("tracker unreachable")


class LoggerPlugin:
    @hookimpl
    def register_loggers(self, register: LoggerRegister) -> None:
        register("recorder", RecordingLogger, help="keeps every step in memory")
        register("flaky", FailingLogger, help="raises")


PLUGIN = ("trackers", LoggerPlugin())


def metric_lines(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_auto_is_jsonl_and_the_default_loggers_and_jsonl_is_always_first() -> None:
    registry = PluginHost.from_plugins([PLUGIN]).registry
    names = [entry.name for entry in chosen_loggers("auto", registry)]
    assert names == ["jsonl", "tensorboard"]  # tensorboard is installed for the tests (requirements-dev.txt)
    assert [e.name for e in chosen_loggers("recorder, auto,recorder", registry)] == ["jsonl", "recorder", "tensorboard"]
    assert [e.name for e in chosen_loggers("recorder", registry)] == ["jsonl", "recorder"]
    with pytest.raises(
        UnknownNameError, match=r"unknown logger 'recordr' \(did you mean 'recorder'\?\); available: auto"
    ):
        chosen_loggers("jsonl,recordr", registry)


def test_a_misspelt_register_keyword_names_the_plugin() -> None:
    class Typo:
        @hookimpl
        def register_loggers(self, register: Any) -> None:
            register("typo", RecordingLogger, defualt=True)

    host = PluginHost.from_plugins([("typo-plugin", Typo())])
    [problem] = [p for p in host.problems if p.plugin == "typo-plugin"]
    assert "'defualt' (did you mean 'default'?)" in problem.message
    assert "typo" not in host.registry.loggers


@pytest.mark.slow
def test_an_inline_logger_receives_every_logged_step(tmp_path: Path) -> None:
    RECORDED.clear()
    with cli_plugins(PLUGIN):
        run = pretrain_cli(tmp_path, REFERENCE_TASK, *FAST, "--steps", 5, "--loggers", "recorder")
    [record] = RECORDED
    assert record["run_dir"] == run and record["start_step"] == 0 and record["outcome"] == "finished"
    assert record["config"]["loggers"] == "recorder" and REFERENCE_TASK in record["config"]["tasks"]
    logged = [{"step": step, **values} for step, values in record["steps"]]
    assert [line["step"] for line in logged] == [2, 4, 5]
    assert logged == metric_lines(run)  # jsonl is on although --loggers does not name it
    assert not (run / "tensorboard").exists()  # not asked for


@pytest.mark.slow
def test_tensorboard_shows_each_step_once_after_a_resume(tmp_path: Path) -> None:
    accumulator_module = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    run = tmp_path / "run"
    with cli_plugins():
        pretrain_cli(tmp_path, REFERENCE_TASK, *FAST, "--steps", 6, "--checkpoint-every", 2, "--out", run)
        first = {line["step"]: line["loss"] for line in metric_lines(run)}
        for step in (6, 4):  # as if the session died after logging step 6, its last checkpoint step 2's
            (run / f"checkpoint-{step:08d}.safetensors").unlink()
        (run / "latest").unlink()
        assert run_cli("pretrain", "--out", run, "--resume", "--steps", 8).exit_code == 0
    lines = metric_lines(run)
    assert [line["step"] for line in lines] == [2, 4, 6, 8]
    accumulator = accumulator_module.EventAccumulator(str(run / "tensorboard"))
    accumulator.Reload()
    shown = [(event.step, event.value) for event in accumulator.Scalars("loss")]
    assert [step for step, _ in shown] == [2, 4, 6, 8]  # steps 4 and 6 of the first session are hidden
    assert shown == [(line["step"], pytest.approx(line["loss"])) for line in lines]
    assert shown[0][1] == pytest.approx(first[2])


@pytest.mark.slow
def test_an_unknown_logger_exits_2_with_the_closest_name(tmp_path: Path) -> None:
    with cli_plugins(PLUGIN):
        result = run_cli(
            "pretrain", "--task", REFERENCE_TASK, *FAST, "--loggers", "jsonl,tensorbord", "--out", tmp_path / "run"
        )
    assert result.exit_code == 2
    assert "unknown logger 'tensorbord' (did you mean 'tensorboard'?); available: auto, flaky, jsonl" in result.stderr
    assert not (tmp_path / "run").exists()  # refused before the run directory is made


@pytest.mark.slow
def test_a_logger_failing_in_log_is_named_and_left_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSLX_STRICT_PLUGINS", raising=False)
    common = ("--task", REFERENCE_TASK, *FAST, "--steps", 4, "--no-probe", "--loggers", "flaky")
    named = "logger 'flaky' from plugin 'trackers' (distribution ?) failed in log: raised ConnectionError: tracker"
    with cli_plugins(PLUGIN):
        result = run_cli("pretrain", *common, "--out", tmp_path / "lenient")
        assert result.exit_code == 0, result.output
        assert f"warning: {named} unreachable; it logs nothing more in this run" in result.stderr
        assert [line["step"] for line in metric_lines(tmp_path / "lenient")] == [2, 4]

        monkeypatch.setenv("SSLX_STRICT_PLUGINS", "1")
        result = run_cli("pretrain", *common, "--out", tmp_path / "strict")
        assert result.exit_code == 1 and f"Error: {named}" in result.stderr

        monkeypatch.delenv("SSLX_STRICT_PLUGINS")
        monkeypatch.setattr(FailingLogger, "fail_in", "open")
        result = run_cli("pretrain", *common, "--out", tmp_path / "at-open")
        assert result.exit_code == 1
        assert "Error: logger 'flaky' from plugin 'trackers' (distribution ?) failed in open" in result.stderr
        assert not list((tmp_path / "at-open").glob("checkpoint-*"))  # stopped before training
