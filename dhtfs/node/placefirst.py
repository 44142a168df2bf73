"""A client-only mount pushes its ops only once the blocks written before them are placed.

A client (``-o storage=false``) holds its blocks for nobody and nobody routes to it: until a
block is on its R replicas, the client's own copy is the only one, reachable only over a
connection the client opened. A storage node's small blocks wait for a pause in writing
before they are placed (``dhtfs.node.replication``); a client's may not, or the ops naming
them reach other nodes long before any node they can route to holds the bytes. So on a
client (``PlacedFirst``):

- every op it makes wakes ``run``, which waits for every block stored here before it
  (``ChunkReplicator.wait``: those blocks go first in line, placed at once instead of after
  the pause), then lets the op replicator push (``notify``);
- the wait is bounded by ``HOLD_SECONDS``: a swarm that cannot take the blocks must not hide
  the namespace; the ops then go anyway, and readers elsewhere wait for the blocks
  (``dhtfs.node.fetch``, "patience"), asking the client itself over its connection
  meanwhile.

``close()`` does not wait for any of this (it returns on local durability, as on a storage
node): the placement's cost falls on how soon the change shows elsewhere, a round trip to the
replicas (fsynced there) later, not on the writer.

Invariants: a block is stored (``sealed``) before the op naming it exists (sealing precedes
the commit of a file's change), and ``run`` handles ops in order, one round at a time: every
op pushed after a round had its blocks placed (or held for ``HOLD_SECONDS``) first. Limit:
an anti-entropy round the client starts may carry an op earlier; readers' patience covers it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from dhtfs.node.replication import ChunkReplicator

log = logging.getLogger(__name__)

HOLD_SECONDS = 2.0
"""Longest a client's ops wait for the placement of the blocks stored before them."""


class PlacedFirst:
    """Orders a client's op pushes after its block placements (see the module docstring).
    Lives on the trio thread."""

    def __init__(
        self,
        replication: ChunkReplicator,
        notify: Callable[[], None],
        *,
        hold: float = HOLD_SECONDS,
    ) -> None:
        self.replication = replication
        self.notify = notify
        self.hold = hold
        self._unplaced: dict[bytes, None] = {}   # stored since the last round, in order
        self._wake = trio.Event()
        self.rounds = 0   # rounds that waited for blocks
        self.late = 0     # rounds whose ops went before all their blocks were placed

    def sealed(self, cid: bytes, size: int, data: bytes) -> None:
        """A block was stored here (``FileContents.on_sealed``): replicate it, and place it
        before the next op goes out."""
        self.replication.add(cid, size, data)
        self._unplaced[cid] = None

    def op(self) -> None:
        """A new own op (``Tree.on_op``): push it once its blocks are placed."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            waiting = [c for c in self._unplaced if self.replication.is_pending(c)]
            self._unplaced.clear()
            if waiting:
                self.rounds += 1
                left = await self.replication.wait(waiting, self.hold)
                if left:
                    self.late += 1
                    log.debug("pushing ops before %d of their blocks are placed (waited "
                              "%.1fs)", len(left), self.hold)
            self.notify()
