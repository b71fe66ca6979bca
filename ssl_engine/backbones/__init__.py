"""Backbones: networks from images ``(N, C, H, W)`` to a spatial feature map ``(N, D, h, w)``.

Registered by name through the ``register_backbones`` hook; the core provides ``smallconv`` (a fast convnet for
CPUs) and torchvision's ``resnet18``, ``resnet34`` and ``resnet50``.
"""

from ssl_engine.backbones.base import Backbone

__all__ = ["Backbone"]
