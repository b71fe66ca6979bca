"""Data sets: the embedded procedural one, torchvision's, Debian's Fashion-MNIST, folders of images and tar shards.

Every data set yields ``(image, label)`` with ``image`` a uint8 tensor ``(3, S, S)`` (grayscale promoted to RGB,
``S = --image-size``) and ``label`` an int (``-1`` when unlabelled), in one of two regimes: small registered sets
are resized to ``S x S`` and held in memory (:mod:`ssl_engine.data.batches`); folders and shards are file-backed,
decoded in workers with aspect-preserving crops (:mod:`ssl_engine.data.file_backed`).
"""

from ssl_engine.data.options import DataOptions

__all__ = ["DataOptions"]
