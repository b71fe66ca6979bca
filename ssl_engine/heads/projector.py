"""The projector of the redundancy-reduction methods: an MLP with batch norm after every hidden layer.

Barlow Twins (Zbontar et al. 2021, Sec. 2 and its code) and VICReg (Bardes, Ponce & LeCun 2022, Sec. 4.2) both
project the backbone's pooled features with three linear layers, the first two followed by batch norm and ReLU,
the last without bias; their widths are all 8192 on ImageNet.
"""

from __future__ import annotations

from torch import nn


def projector_head(in_features: int, out_features: int, hidden: int | None = None, layers: int = 3) -> nn.Module:
    """``(N, in_features)`` -> (Linear-BN-ReLU) x ``layers - 1`` -> Linear without bias -> ``(N, out_features)``.

    Args:
        in_features: the backbone's feature size ``D``.
        out_features: the embedding size.
        hidden: width of the hidden layers (default ``out_features``, as in both papers: 8192-8192-8192).
        layers: linear layers (papers: 3).
    """
    if layers < 1:
        raise ValueError(f"a projector needs at least one layer, got {layers}")
    width = out_features if hidden is None else hidden
    modules: list[nn.Module] = []
    size = in_features
    for _ in range(layers - 1):
        modules += [nn.Linear(size, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
        size = width
    modules.append(nn.Linear(size, out_features, bias=False))
    return nn.Sequential(*modules)
