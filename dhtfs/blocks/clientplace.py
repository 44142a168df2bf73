"""A client-only mount's blocks wait for a pause in writing ``HURRY_AFTER`` seconds at most.

A storage node's small blocks wait for a pause in writing before they are placed
(``dhtfs.blocks.replication``: a copy of many small files is not slowed by replicating each
one as it goes); the writer holds a copy meanwhile, and readers find it there (the version's
writer is the read's first hint, and a storage node is in every routing table). A client
(``-o storage=false``) is in nobody's routing table: until its blocks are on their R
replicas, its own copy is the only one, reachable only over a connection the client opened.
A client writing without pause (a long copy) would leave the versions it publishes
unreadable, for as long as it writes, on every node it has no connection with (in a swarm
larger than the op push's fan-out, most of them), and a reader there gives up after
``read_deadline``. So on a client (``ClientPlacement``), a block still waiting
``HURRY_AFTER`` seconds after it was stored is put first in line (``BlockReplicator.wait``
with no wait: it only hurries it), pause or not.

Nothing here delays ``close()`` (it returns on local durability, as on a storage node) or
the op that names the blocks: the op goes out at once, before the blocks land on their
replicas. A read elsewhere that races it waits for a copy (``dhtfs.blocks.fetch``,
"patience"), asking the client itself over its connection meanwhile. (Holding the op back
until its blocks are placed would need the op log to push a client's entries only up to a
point, in pushes and anti-entropy alike; a close that waited for the placement would cost a
round trip to the replicas and their fsync, about what an fsync costs on a client: ten times
a close, measured here.) Why not hurry every block at once: measured on a 2-core machine, a
burst of 4 KiB files on a client ran ~20% slower with placement running beside it.
"""

from __future__ import annotations

import trio

from dhtfs.blocks.replication import BlockReplicator

HURRY_AFTER = 1.0
"""Seconds a client's block may wait for a pause in writing before it is placed anyway."""


class ClientPlacement:
    """Hurries a client's blocks into placement (see the module docstring). Lives on the
    trio thread."""

    def __init__(self, replicator: BlockReplicator, *, after: float = HURRY_AFTER) -> None:
        self.replicator = replicator
        self.after = after
        self._new: dict[bytes, float] = {}   # block → when it was stored, oldest first
        self._wake = trio.Event()

    def sealed(self, cid: bytes, size: int, data: bytes) -> None:
        """A block was stored here (``FileContents.on_sealed``): replicate it."""
        self.replicator.add(cid, size, data)
        self._new.setdefault(cid, trio.current_time())
        self._wake.set()

    async def run(self) -> None:
        while True:
            if not self._new:
                self._wake = trio.Event()
                await self._wake.wait()
                continue
            due = next(iter(self._new.values())) + self.after - trio.current_time()
            if due > 0:
                await trio.sleep(due)
                continue
            now = trio.current_time()
            batch = []
            for cid, stored in list(self._new.items()):
                if now - stored < self.after:
                    break
                del self._new[cid]
                if self.replicator.is_pending(cid):
                    batch.append(cid)
            if batch:
                await self.replicator.wait(batch, 0)  # first in line; no waiting
