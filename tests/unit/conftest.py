"""The ``fs`` fixture of the Operations tier: a state directory opened in-process (4 KiB
chunks), its sealing nursery running, closed after the test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from dhtfs.base.config import Config
from dhtfs.runtime.localfs import LocalFilesystem, open_state

CS = 4096


@pytest.fixture
async def fs(tmp_path: Path) -> AsyncIterator[LocalFilesystem]:
    lfs = open_state(Config(state=tmp_path / "state", chunk_size=CS))
    async with trio.open_nursery() as nursery:
        lfs.contents.nursery = nursery
        yield lfs
        nursery.cancel_scope.cancel()
    lfs.close()
