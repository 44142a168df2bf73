"""How the node names block files for its size check: always the store's own path."""

from __future__ import annotations

import os
from pathlib import Path

from dhtfs.blocks import storage as node_mod
from dhtfs.sim.store import MemoryStore
from dhtfs.store.blockstore import BlockStore
from dhtfs.store.masterkey import load_master_key


def test_block_path_is_the_stores_path(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "chunks", load_master_key("ephemeral", tmp_path))
    path = node_mod._block_path_function(store)
    assert path is not None and path.__name__ == "fast"
    for _ in range(20):
        cid = os.urandom(32)
        assert path(cid) == os.fspath(store.path_of(cid))
    assert node_mod._block_path_function(MemoryStore()) is None


def test_unknown_layout_falls_back_to_path_of(tmp_path: Path) -> None:
    class Flat:
        root = tmp_path

        def path_of(self, cid: bytes) -> Path:
            return tmp_path / cid.hex()

    path = node_mod._block_path_function(Flat())
    assert path is not None and path.__name__ == "slow"
    cid = os.urandom(32)
    assert path(cid) == os.fspath(tmp_path / cid.hex())
