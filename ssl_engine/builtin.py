"""The core's own plugin: backbones, data sets, heads, losses, evaluators and loggers, registered like any other."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torchvision

from ssl_engine.backbones.resnet import ResNetBackbone
from ssl_engine.backbones.smallconv import SmallConvNet
from ssl_engine.backbones.timm_backbone import FAMILY_NAME, INSTALL_HINT, TimmFamily
from ssl_engine.data import idx_files, torchvision_sets
from ssl_engine.data.options import DataOptions
from ssl_engine.data.shapes import ShapesDataset
from ssl_engine.eval.finetune import finetune_protocol
from ssl_engine.eval.knn import knn_protocol
from ssl_engine.eval.linear import linear_protocol
from ssl_engine.heads.linear import linear_head
from ssl_engine.heads.mlp import mlp_head
from ssl_engine.heads.projector import projector_head
from ssl_engine.heads.upconv import UpConvDecoder
from ssl_engine.hookspecs import (
    BackboneRegister,
    DatasetRegister,
    EvaluatorRegister,
    HeadRegister,
    LoggerRegister,
    LossRegister,
    hookimpl,
)
from ssl_engine.loggers.jsonl import JsonlLogger
from ssl_engine.loggers.tensorboard import INSTALL_HINT as TENSORBOARD_HINT
from ssl_engine.loggers.tensorboard import TensorBoardLogger, tensorboard_installed
from ssl_engine.losses.classification import cross_entropy, label_smoothing_cross_entropy
from ssl_engine.losses.regression import mean_absolute_error, mean_squared_error


@hookimpl
def register_backbones(register: BackboneRegister) -> None:
    register(
        "smallconv",
        lambda in_channels, image_size: SmallConvNet(in_channels),
        help="fast 4-layer convnet, 256-d",
    )
    for name, builder in (
        ("resnet18", torchvision.models.resnet18),
        ("resnet34", torchvision.models.resnet34),
        ("resnet50", torchvision.models.resnet50),
    ):
        register(name, partial(ResNetBackbone, builder), help=f"torchvision {name}, small stem at <= 64 px")
    register(
        FAMILY_NAME,
        TimmFamily(),
        help=f"any timm model, e.g. timm:vit_tiny_patch16_224 (ViTs: patch 4 at 32 px; {INSTALL_HINT})",
    )


def _shapes(split: str, image_size: int, options: DataOptions) -> ShapesDataset:
    return ShapesDataset(split, image_size)


@hookimpl
def register_datasets(register: DatasetRegister) -> None:
    register("shapes", _shapes, help="embedded: 10 procedurally drawn object classes, any size, no download")
    register("cifar10", torchvision_sets.cifar10, help="CIFAR-10 (torchvision; --download or --data-dir)")
    register("cifar100", torchvision_sets.cifar100, help="CIFAR-100 (torchvision; --download or --data-dir)")
    register(
        "stl10",
        torchvision_sets.stl10,
        pretrain_split="unlabeled",
        help="STL-10; pretrains on its unlabeled split",
    )
    register("svhn", torchvision_sets.svhn, help="SVHN (torchvision; --download or --data-dir)")
    register("mnist", torchvision_sets.mnist, color=False, help="MNIST (torchvision; --download or --data-dir)")
    register(
        "fashion-mnist",
        idx_files.fashion_mnist,
        color=False,
        help=f"Fashion-MNIST (Debian's {Path(idx_files.DEBIAN_FASHION_MNIST)}, --data-dir or --download)",
    )


@hookimpl
def register_heads(register: HeadRegister) -> None:
    # kind="classifier" (pooled features) unless said
    register("linear", linear_head, help="one linear layer on pooled features")
    register("mlp", mlp_head, help="Linear-BN-ReLU-Linear on pooled features")
    register("projector", projector_head, help="(Linear-BN-ReLU) x 2, Linear on pooled features (Barlow Twins, VICReg)")
    register("upconv", UpConvDecoder, kind="decoder", help="up-convolutional decoder on the spatial map")


@hookimpl
def register_losses(register: LossRegister) -> None:
    # kind="classification" (logits and integer targets) unless said
    register("cross_entropy", cross_entropy, help="cross-entropy")
    register("label_smoothing", label_smoothing_cross_entropy, help="cross-entropy, smoothing 0.1")
    register("mse", mean_squared_error, kind="regression", help="l2 (mean squared error)")
    register("l1", mean_absolute_error, kind="regression", help="l1 (mean absolute error)")


@hookimpl
def register_evaluators(register: EvaluatorRegister) -> None:
    register("linear", linear_protocol, help="linear classifier on frozen features; weight decay chosen on val")
    register("finetune", finetune_protocol, help="linear probe, then all parameters (LP-FT); step chosen on val")
    register("knn", knn_protocol, help="weighted cosine kNN on frozen features (k=200, T=0.1); no training")


@hookimpl
def register_loggers(register: LoggerRegister) -> None:
    register("jsonl", JsonlLogger, default=True, help="RUN_DIR/metrics.jsonl: a JSON line per logged step (always on)")
    register(
        "tensorboard",
        TensorBoardLogger,
        default=tensorboard_installed(),
        help=f"TensorBoard event files in RUN_DIR/tensorboard (on by default when installed: {TENSORBOARD_HINT})",
    )
