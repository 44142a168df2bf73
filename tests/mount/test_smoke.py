"""Smallest end-to-end check: mount, write, read back, remount, read again."""

from __future__ import annotations

import os
from pathlib import Path

from tests.mounting import Mount


def test_write_read_remount(mount: Mount, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    (mount.mountpoint / "f").write_bytes(data)
    assert (mount.mountpoint / "f").read_bytes() == data
    assert mount.stop() == 0
    mount.start()
    assert (mount.mountpoint / "f").read_bytes() == data
