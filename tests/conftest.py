"""Fixtures shared by all tiers. Real mounts are in ``tests/mounting.py``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mounting import Mount


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Mount]:
    """A fresh single-node dhtfs mount, unmounted (or killed and cleaned) afterwards."""
    m = Mount(tmp_path / "mnt", tmp_path / "state")
    m.start()
    try:
        yield m
    finally:
        m.close()
