"""sslx plugin: colorization (Zhang, Isola & Efros 2016).

The CIE Lab conversion and the quantised ab plane it works in live in the core (:mod:`ssl_engine.api`), shared
with split-brain.
"""

from sslx_colorization.rebalance import ColourPrior
from sslx_colorization.task import ColorizationTask

__all__ = ["ColorizationTask", "ColourPrior"]
