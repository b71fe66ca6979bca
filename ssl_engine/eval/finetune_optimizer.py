"""Which optimiser the fine-tuning protocol trains every parameter with, its learning rate and parameter groups.

Two recipes, chosen with ``--set optimizer=auto|sgd|adamw`` (default ``auto``):

* ``sgd``: SGD with momentum 0.9 and weight decay 5e-4 on every parameter, lr 0.01: the protocol's recipe for
  convnets, measured on them in benchmarks/RESULTS.md (issue 23).
* ``adamw``: the fine-tuning recipe of masked autoencoders for ViT-B (He et al. 2022, "Masked Autoencoders Are
  Scalable Vision Learners", and its code's ViT-B command) without its layer-wise lr decay: AdamW with betas
  (0.9, 0.999), lr ``5e-4 x batch / 256`` (1.25e-4 at the default batch of 64), weight decay 0.05 on the weights
  but not on biases, norms, the position embedding and the class token.

``layer_decay`` (``--set layer_decay=0.65``, default 1: none) scales a ViT's rates by depth, as MAE's recipe does
with 0.65 for ViT-B (Bao et al. 2022, "BEiT"): block ``i`` of ``L`` trains at ``0.65 ** (L - i)`` times the rate,
the embedding at ``0.65 ** (L + 1)``, the final norm and the head at the full rate. It is not the default because
at this protocol's budget it did worse: MAE's ViT-Tiny on ``shapes``, fine-tuned 200 steps, scored 0.262 and 0.298
with it against 0.283 and 0.392 without (benchmarks/RESULTS.md, "layer-wise lr decay").

``auto`` takes ``adamw`` when the representation holds a vision transformer (a
:class:`~ssl_engine.backbones.tokens.TokenBackbone`) and ``sgd`` otherwise. A ViT-Tiny pretrained with MAE and
fine-tuned by the SGD recipe falls from its probe's val accuracy (0.30 on ``shapes``) to below chance within 20
steps and does not recover in 200; with AdamW, MAE fine-tuned beats the random-init ViT fine-tuned on both seeds
of ``shapes`` and Fashion-MNIST (benchmarks/RESULTS.md, issue 20). ``lr`` given with ``--set`` replaces either
recipe's rate.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from ssl_engine.backbones.tokens import TokenBackbone
from ssl_engine.data.options import DataError
from ssl_engine.train.optim import spared_weight_decay

OPTIMIZER_CHOICES = ("auto", "sgd", "adamw")
SGD_LR = 0.01
SGD_MOMENTUM = 0.9
SGD_WEIGHT_DECAY = 5e-4
ADAMW_BASE_LR = 5e-4  # per 256 images (He et al. 2022)
ADAMW_BETAS = (0.9, 0.999)
ADAMW_WEIGHT_DECAY = 0.05


def check_optimizer_choice(value: str) -> str:
    """``value`` if it names a fine-tuning optimiser (``auto``, ``sgd``, ``adamw``).

    Raises:
        DataError: it does not; the message lists the choices.
    """
    if value not in OPTIMIZER_CHOICES:
        raise DataError(f"evaluation option optimizer={value!r} is not one of {', '.join(OPTIMIZER_CHOICES)}")
    return value


def holds_transformer(model: nn.Module) -> bool:
    """Whether ``model`` contains a vision transformer (a :class:`~ssl_engine.backbones.tokens.TokenBackbone`)."""
    return any(isinstance(module, TokenBackbone) for module in model.modules())


def resolve_optimizer(choice: str, representation: nn.Module) -> str:
    """``sgd`` or ``adamw``: the choice itself, or for ``auto`` the recipe that suits the representation."""
    if choice != "auto":
        return choice
    return "adamw" if holds_transformer(representation) else "sgd"


def default_lr(name: str, batch_size: int) -> float:
    """The recipe's learning rate for ``name`` (``sgd`` or ``adamw``) at ``batch_size`` images per step."""
    return SGD_LR if name == "sgd" else ADAMW_BASE_LR * batch_size / 256


def parameter_groups(model: nn.Module, name: str, layer_decay: float) -> list[dict[str, Any]]:
    """``model``'s parameters in groups, each with its ``lr_scale`` (the schedule multiplies the rate by it) and
    its ``weight_decay``.

    The parameters of a :class:`~ssl_engine.backbones.tokens.TokenBackbone` are scaled by ``layer_decay ** (top -
    depth)`` (:meth:`~ssl_engine.backbones.tokens.TokenBackbone.parameter_depths`); everything else, the head
    included, by 1. Under ``adamw``, biases, norms (every parameter of at most one dimension) and a ViT's token
    embeddings get no weight decay; under ``sgd`` every parameter is decayed, as measured for convnets.
    """
    if layer_decay != 1 and not holds_transformer(model):
        warnings.warn(
            f"evaluation option layer_decay={layer_decay:g} has no effect: it scales the rates of a ViT's blocks, "
            "and this representation has none",
            stacklevel=2,
        )
    scales: dict[int, float] = {}
    undecayed: set[int] = set()
    for module in model.modules():
        if isinstance(module, TokenBackbone):
            depths, free = module.parameter_depths(), module.token_embedding_names()
            top = max(depths.values(), default=0)
            for parameter_name, parameter in module.named_parameters():
                scales[id(parameter)] = layer_decay ** (top - depths.get(parameter_name, top))
                if parameter_name in free:
                    undecayed.add(id(parameter))
    decay = ADAMW_WEIGHT_DECAY if name == "adamw" else SGD_WEIGHT_DECAY
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for parameter in model.parameters():
        exempt = name == "adamw" and (spared_weight_decay(parameter) or id(parameter) in undecayed)
        key = (scales.get(id(parameter), 1.0), 0.0 if exempt else decay)
        groups.setdefault(key, []).append(parameter)
    return [
        {"params": members, "lr_scale": scale, "weight_decay": weight_decay}
        for (scale, weight_decay), members in groups.items()
    ]


def build_optimizer(name: str, groups: list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
    """The ``sgd`` or ``adamw`` recipe's optimiser over ``groups`` (:func:`parameter_groups`) at rate ``lr``, each
    group at ``lr x lr_scale`` (the schedule scales them all)."""
    groups = [group | {"lr": lr * group["lr_scale"]} for group in groups]
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=ADAMW_BETAS)
    return torch.optim.SGD(groups, lr=lr, momentum=SGD_MOMENTUM)


def describe(name: str, lr: float, layer_decay: float = 1.0) -> str:
    """The recipe in words, for the result's ``recipe``: e.g. ``"SGD lr 0.01 (momentum 0.9, weight decay 0.0005)"``."""
    layers = f", layer-wise lr decay {layer_decay:g}" if layer_decay != 1 else ""
    if name == "adamw":
        betas = "/".join(f"{beta:g}" for beta in ADAMW_BETAS)
        return (
            f"AdamW lr {lr:g} (betas {betas}, weight decay {ADAMW_WEIGHT_DECAY:g} but not on biases, norms and token "
            f"embeddings{layers})"
        )
    return f"SGD lr {lr:g} (momentum {SGD_MOMENTUM:g}, weight decay {SGD_WEIGHT_DECAY:g}{layers})"
