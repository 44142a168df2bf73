"""fsync helpers: the one place that turns "written" into "survives power loss"."""

from __future__ import annotations

import ctypes
import ctypes.util
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


_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_syncfs = getattr(_libc, "syncfs", None)


def sync_filesystem(path: str | Path) -> None:
    """Make everything written to the filesystem holding ``path`` durable (``syncfs(2)``;
    ``sync(2)`` where libc lacks it): one call instead of an fsync per file, when many
    files are to be synced."""
    if _syncfs is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)
