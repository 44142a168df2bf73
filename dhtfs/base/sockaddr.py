"""Unix socket addresses for paths of any length (no trio here: the CLI imports it)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

SUN_PATH_MAX = 107


@contextlib.contextmanager
def socket_address(path: Path) -> Iterator[str]:
    """An address for the Unix socket at ``path``: the path itself, or, when it is longer
    than a socket address may be (108 bytes), the same file reached through an open
    descriptor of its directory (``/proc/self/fd/N/NAME``), valid inside the block."""
    text = str(path)
    if len(text.encode()) <= SUN_PATH_MAX:
        yield text
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)
