"""fsync helpers: the one place that turns "written" into "survives power loss"."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_file(path: str | Path) -> bool:
    """fsync a file's data and metadata; False if it does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def fsync_dir(path: str | Path) -> None:
    """fsync a directory, so that renames and creations inside it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
