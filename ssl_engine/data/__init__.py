"""Data sets: the embedded procedural one, torchvision's, Debian's Fashion-MNIST and folders of images.

Every data set yields ``(image, label)`` with ``image`` a uint8 tensor ``(3, S, S)`` (grayscale promoted to RGB,
resized to ``S = --image-size``) and ``label`` an int (``-1`` when unlabelled).
"""

from ssl_engine.data.options import DataOptions

__all__ = ["DataOptions"]
