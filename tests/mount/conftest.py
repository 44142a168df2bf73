"""Fixtures for the real-mount tier (the plain ``mount`` fixture is in tests/conftest.py)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.mounting import Mount, is_mounted

SMALL_CHUNK = 64 * 1024


@pytest.fixture
def small_mount(tmp_path: Path) -> Iterator[Mount]:
    """A mount with 64 KiB chunks, so multi-chunk cases stay cheap."""
    m = Mount(tmp_path / "mnt", tmp_path / "state", options=[f"chunk_size={SMALL_CHUNK}"])
    m.start()
    try:
        yield m
    finally:
        m.close()


@pytest.fixture
def public_mount(tmp_path: Path) -> Iterator[Mount]:
    """A mount whose mount point other users can reach (pytest's tmp dirs are 0700)."""
    top = Path(tempfile.mkdtemp(prefix="dhtfs-public-", dir="/tmp"))
    os.chmod(top, 0o755)
    m = Mount(top / "mnt", tmp_path / "state")
    try:
        m.start()
        try:
            yield m
        finally:
            m.close()
    finally:
        if not is_mounted(m.mountpoint):
            shutil.rmtree(top, ignore_errors=True)
