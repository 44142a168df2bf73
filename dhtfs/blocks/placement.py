"""Placement of blocks: the ``put_block`` half of ``dhtfs.blocks.node.BlockNode``.

``BlockPlacement`` is a mixin of ``BlockNode`` (it uses the node's lookups, calls and store;
see the attributes declared below). A put stores the block here, then pushes its bytes to the
R XOR-closest nodes (placement by XOR only: found by a lookup, or taken from the routing table
once lookups have shown it holds them, see ``Node.table_closest``; a peer that refused a block
for want of space is skipped for a while, see ``dhtfs.dht.protocol.FULL_SECONDS``), then
announces this node and the
replicas that acknowledged as providers to the k closest (see ``rpc`` on replica hints), the
bytes with them when the block is at most ``spread_max`` bytes (``dhtfs.dht.node``). Success,
see ``dhtfs.dht.results.PutResult``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from dhtfs.base.errors import NetworkError
from dhtfs.base.ids import distance, sha256_id
from dhtfs.blocks.storage import BlockStorage
from dhtfs.dht.lookup import LookupResult
from dhtfs.dht.results import PutResult
from dhtfs.net import rpc
from dhtfs.net.network import Contact, Message

log = logging.getLogger(__name__)


class BlockPlacement:
    """``put_block`` and ``place_block`` (a mixin of ``BlockNode``)."""

    # Provided by BlockNode:
    id: bytes
    replicas: int
    client: bool
    store: BlockStorage
    _offload: Callable[..., Awaitable[Any]]
    _in_background: Callable[..., Awaitable[None]]
    _call: Callable[[Contact, str, Message, float], Awaitable[Message]]
    _announce_to: Callable[..., Awaitable[int]]
    lookup: Callable[..., Awaitable[LookupResult]]
    table_closest: Callable[[bytes], list[Contact] | None]
    table_check: Callable[[bytes, list[Contact]], None]
    table_distrust: Callable[[], None]
    peer_full: Callable[[Contact], bool]
    transfer_timeout: Callable[[int], float]

    async def put_block(self, data: bytes) -> bytes:
        """Store ``data`` here and on the R closest nodes; returns its ID. See ``PutResult``."""
        return (await self.put_block_detailed(data)).block_id

    async def put_block_detailed(self, data: bytes) -> PutResult:
        """Store ``data`` here, then on the R XOR-closest nodes. See ``PutResult``.

        Returns once the pushes are done: they start as soon as the lookup has settled on the
        R closest (``iterative_lookup``'s ``on_settled``), while it goes on to the k closest.
        The rest of the placement (a push to any closer node the full lookup found, then the
        announcement to the k closest) runs in the maintenance nursery when ``run_maintenance``
        is running, else before returning; ``PutResult.placed`` is set when it is over.
        """
        cid = await self._offload(len(data), sha256_id, data)
        await self._offload(len(data), self.store.put_verified, cid, data)
        return await self.place_block(cid, data)

    async def place_block(self, cid: bytes, data: bytes) -> PutResult:
        """Place a block already stored here (``data`` hashes to ``cid``: the caller vouches)
        on the R closest nodes, as ``put_block_detailed`` does after storing it."""
        res = PutResult(cid)
        pushed = trio.Event()
        await self._in_background(self._place, res, data, pushed)
        await pushed.wait()
        return res

    async def _place(self, res: PutResult, data: bytes, pushed: trio.Event) -> None:
        cid = res.block_id
        args = {"id": cid, "data": data}
        timeout = self.transfer_timeout(len(data))
        own_d = distance(self.id, cid)
        tried: set[bytes] = set()

        async def push(c: Contact) -> bool:
            tried.add(c.node_id)
            try:
                await self._call(c, rpc.PUT_BLOCK, args, timeout)
            except NetworkError:
                self.table_distrust()
                return False
            res.replicas.append(c)
            return True

        def remote_slots(closest: list[Contact]) -> int:
            if self.client:
                return self.replicas
            rank = sum(1 for c in closest[: self.replicas]
                       if distance(c.node_id, cid) < own_d)
            return self.replicas - (1 if rank < self.replicas else 0)

        settled: list[Contact] = []
        got_settled = trio.Event()
        found = trio.Event()
        result: LookupResult | None = None

        def on_settled(closest: list[Contact]) -> None:
            settled.extend(c for c in closest if not self.peer_full(c))
            got_settled.set()

        async def look() -> None:
            nonlocal result
            known = self.table_closest(cid)
            if known is not None:  # the routing table stands for the network (see there)
                result = LookupResult(closest=known)
                on_settled(known[: self.replicas])
            else:
                result = await self.lookup(cid, settle=self.replicas, on_settled=on_settled)
                self.table_check(cid, result.closest)
            found.set()

        async def fill(slots: int) -> None:
            """Push to the settled closest in order; a failure moves on to the next, then
            (once the full lookup is in) further down the k closest."""
            queue = list(settled)
            async def worker() -> None:
                while True:
                    while queue:
                        if await push(queue.pop(0)):
                            return
                    await found.wait()
                    assert result is not None
                    rest = [c for c in result.closest
                            if c.node_id not in tried and not self.peer_full(c)]
                    if not rest:
                        return
                    queue.extend(c for c in rest if c not in queue)

            async with trio.open_nursery() as nursery:
                for _ in range(slots):
                    nursery.start_soon(worker)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(look)
                await got_settled.wait()
                slots = remote_slots(settled)
                res.local_slot = slots < self.replicas
                res.wanted = min(self.replicas, len(settled) + (0 if self.client else 1))
                await fill(min(slots, len(settled)))
                pushed.set()
            assert result is not None
            # The full lookup may have found closer nodes than the settled ones: fill them too.
            usable = [c for c in result.closest if not self.peer_full(c)]
            final = usable[: remote_slots(usable)]
            async with trio.open_nursery() as nursery:
                for c in final:
                    if c.node_id not in tried:
                        nursery.start_soon(push, c)
            await self._announce_to(cid, result.closest, res, data)
        except Exception:
            log.exception("placing block %s failed", cid.hex()[:16])
        finally:
            pushed.set()
            res.placed.set()
