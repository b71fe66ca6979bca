"""Backbones: networks from images ``(N, C, H, W)`` to a spatial feature map ``(N, D, h, w)``.

Registered by name through the ``register_backbones`` hook; the core provides ``smallconv`` (a fast convnet for
CPUs), torchvision's ``resnet18``, ``resnet34`` and ``resnet50``, and, with the ``timm`` extra, any timm model as
``timm:NAME`` (:mod:`ssl_engine.backbones.timm_backbone`). Vision transformers also provide the token interface of
:class:`~ssl_engine.backbones.tokens.TokenBackbone` (an encoder on a subset of the patches, for masked image
modelling).
"""

from ssl_engine.backbones.base import Backbone

__all__ = ["Backbone"]
