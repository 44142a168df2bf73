"""What the block layer needs of the layers below it, as typed interfaces (bmuller's kademlia
names its ``IStorage`` the same way): the node's block store and the network's connections.

The block layer declares them; the implementations satisfy them structurally, without
importing this module (``dhtfs.store`` and ``dhtfs.net`` sit below ``dhtfs.blocks``):

- ``BlockStorage``: ``dhtfs.store.blockstore.BlockStore`` (sealed files on disk) and
  ``dhtfs.sim.store.MemoryStore`` (the simulator's dict, whose ``root`` is None: no files);
- ``PeerNetwork``: ``dhtfs.net.transport.Transport`` and ``dhtfs.sim.network.SimNetwork``
  (which has no connections: none open, none dialed).

``tests/unit/test_block_storage.py`` checks that each implements every member.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Protocol

from dhtfs.net.network import Contact, Network


class BlockFiles(Protocol):
    """Where a store keeps its blocks' files, if it keeps files at all."""

    @property
    def root(self) -> Path | None:
        """The directory of the block files; None for a store without files (in memory)."""
        ...

    def path_of(self, block_id: bytes) -> Path:
        """The file of ``block_id`` (laid out under ``root``; only for a store with files)."""
        ...


class BlockStorage(BlockFiles, Protocol):
    """A node's block store: content-addressed, each stored block hashes to its ID unless it
    was written by ``put`` (whose caller vouches for it)."""

    def has(self, block_id: bytes) -> bool: ...

    def get(self, block_id: bytes) -> bytes:
        """The block's bytes; ``BlockMissing`` if absent, ``BlockCorrupt`` if unreadable."""
        ...

    def put(self, block_id: bytes, data: bytes) -> bool:
        """Store ``data`` (the caller vouches that it hashes to ``block_id``); True if new."""
        ...

    def put_verified(self, block_id: bytes, data: bytes, *, durable: bool = False) -> bool:
        """Verify, then store (``durable``: fsynced before returning); True if new."""
        ...

    def touch(self, block_id: bytes) -> bool:
        """Restart the block's collection grace; whether it is held here."""
        ...

    def sync(self, block_ids: Iterable[bytes]) -> None:
        """Make the blocks durable (fsync), for a store that keeps files."""
        ...

    def remove(self, block_id: bytes) -> bool: ...

    def ids(self) -> Iterator[bytes]: ...


class PeerNetwork(Network, Protocol):
    """A ``Network`` that also tells which connections are open: a client-only node is in
    nobody's routing table, but the connection it opened carries requests to it too."""

    dials: int
    """Outbound connections attempted so far (each a handshake)."""

    def connected_peers(self) -> list[Contact]:
        """The peers a connection is open with now."""
        ...

    def connected_contact(self, node_id: bytes) -> Contact | None:
        """How to reach ``node_id`` over a connection open with it, else None."""
        ...


def _block_path_function(store: BlockFiles) -> Callable[[bytes], str] | None:
    """How to name a block's file for ``stat``: ``store.path_of`` as a string, built without
    ``pathlib`` (a third of a FIND_PROVIDERS answer's cost) when a probe shows the store lays
    blocks out as ``<root>/ab/cdef…``; None for stores without files (the simulator's)."""
    root = store.root
    if root is None:
        return None
    path_of = store.path_of

    def slow(cid: bytes) -> str:
        return os.fspath(path_of(cid))

    prefix = os.fspath(root)

    def fast(cid: bytes) -> str:
        h = cid.hex()
        return f"{prefix}/{h[:2]}/{h[2:]}"

    probe = bytes(range(32))
    return fast if fast(probe) == slow(probe) else slow
