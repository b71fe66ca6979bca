"""Evaluation protocols: kNN, linear and fine-tuning, label fractions, feature caching, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ssl_engine.data.catalog import resolve_data
from ssl_engine.data.options import DataOptions
from ssl_engine.eval.context import EvalContext, per_class_subset
from ssl_engine.eval.knn import knn_predict, knn_protocol
from ssl_engine.eval.linear import linear_protocol
from ssl_engine.plugins import get_host
from ssl_engine.testing import KIT_DATA, REFERENCE_TASK, cli_plugins, pretrain_cli


class FixedFeatures(torch.nn.Module):
    """A 'representation' whose features are given per split, bypassing images (for protocol unit tests)."""

    feature_dim = 10


def context_with(features: dict[str, tuple[torch.Tensor, torch.Tensor]], **kwargs: object) -> EvalContext:
    source = resolve_data("shapes", get_host().registry, DataOptions())
    context = EvalContext(FixedFeatures(), source, 16, torch.device("cpu"), **kwargs)  # type: ignore[arg-type]
    context._memo.update(features)
    return context


def one_hot_split(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.randint(0, 10, (count,), generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.one_hot(labels, 10).float(), labels


def test_knn_on_one_hot_label_features_is_perfect_and_on_noise_near_chance() -> None:
    perfect = context_with({s: one_hot_split(500, i) for i, s in enumerate(("train", "val", "test"))})
    assert knn_protocol(perfect)["accuracy"] == 1.0
    generator = torch.Generator().manual_seed(0)
    noise = {s: (torch.randn(2000, 32, generator=generator), one_hot_split(2000, i)[1]) for i, s in
             enumerate(("train", "val", "test"))}  # fmt: skip
    accuracy = knn_protocol(context_with(noise, options={"k": "20"}))["accuracy"]
    assert 0.05 < accuracy < 0.16  # chance is 0.10


def test_knn_votes_match_a_plain_loop_reference() -> None:
    generator = torch.Generator().manual_seed(1)
    bank, labels = torch.randn(60, 5, generator=generator), torch.randint(0, 3, (60,), generator=generator)
    queries = torch.randn(7, 5, generator=generator)
    got = knn_predict(bank, labels, queries, k=5, temperature=0.5, classes=3)
    for query, prediction in zip(queries, got, strict=True):
        similarity = torch.nn.functional.cosine_similarity(bank, query[None], dim=1)
        votes = [0.0, 0.0, 0.0]
        for index in similarity.argsort(descending=True)[:5].tolist():
            votes[int(labels[index])] += float(torch.exp(similarity[index] / 0.5))
        assert int(prediction) == max(range(3), key=votes.__getitem__)


def test_label_fraction_is_per_class_seeded_and_changes_the_linear_fit() -> None:
    labels = torch.arange(1000) % 10
    subset = per_class_subset(labels, 0.01, seed=3)
    assert torch.equal(labels[subset].bincount(), torch.ones(10, dtype=torch.long))
    assert torch.equal(subset, per_class_subset(labels, 0.01, seed=3))
    assert not torch.equal(subset, per_class_subset(labels, 0.01, seed=4))
    assert labels[per_class_subset(labels, 0.1, seed=0)].bincount().tolist() == [10] * 10
    features = {s: one_hot_split(400, i) for i, s in enumerate(("train", "val", "test"))}
    result = linear_protocol(context_with(features, label_fraction=0.05))
    expected = sum(max(1, round(0.05 * int(n))) for n in features["train"][1].bincount())
    assert result["train_size"] == expected < 40 and result["accuracy"] == 1.0


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 steps of the kit's reference task on the shapes data (read with ``reference_cli``)."""
    with cli_plugins():
        return pretrain_cli(tmp_path_factory.mktemp("runs"), REFERENCE_TASK, "--image-size", 16)


@pytest.mark.slow
@pytest.mark.usefixtures("reference_cli")
@pytest.mark.parametrize(
    ("protocol", "extra"),
    [("knn", ["--set", "k=20"]), ("linear", ["--label-fraction", "0.1"]),
     ("finetune", ["--label-fraction", "0.05", "--set", "epochs=1"])],
)  # fmt: skip
def test_protocols_from_the_cli_write_json_and_results(
    invoke, trained_run: Path, protocol: str, extra: list[str]
) -> None:  # type: ignore[no-untyped-def]
    result = invoke("evaluate", trained_run, "--protocol", protocol, "--json", *extra)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # progress lines go to stderr
    assert report["protocol"] == protocol and 0 <= report["accuracy"] <= 1 and report["step"] == 3
    written = sorted(trained_run.glob(f"eval-{protocol}-shapes*.json"))
    assert written and json.loads(written[-1].read_text())["accuracy"] == report["accuracy"]
    if "--label-fraction" in extra:
        fraction = float(extra[extra.index("--label-fraction") + 1])
        assert report["label_fraction"] == fraction and report["train_size"] == round(10000 * fraction)
    # frozen features are cached in the run directory and reused
    if protocol != "finetune":
        assert sorted(p.name for p in (trained_run / "features").iterdir()) == [
            f"features-shapes-16px-step3-{REFERENCE_TASK}-{split}.safetensors" for split in ("test", "train", "val")
        ]


@pytest.mark.slow
@pytest.mark.usefixtures("reference_cli")
def test_bad_protocol_options_are_named(invoke, trained_run: Path) -> None:  # type: ignore[no-untyped-def]
    result = invoke("evaluate", trained_run, "--protocol", "knn", "--set", "k=many")
    assert result.exit_code == 2 and "k='many' should be int" in result.output
    result = invoke("evaluate", trained_run, "--label-fraction", "0")
    assert result.exit_code == 2 and "--label-fraction" in result.output


@pytest.mark.slow
@pytest.mark.usefixtures("reference_cli")
def test_online_probe_logs_accuracy_is_checkpointed_and_needs_labels(invoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from ssl_engine.checkpoint import checkpoint_paths, read_checkpoint
    from tests.conftest import write_images

    run = tmp_path / "R"
    args = ("pretrain", "--task", REFERENCE_TASK, "--data", KIT_DATA, "--batch-size", "8", "--image-size", "16",
            "--no-probe", "--online-probe", "--log-every", "1", "--out", run)  # fmt: skip
    assert invoke(*args, "--steps", "2").exit_code == 0
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= line["probe/accuracy"] <= 1 and line["probe/loss"] > 0 for line in lines)
    saved = read_checkpoint(checkpoint_paths(run)[-1])
    assert "probe/classifier.weight" in saved.tensors and any(k.startswith("optim/probe/") for k in saved.tensors)
    assert saved.tensors["probe/classifier.weight"].shape == (10, 256)
    assert invoke("pretrain", "--out", run, "--resume", "--steps", "3").exit_code == 0
    flat = tmp_path / "flat"
    write_images(flat, 20)
    refused = invoke("pretrain", "--task", REFERENCE_TASK, "--data", flat, "--online-probe", "--batch-size", "4",
                     "--out", tmp_path / "F")  # fmt: skip
    assert refused.exit_code == 2 and "--online-probe needs labels" in refused.output
