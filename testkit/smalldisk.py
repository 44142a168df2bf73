"""Small filesystems for a node's state directory, to see what a full disk does: a fresh
loop-mounted ext4 image (no root reserve), and a ballast file that fills it.

Needs root, ``mkfs.ext4`` and loop devices. Whoever makes one removes it
(``remove_small_fs``), after the daemon using it is gone.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

MiB = 1024 * 1024
DISK = 64 * MiB


def make_small_fs(image: Path, where: Path, size: int = DISK) -> None:
    """A fresh ext4 of ``size`` bytes (no root reserve) loop-mounted at ``where``."""
    with open(image, "wb") as fh:
        fh.truncate(size)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True)
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(where)], check=True)


def remove_small_fs(image: Path, where: Path) -> None:
    if subprocess.run(["umount", str(where)], check=False, capture_output=True).returncode:
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)
    image.unlink(missing_ok=True)


def fill_until_full(path: Path, step: int) -> OSError:
    """Write ``path`` in ``step``-byte writes, each flushed, until one fails; that error
    (ENOSPC once the disk is full)."""
    with open(path, "wb") as fh:
        try:
            while True:
                fh.write(b"\xff" * step)
                fh.flush()
        except OSError as exc:
            return exc
