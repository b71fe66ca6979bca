"""The user's cache folder: results worth keeping between runs that any run can recompute (e.g. the random-init
baseline of the closing probe, :mod:`ssl_engine.eval.random_init_cache`).

``$SSLX_CACHE_DIR`` when set, else ``$XDG_CACHE_HOME/sslx``, else ``~/.cache/sslx`` (the XDG base directory
convention). Deleting the folder, or any file in it, is always safe: what is missing is computed again.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_DIR_VARIABLE = "SSLX_CACHE_DIR"


def user_cache_dir() -> Path:
    """Where sslx keeps cached results (not created here)."""
    chosen = os.environ.get(CACHE_DIR_VARIABLE, "").strip()
    if chosen:
        return Path(chosen).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    if xdg and Path(xdg).is_absolute():  # the XDG spec: a relative value is invalid and ignored
        return Path(xdg) / "sslx"
    return Path.home() / ".cache" / "sslx"
