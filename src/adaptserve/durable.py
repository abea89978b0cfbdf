"""Durable folders: every file of a folder, and the folder itself, reach the disk
before the folder is renamed into place (the model cache and the adapter store)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsynced
        fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
