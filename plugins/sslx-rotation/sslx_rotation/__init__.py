"""sslx plugin: rotation prediction (Gidaris, Singh & Komodakis 2018)."""

from sslx_rotation.task import RotationTask

__all__ = ["RotationTask"]
