"""sslx: a self-supervised pretraining engine for images, with pretext tasks as plugins.

Use a trained backbone in your own code::

    from ssl_engine import load_representation
    features = load_representation("runs/jigsaw")      # nn.Module: (B, 3, H, W) in [0, 1] -> (B, D)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from ssl_engine.run import load_backbone, load_representation


def __getattr__(name: str) -> object:
    # Lazy so that `import ssl_engine` (e.g. by the plugin loader) does not import torch-heavy modules.
    if name in ("load_backbone", "load_representation", "load_run"):
        from ssl_engine import run

        return getattr(run, name)
    raise AttributeError(name)


__all__ = ["__version__", "load_backbone", "load_representation"]
