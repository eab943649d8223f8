"""Checks of the folders a command will write into, made before anything is created or built."""

from __future__ import annotations

import os
from pathlib import Path

from cosmos3.errors import InputError


def check_output_dir(field: str, path: Path) -> None:
    """A folder to write into: an existing writable folder, or one that can be created."""
    if os.path.lexists(path) and not path.is_dir():
        raise InputError(field, "must be a folder, and this is a file", str(path))
    existing = path
    while not os.path.lexists(existing):
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(field, f"must be a folder that can be created, but {existing} is a file", str(path))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(field, f"must be a folder we can write to, and {existing} is not writable", str(path))


def make_output_dir(field: str, path: Path) -> None:
    """Create the folder; a place the checks could not see is read-only (/proc, a read-only mount) fails here."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(field, f"must be a folder that can be created ({exc.strerror or exc})", str(path)) from exc
