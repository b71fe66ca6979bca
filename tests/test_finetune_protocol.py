"""The fine-tuning protocol's recipe (issue 23): a step budget, warm-up then cosine, the head started from the linear
probe's solution; its options and label fractions checked; beside the linear probe in ``sslx bench``."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import Result
from PIL import Image

from ssl_engine.backbones.smallconv import SmallConvNet
from ssl_engine.data.catalog import resolve_data
from ssl_engine.data.options import DataOptions
from ssl_engine.eval.context import EvalContext, per_class_subset
from ssl_engine.eval.finetune import (
    LabelledImages,
    accuracy_on,
    finetune_protocol,
    linear_probe_head,
    linear_probe_network,
)
from ssl_engine.eval.finetune_budget import MIN_STEPS, FinetuneOptions
from ssl_engine.eval.finetune_optimizer import parameter_groups
from ssl_engine.eval.linear import linear_protocol, solve_linear_probe
from ssl_engine.plugins import get_host
from ssl_engine.task import Representation

CLASSES = ("ants", "bees", "cats")
Invoke = Callable[..., Result]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny networks on a shared 2-core machine: one thread is several times faster than two that wait on each
    other (500 steps in seconds, not minutes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tinted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A labelled folder whose classes differ by tint (so random features carry some signal): 3 x 40 PNGs, 12 px."""
    root = tmp_path_factory.mktemp("tinted")
    rng = np.random.default_rng(0)
    for label, name in enumerate(CLASSES):
        (root / name).mkdir()
        for index in range(40):
            pixels = rng.integers(0, 128, (12, 12, 3))
            pixels[..., label] += 127
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{index:02d}.png")
    return root


def context_on(folder: Path, **kwargs: Any) -> EvalContext:
    """An evaluation context on ``folder`` at 12 px with a small random-init convnet (seeded)."""
    torch.manual_seed(0)
    representation = Representation(SmallConvNet(width=8))
    source = resolve_data(str(folder), get_host().registry, DataOptions())
    return EvalContext(representation, source, 12, torch.device("cpu"), **kwargs)


def test_default_budget_counts_steps_so_a_tiny_label_fraction_still_trains(tinted: Path) -> None:
    options = FinetuneOptions.read(context_on(tinted))
    assert options.budget(10).steps == MIN_STEPS == 500 and options.budget(10).batch_size == 10
    assert options.budget(54_000).steps == 5 * (54_000 // 64)  # 5 epochs when that is more
    literal = FinetuneOptions.read(context_on(tinted, options={"epochs": "2"}))
    assert literal.budget(1000).steps == 2 * (1000 // 64)  # an explicit budget is taken as given
    assert FinetuneOptions.read(context_on(tinted, options={"steps": "7"})).budget(1000).steps == 7
    # through the protocol: 6 labelled images (2 per class) still get the 500 steps
    result = finetune_protocol(context_on(tinted, label_fraction=0.07, options={"eval_every": "250"}))
    assert result["train_size"] == 6 and result["batch_size"] == 6
    assert result["steps"] == 500 and result["epochs"] == 500
    assert [step for step, _ in result["val_history"]] == [0, 250, 500]


def test_every_parameter_warms_up_linearly_then_decays_along_a_cosine(
    tinted: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rates: list[list[float]] = []
    step = torch.optim.SGD.step

    def recording(self: torch.optim.SGD, *args: Any, **kwargs: Any) -> Any:
        rates.append([group["lr"] for group in self.param_groups])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", recording)
    result = finetune_protocol(context_on(tinted, options={"steps": "40", "lr": "0.02"}))
    assert result["steps"] == 40 and result["warmup_steps"] == 4 and len(rates) == 40
    assert all(len(set(groups)) == 1 for groups in rates)  # backbone and head: one rate (the head is not fresh)
    got = [groups[0] for groups in rates]
    reference = [
        0.02 * (s + 1) / 4 if s < 4 else 0.02 * 0.5 * (1 + math.cos(math.pi * (s - 4) / 36)) for s in range(40)
    ]
    assert got == pytest.approx(reference)
    assert got[0] == pytest.approx(0.005) and max(got) == pytest.approx(0.02) and got[-1] < 0.0002


def recorded_rates(
    monkeypatch: pytest.MonkeyPatch, kind: type[torch.optim.Optimizer], groups: list[list[dict[str, Any]]] | None = None
) -> list[float]:
    """The learning rate of every step ``kind`` takes from now on: the rate of its groups at full rate (the head's),
    every group's rate a fraction of it; each step's groups (rate, decay, parameters) appended to ``groups``."""
    rates: list[float] = []
    step = kind.step

    def recording(self: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
        full = max(group["lr"] for group in self.param_groups)
        assert all(group["lr"] == pytest.approx(full * group["lr_scale"]) for group in self.param_groups)
        rates.append(full)
        if groups is not None:
            groups.append([{"lr": g["lr"], "weight_decay": g["weight_decay"], "params": g["params"]}
                           for g in self.param_groups])  # fmt: skip
        return step(self, *args, **kwargs)

    monkeypatch.setattr(kind, "step", recording)
    return rates


def test_a_convnet_fine_tunes_with_sgd_and_a_vit_with_adamw_at_the_mae_rate(
    tinted: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("timm")
    sgd, adamw = recorded_rates(monkeypatch, torch.optim.SGD), recorded_rates(monkeypatch, torch.optim.AdamW)
    convnet = finetune_protocol(context_on(tinted, options={"steps": "3", "warmup": "0"}))
    assert (convnet["optimizer"], convnet["lr"], len(sgd), len(adamw)) == ("sgd", 0.01, 3, 0)
    assert "SGD lr 0.01 (momentum 0.9, weight decay 0.0005)" in convnet["recipe"]
    torch.manual_seed(0)
    vit = get_host().registry.backbones["timm:vit_tiny_patch16_224?depth=1"].obj(3, 12)
    source = resolve_data(str(tinted), get_host().registry, DataOptions())
    options = {"steps": "3", "warmup": "0", "batch_size": "32"}
    result = finetune_protocol(EvalContext(Representation(vit), source, 12, torch.device("cpu"), options=options))
    # He et al. 2022: base lr 5e-4 per 256 images, so 1.25e-4 x 32 / 64 at a batch of 32
    assert result["optimizer"] == "adamw" and result["lr"] == pytest.approx(5e-4 * 32 / 256)
    assert adamw[0] == pytest.approx(5e-4 * 32 / 256) and len(adamw) == 3 and len(sgd) == 3
    assert (
        "AdamW lr 6.25e-05 (betas 0.9/0.999, weight decay 0.05 but not on biases, norms and token embeddings)"
        in result["recipe"]
    )


def tiny_vit(depth: int = 2) -> Representation:
    """A random-init ViT-Tiny of ``depth`` blocks at 12 px (seeded), as a representation."""
    pytest.importorskip("timm")
    torch.manual_seed(0)
    return Representation(get_host().registry.backbones[f"timm:vit_tiny_patch16_224?depth={depth}"].obj(3, 12))


def tiny_vit_context(folder: Path, options: dict[str, str]) -> EvalContext:
    """An evaluation context on ``folder`` at 12 px with a two-block ViT (:func:`tiny_vit`)."""
    source = resolve_data(str(folder), get_host().registry, DataOptions())
    return EvalContext(tiny_vit(), source, 12, torch.device("cpu"), options=options)


def test_a_vit_fine_tunes_with_layer_wise_lr_decay_when_asked(tinted: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    groups: list[list[dict[str, Any]]] = []
    recorded_rates(monkeypatch, torch.optim.AdamW, groups)
    options = {"steps": "2", "warmup": "0", "batch_size": "32", "layer_decay": "0.65"}
    result = finetune_protocol(tiny_vit_context(tinted, options))
    assert result["layer_decay"] == 0.65 and "layer-wise lr decay 0.65" in result["recipe"]
    full = max(group["lr"] for group in groups[0])
    # two blocks: embedding, block 0, block 1, then the final norm and the head at the full rate
    assert sorted({round(group["lr"] / full, 6) for group in groups[0]}) == [round(0.65**k, 6) for k in (3, 2, 1, 0)]
    assert {group["weight_decay"] for group in groups[0]} == {0.0, 0.05}


def test_layer_decay_on_a_convnet_warns_that_it_has_no_effect(invoke: Invoke, tinted_run: Path) -> None:
    result = invoke("evaluate", tinted_run, "--protocol", "finetune", "--set", "steps=1", "--set", "layer_decay=0.5")
    assert result.exit_code == 0, result.output
    assert "warning: evaluation option layer_decay=0.5 has no effect" in result.stderr


def test_mae_s_parameter_groups_scale_each_block_and_spare_biases_norms_and_token_embeddings() -> None:
    vit = tiny_vit()
    head = torch.nn.Linear(192, 3)
    model = torch.nn.Sequential(vit, head)
    rate, decay = {}, {}  # by parameter name
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    for group in parameter_groups(model, "adamw", 0.65):
        for parameter in group["params"]:
            rate[names[id(parameter)]], decay[names[id(parameter)]] = group["lr_scale"], group["weight_decay"]
    assert len(rate) == len(names)
    # two blocks: the embedding at depth 0, block i at i + 1, the final norm at 3 (the top), the head outside
    expected_rate = {
        "0.backbone.model.patch_embed.proj.weight": 0.65**3, "0.backbone.model.pos_embed": 0.65**3,
        "0.backbone.model.cls_token": 0.65**3, "0.backbone.model.blocks.0.attn.qkv.weight": 0.65**2,
        "0.backbone.model.blocks.1.mlp.fc1.weight": 0.65, "0.backbone.model.blocks.1.norm1.bias": 0.65,
        "0.backbone.model.norm.weight": 1.0, "1.weight": 1.0, "1.bias": 1.0,
    }  # fmt: skip
    assert {name: rate[name] for name in expected_rate} == pytest.approx(expected_rate)
    decayed = {name for name, value in decay.items() if value == 0.05}
    assert decayed == {name for name in rate if name.endswith("weight") and "norm" not in name}
    assert set(decay.values()) == {0.0, 0.05}
    sgd = parameter_groups(model, "sgd", 1.0)  # the convnets' recipe: one rate, every parameter decayed
    assert [(group["lr_scale"], group["weight_decay"]) for group in sgd] == [(1.0, 5e-4)]


def test_by_default_every_parameter_of_a_vit_trains_at_one_rate(tinted: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    groups: list[list[dict[str, Any]]] = []
    recorded_rates(monkeypatch, torch.optim.AdamW, groups)
    result = finetune_protocol(tiny_vit_context(tinted, {"steps": "1", "warmup": "0", "batch_size": "32"}))
    assert result["layer_decay"] == 1.0 and "layer-wise" not in result["recipe"]
    assert len({group["lr"] for group in groups[0]}) == 1


def test_the_optimizer_and_its_rate_can_be_chosen(tinted: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    adamw = recorded_rates(monkeypatch, torch.optim.AdamW)
    chosen = finetune_protocol(context_on(tinted, options={"steps": "2", "warmup": "0", "optimizer": "adamw"}))
    assert chosen["optimizer"] == "adamw" and adamw[0] == pytest.approx(5e-4 * 64 / 256)  # 120 images: batch 64
    given = finetune_protocol(context_on(tinted, options={"steps": "2", "warmup": "0", "optimizer": "adamw",
                                                          "lr": "0.003"}))  # fmt: skip
    assert given["lr"] == 0.003 and adamw[2] == pytest.approx(0.003)


def test_the_head_starts_at_the_linear_probe_so_step_0_is_the_linear_protocol(tinted: Path) -> None:
    context = context_on(tinted)
    linear = linear_protocol(context)
    assert linear["accuracy"] > 0.5  # the tint is visible to random features: the check below is not vacuous
    network = linear_probe_network(context).eval()
    assert accuracy_on(network, LabelledImages.of(context, "test")) == pytest.approx(linear["accuracy"])
    # logit for logit, the head on raw features (eval mode) is the probe on standardised features
    images = LabelledImages.of(context, "val").images.float() / 255
    solution = solve_linear_probe(context)
    with torch.no_grad():
        probe_logits = solution.classifier(solution.standardise(context.representation.eval()(images)))
        torch.testing.assert_close(network(images), probe_logits, rtol=1e-4, atol=1e-4)
    # while training, the head standardises each batch itself: moving or rescaling the features (as the backbone's
    # first updates do, most of all at a random initialisation) leaves its logits where they were
    head = linear_probe_head(solution).train()
    features = context.representation(images)
    with torch.no_grad():
        torch.testing.assert_close(head(features * 50 + 3), head(features), rtol=1e-3, atol=1e-3)
    result = finetune_protocol(context_on(tinted, options={"steps": "2"}))
    assert result["start_val_accuracy"] == pytest.approx(linear["val_accuracy"])
    assert result["val_history"][0] == (0, result["start_val_accuracy"])


@pytest.fixture(scope="module")
def tinted_run(tinted: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from click.testing import CliRunner

    from ssl_engine.cli import main

    run = tmp_path_factory.mktemp("runs") / "R"
    args = ["pretrain", "--task", "rotation", "--data", str(tinted), "--steps", "1", "--batch-size", "8",
            "--image-size", "12", "--no-probe", "--out", str(run)]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return run


@pytest.mark.parametrize(
    ("option", "named"),
    [("epochs=0", "epochs"), ("steps=0", "steps"), ("lr=-0.1", "lr"), ("lr=0", "lr"), ("warmup=1", "warmup"),
     ("steps=ten", "steps"), ("steps=10,epochs=2", "steps and epochs"), ("optimizer=adam", "optimizer"),
     ("layer_decay=0", "layer_decay"), ("layer_decay=1.5", "layer_decay")],
)  # fmt: skip
def test_bad_finetune_options_exit_2_naming_the_option(
    invoke: Invoke, tinted_run: Path, option: str, named: str
) -> None:
    settings = [part for pair in option.split(",") for part in ("--set", pair)]
    result = invoke("evaluate", tinted_run, "--protocol", "finetune", *settings)
    assert result.exit_code == 2, result.output
    assert f"evaluation option{'s' if ' and ' in named else ''} {named}" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("protocol", ["linear", "finetune"])
def test_a_label_fraction_that_leaves_a_class_empty_is_refused_naming_it(
    invoke: Invoke, tinted_run: Path, protocol: str
) -> None:
    result = invoke("evaluate", tinted_run, "--protocol", protocol, "--label-fraction", "0.01")
    assert result.exit_code == 2, result.output
    assert "--label-fraction 0.01 keeps no example of class 'ants'" in result.stderr
    works = result.stderr.split("the smallest fraction that keeps one of every class is ")[1].split()[0]
    fewest = int(result.stderr.split("its smallest class has ")[1].split()[0])
    assert 0.5 / fewest <= float(works) < 1.5 / fewest  # one example of the smallest class, not more
    again = invoke("evaluate", tinted_run, "--protocol", "linear", "--label-fraction", works, "--json")
    assert again.exit_code == 0, again.output


def test_per_class_subset_refuses_rather_than_padding_a_class() -> None:
    labels = torch.tensor([0] * 1000 + [1] * 10)
    with pytest.raises(ValueError, match=r"class 1 \(0\.01 x 10 train images rounds to 0\).* is 0\.1 "):
        per_class_subset(labels, 0.01, seed=0)
    assert labels[per_class_subset(labels, 0.1, seed=0)].bincount().tolist() == [100, 1]


def test_bench_puts_linear_and_finetune_side_by_side_with_their_recipes(
    invoke: Invoke, tinted: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bench"
    result = invoke("bench", "--tasks", "rotation", "--data", tinted, "--image-size", "12", "--steps", "1",
                    "--batch-size", "8", "--protocols", "linear,finetune", "--set", "steps=3",
                    "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    table = (out / "table.md").read_text()
    assert "| method | linear | finetune |" in table
    for method in ("rotation", "random init", "supervised"):
        cells = next(line for line in table.splitlines() if line.startswith(f"| {method} |")).split("|")[2:4]
        assert all(0 <= float(cell) <= 100 for cell in cells), table
    assert "- linear: logistic regression" in table
    assert "- finetune: head from the linear probe (its standardisation as batch norm), then all parameters" in table
    assert "(LP-FT): 3 steps (0 warm-up, then cosine)" in table
