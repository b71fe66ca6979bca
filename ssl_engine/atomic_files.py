"""Writing small files so a crash leaves the old version or the new one, never a torn file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def current_umask() -> int:
    """The process's umask (read from /proc where there is one; elsewhere set and restored at once)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def with_user_permissions(path: Path) -> None:
    """Give ``path`` the permissions of any file the user creates (``0o666`` less the umask): safetensors writes
    its files ``0o600``, which colleagues on a shared cluster could not read."""
    os.chmod(path, 0o666 & ~current_umask())


def replace_atomically(temporary: Path, path: Path) -> None:
    """fsync ``temporary``, rename it over ``path`` and fsync the directory, so ``path`` is old or new, never torn
    (the rename itself survives a crash too). For files a library writes by name, e.g. safetensors' ``save_file``."""
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it and rename it over ``path``; the temporary
    file is removed if writing fails (the old ``path`` is then untouched). Errors are ``OSError`` (a read-only
    directory, a full disk)."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """``text`` (UTF-8) written with :func:`write_bytes_atomic`."""
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: Path, data: Any) -> None:
    """``data`` as indented JSON, written with :func:`write_text_atomic`."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")
