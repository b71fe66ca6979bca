"""Writing small files so a crash leaves the old version or the new one, never a torn file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, fsync it and rename it over ``path``; the temporary
    file is removed if writing fails (the old ``path`` is then untouched)."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with open(temporary, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    """``data`` as indented JSON, written with :func:`write_text_atomic`."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")
