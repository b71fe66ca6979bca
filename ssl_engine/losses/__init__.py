"""Losses registered by the core: ``cross_entropy``, ``label_smoothing``, ``mse``, ``l1``."""
