"""The block layer's interfaces (``dhtfs.blocks.storage``) are implemented, every member, by
the real classes and by the simulator's: no caller has to ask whether a member exists."""

from __future__ import annotations

import inspect
from typing import Protocol

import pytest

from dhtfs.blocks.storage import BlockStorage, PeerNetwork
from dhtfs.net.transport import Transport
from dhtfs.sim.network import SimNetwork
from dhtfs.sim.store import MemoryStore
from dhtfs.store.blockstore import BlockStore


def members(protocol: type) -> set[str]:
    """The names a Protocol declares, its bases' included (``typing.Protocol`` excluded)."""
    names: set[str] = set()
    for cls in protocol.__mro__:
        if cls is object or cls is Protocol or not getattr(cls, "_is_protocol", False):
            continue
        names.update(n for n in vars(cls) if not n.startswith("_"))
        names.update(getattr(cls, "__annotations__", {}))
    return names


def declared(cls: type, name: str) -> bool:
    """Whether ``cls`` defines ``name``: a method or property, or an attribute set in its
    constructor or its body."""
    if any(name in vars(c) for c in cls.__mro__ if c is not object):
        return True
    source = inspect.getsource(cls)
    return f"self.{name} =" in source or f"self.{name}:" in source


@pytest.mark.parametrize("cls", [BlockStore, MemoryStore])
def test_stores_implement_block_storage(cls: type) -> None:
    assert {"root", "path_of", "has", "get", "put", "put_verified", "touch", "sync", "remove",
            "ids"} <= members(BlockStorage)
    missing = [n for n in members(BlockStorage) if not declared(cls, n)]
    assert not missing


@pytest.mark.parametrize("cls", [Transport, SimNetwork])
def test_networks_implement_peer_network(cls: type) -> None:
    assert {"local", "call", "contact_at", "dials", "connected_peers",
            "connected_contact"} <= members(PeerNetwork)
    missing = [n for n in members(PeerNetwork) if not declared(cls, n)]
    assert not missing


def test_memory_store_has_no_files() -> None:
    store = MemoryStore()
    assert store.root is None
    assert store.touch(b"x" * 32) is False
    store.put(b"x" * 32, b"data")
    assert store.touch(b"x" * 32) is True
