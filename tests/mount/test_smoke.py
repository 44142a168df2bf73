"""Smallest end-to-end check: mount, write, read back, remount, read again."""

from __future__ import annotations

import os
import time
from pathlib import Path

from testkit.mounting import Mount


def test_write_read_remount(mount: Mount, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    (mount.mountpoint / "f").write_bytes(data)
    assert (mount.mountpoint / "f").read_bytes() == data
    assert mount.stop() == 0
    mount.start()
    assert (mount.mountpoint / "f").read_bytes() == data


def test_readahead_is_one_chunk(mount: Mount) -> None:
    """The mount reads ahead a whole chunk (1 MiB), not the kernel's default 128 KiB."""
    st = os.stat(mount.mountpoint)
    bdi = Path(f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb")
    deadline = time.monotonic() + 10  # set by the daemon right after FUSE_INIT
    while bdi.read_text().strip() != "1024" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert bdi.read_text().strip() == "1024"
