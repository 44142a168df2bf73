"""Repair: blocks held here are brought back to R copies on their current R closest nodes.

Every ``interval`` seconds a pass goes over the blocks in the local store (at most
``rate`` blocks a second, so a large store costs a steady trickle, not a storm). For each,
the R nodes closest to its ID in this node's routing table (and this node itself) are its
rightful holders; each of them that does not hold it (asked with FIND_PROVIDERS: a node that
holds a block names itself) gets it pushed (PUT_CHUNK, acknowledged once fsynced there).

This covers both halves of the issue's rule: a holder that is gone drops out of the routing
table once calls to it fail (that is the grace period: Kademlia's eviction after repeated
failures), so the next closest takes its place and receives the block; and a node that joins
among the R closest is found missing it on the next pass.

Invariants:
- every call has a deadline (the node's RPC timeouts); a failed check or push is left to the
  next pass; errors never leave this loop;
- a pass never holds more than one block's bytes per concurrent push in memory.
"""

from __future__ import annotations

import logging

import trio

from dhtfs.base.errors import BlockError, NetworkError
from dhtfs.base.periodic import every
from dhtfs.blocks.node import BlockNode
from dhtfs.net import rpc
from dhtfs.net.network import Contact

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 60.0
RATE = 100  # blocks checked per second, at most
CONCURRENCY = 8


class Repairer:
    """The repair passes of one node (see the module docstring)."""

    def __init__(
        self, node: BlockNode, *, interval: float = INTERVAL_SECONDS, rate: int = RATE
    ) -> None:
        self.node = node
        self.interval = interval
        self.rate = rate
        self.pushed = 0  # copies made (for status and tests)
        self.passes = 0

    async def run(self) -> None:
        await every(self.interval, "repair", self.one_pass)

    async def one_pass(self) -> int:
        """Check every block held here once; returns the copies made."""
        node = self.node
        if not len(node.routing):
            return 0
        blocks = await trio.to_thread.run_sync(lambda: list(node.store.ids()))
        made = 0
        limit = trio.CapacityLimiter(CONCURRENCY)

        async def one(cid: bytes) -> None:
            nonlocal made
            async with limit:
                made += await self.repair(cid)

        async with trio.open_nursery() as nursery:
            for i, cid in enumerate(blocks):
                nursery.start_soon(one, cid)
                if (i + 1) % self.rate == 0:
                    await trio.sleep(1.0)
        self.passes += 1
        if made:
            log.info("repair: %d copies made for %d blocks checked", made, len(blocks))
        return made

    async def repair(self, cid: bytes) -> int:
        """Give ``cid`` to each of its R closest that lacks it; returns how many got it."""
        node = self.node
        # This node counts as one of the rightful holders when it is among the R closest.
        rightful = node.rightful_holders(cid)
        missing = [c for c in rightful if c.node_id != node.id and not await self._holds(c, cid)]
        if not missing:
            return 0
        try:
            data = await trio.to_thread.run_sync(node.store.get, cid)
        except BlockError:
            return 0  # collected meanwhile
        made = 0
        for c in missing:
            try:
                await node.call(c, rpc.PUT_BLOCK, {"id": cid, "data": data},
                                node.transfer_timeout(len(data)))
                made += 1
            except NetworkError:
                pass
        self.pushed += made
        return made

    async def _holds(self, peer: Contact, cid: bytes) -> bool:
        """Whether ``peer`` holds ``cid`` (it names itself among the providers); an unreachable
        peer counts as holding it (nothing to push to; eviction will replace it)."""
        try:
            ans = await self.node.call(peer, rpc.FIND_PROVIDERS, {"key": cid},
                                       self.node.rpc_timeout)
        except NetworkError:
            return True
        providers = rpc.ans_contacts(ans, "providers", rpc.FIND_PROVIDERS)
        return any(p.node_id == peer.node_id for p in providers)
