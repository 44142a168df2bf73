"""Fixtures shared by all tiers: ``mount`` here, the CA and identity fixtures in
``testkit.fixtures`` (loaded as a plugin). Real mounts are in ``testkit/mounting.py``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.mounting import Mount

pytest_plugins = ["testkit.fixtures"]


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Mount]:
    """A fresh single-node dhtfs mount, unmounted (or killed and cleaned) afterwards."""
    m = Mount(tmp_path / "mnt", tmp_path / "state")
    m.start()
    try:
        yield m
    finally:
        m.close()
