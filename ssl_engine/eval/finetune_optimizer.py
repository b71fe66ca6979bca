"""Which optimiser the fine-tuning protocol trains every parameter with, and its learning rate.

Two recipes, chosen with ``--set optimizer=auto|sgd|adamw`` (default ``auto``):

* ``sgd``: SGD with momentum 0.9 and weight decay 5e-4, lr 0.01: the protocol's recipe for convnets, measured on
  them in benchmarks/RESULTS.md (issue 23).
* ``adamw``: AdamW with betas (0.9, 0.999) and weight decay 0.05, lr ``5e-4 x batch / 256`` (1.25e-4 at the
  default batch of 64): the fine-tuning recipe of masked autoencoders for ViT-B (He et al. 2022, "Masked
  Autoencoders Are Scalable Vision Learners": base lr 5e-4 per 256 images), without its layer-wise lr decay.

``auto`` takes ``adamw`` when the representation holds a vision transformer (a
:class:`~ssl_engine.backbones.tokens.TokenBackbone`) and ``sgd`` otherwise. A ViT-Tiny pretrained with MAE and
fine-tuned by the SGD recipe falls from its probe's val accuracy (0.30 on ``shapes``) to below chance within 20
steps and does not recover in 200; with AdamW, MAE fine-tuned beats the random-init ViT fine-tuned on both seeds
of ``shapes`` and Fashion-MNIST (benchmarks/RESULTS.md, issue 20). ``lr`` given with ``--set`` replaces either
recipe's rate.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ssl_engine.backbones.tokens import TokenBackbone
from ssl_engine.data.options import DataError

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


def resolve_optimizer(choice: str, representation: nn.Module) -> str:
    """``sgd`` or ``adamw``: the choice itself, or for ``auto`` the recipe that suits the representation."""
    if choice != "auto":
        return choice
    is_transformer = any(isinstance(module, TokenBackbone) for module in representation.modules())
    return "adamw" if is_transformer else "sgd"


def default_lr(name: str, batch_size: int) -> float:
    """The recipe's learning rate for ``name`` (``sgd`` or ``adamw``) at ``batch_size`` images per step."""
    return SGD_LR if name == "sgd" else ADAMW_BASE_LR * batch_size / 256


def build_optimizer(name: str, parameters: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """The ``sgd`` or ``adamw`` recipe's optimiser over ``parameters`` at rate ``lr`` (the schedule scales it)."""
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, betas=ADAMW_BETAS, weight_decay=ADAMW_WEIGHT_DECAY)
    return torch.optim.SGD(parameters, lr=lr, momentum=SGD_MOMENTUM, weight_decay=SGD_WEIGHT_DECAY)


def describe(name: str, lr: float) -> str:
    """The recipe in words, for the result's ``recipe``: e.g. ``"SGD lr 0.01 (momentum 0.9, weight decay 0.0005)"``."""
    if name == "adamw":
        betas = "/".join(f"{beta:g}" for beta in ADAMW_BETAS)
        return f"AdamW lr {lr:g} (betas {betas}, weight decay {ADAMW_WEIGHT_DECAY:g})"
    return f"SGD lr {lr:g} (momentum {SGD_MOMENTUM:g}, weight decay {SGD_WEIGHT_DECAY:g})"
