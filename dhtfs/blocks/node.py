"""A DHT node that holds blocks: the block store behind the Kademlia node, its RPCs and upkeep.

``BlockNode`` is a ``dhtfs.dht.node.Node`` whose values are blocks (content-addressed: the ID
is the SHA-256 of the bytes) kept in a block store (``dhtfs.blocks.storage.BlockStorage``).
It answers PUT_CHUNK, GET_CHUNK and HOLD (registered in the node's ``services``), fills the
node's value hooks with its store (FIND_PROVIDERS answering with the bytes inline, a small
block spread with its provider record kept as a cached copy, republish and hand-off of the
blocks held here), places blocks on the R XOR-closest nodes (``dhtfs.blocks.placement``) and
reads them back from the nearest provider (``dhtfs.blocks.fetch``). A subclass rather than a
collaborator of the node: the node's own Kademlia handlers (FIND_PROVIDERS, ADD_PROVIDER), its
republish and its hand-off ask what the node holds at every step, and every user of a node
(replication, repair, reclaim, the control socket, the simulator) uses both halves.

- a replica acknowledges a pushed block (PUT_CHUNK) once it survives a power loss: stored and
  fsynced, or, already held, its collection grace restarted (``store.touch``); a full disk
  answers ``rpc.NO_SPACE`` and the pusher places the block on the next closest node;
- a block file that does not unseal is dropped (the next read fetches it again), unless it
  changed within ``YOUNG_SECONDS``: a store of it is in progress;
- ``on_cached`` is told (on the trio thread) of each block newly cached here (a verified fetch,
  or one spread with its provider record), with its size; ``on_served`` of each block served
  from here; ``on_placed`` of each block pushed here by PUT_CHUNK (held for the swarm from then
  on). A client-only node (``client``) stores nothing for others, so its own copy of a block
  never counts among the R (its transport advertises port 0 so peers do not route to it).

Offloading: hashing and store calls on buffers of ``offload_threshold`` bytes or more run in
``trio.to_thread.run_sync`` (hashlib releases the GIL). Measured here: SHA-256 of 256 KiB
~0.5 ms, of 1 MiB ~1.5 ms, a thread round trip ~0.2 ms, so the default threshold is 256 KiB.
The simulator passes ``offload_threshold=None`` (everything inline, thousands of nodes in one
process).
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from dhtfs.base.errors import BlockCorrupt, BlockMissing, NetworkError, RemoteError
from dhtfs.base.ids import distance
from dhtfs.blocks.arrivals import Arrivals
from dhtfs.blocks.fetch import BlockReads
from dhtfs.blocks.placement import BlockPlacement
from dhtfs.blocks.storage import BlockStorage, PeerNetwork, _block_path_function
from dhtfs.dht.node import Node
from dhtfs.net import rpc
from dhtfs.net.network import Contact, Message
from dhtfs.store.blockstore import HEADER_BYTES, TAG_BYTES

log = logging.getLogger(__name__)

T = TypeVar("T")

SEAL_OVERHEAD = HEADER_BYTES + TAG_BYTES
"""Bytes a sealed block file adds to its plaintext (``dhtfs.store.blockstore``)."""
CACHE_QUEUE = 256
"""Fetched blocks waiting to be cached; past that they are not cached."""
YOUNG_SECONDS = 5.0
"""A block file changed this recently that does not unseal is taken as being written."""


class BlockNode(BlockReads, BlockPlacement, Node):
    """A Kademlia node holding blocks. See the module docstring."""

    def __init__(
        self,
        network: PeerNetwork,
        store: BlockStorage,
        *,
        client: bool = False,
        offload_threshold: int | None = 256 * 1024,
        cache_fetched: bool = True,
        cache_when_idle: bool = True,
        on_cached: Callable[[bytes, int], None] | None = None,
        on_served: Callable[[bytes], None] | None = None,
        on_placed: Callable[[bytes], None] | None = None,
        **node: Any,
    ) -> None:
        """``node``: the ``Node``'s parameters (k, alpha, replicas, timeouts...)."""
        super().__init__(network, **node)
        self.network: PeerNetwork = network
        self.store = store
        self.client = client
        self.offload_threshold = offload_threshold
        self.cache_fetched = cache_fetched
        self.cache_when_idle = cache_when_idle
        self.on_cached = on_cached
        self.on_served = on_served
        self.on_placed = on_placed
        self.refused_full = 0  # PUT_CHUNKs this node refused for want of space
        self._block_path = _block_path_function(store)
        # (block id, bytes, when it counts as announced)
        self._cache_send, self._cache_recv = trio.open_memory_channel[
            tuple[bytes, bytes, float]
        ](CACHE_QUEUE)
        self._cache_queued = 0
        # Reads waiting for a block no reachable node could serve yet (``dhtfs.blocks.fetch``),
        # told when a copy or a provider record of it comes in.
        self.arrivals = Arrivals()
        self.services[rpc.PUT_BLOCK] = self._handle_put
        self.services[rpc.GET_BLOCK] = self._handle_get
        self.services[rpc.HOLD] = self._handle_hold

    @property
    def background_jobs(self) -> int:
        """Work going on in the maintenance nursery on behalf of finished calls (the
        placement and announcement after ``put_block``, fetched blocks not yet cached)."""
        return self._background_jobs + self._cache_queued

    async def _offload(self, size: int, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` in a worker thread when ``size`` passes the offload threshold."""
        if self.offload_threshold is not None and size >= self.offload_threshold:
            return await trio.to_thread.run_sync(fn, *args)
        return fn(*args)

    def _maintenance_loops(self) -> list[Callable[[], Awaitable[None]]]:
        """The node's loops, and first the writing of fetched blocks to the cache."""
        return [self._cache_loop, *super()._maintenance_loops()]

    async def _held_keys(self) -> list[bytes]:
        return await self._offload(self.offload_threshold or 0, lambda: list(self.store.ids()))

    async def _provider_added(self, key: bytes, spread: bytes | None) -> None:
        """A small block spread with its provider record is kept as a cached copy, counted as
        announced now (see ``dhtfs.dht.node``); waiting reads hear of it either way."""
        if spread is not None:
            now = trio.current_time()
            if self._stored_size(key) is None:
                await self._cache_later(key, spread, announced=now)
            elif key in self._announced:
                self._announced[key] = now
        self.arrivals.arrived(key, spread)

    # -- incoming block RPCs (registered in ``services``) ---------------------------------------

    async def _handle_put(self, caller: Contact, method: str, args: Message) -> Message:
        """PUT_CHUNK: store a pushed block durably; a full disk answers ``rpc.NO_SPACE``."""
        cid = rpc.req_id(args, "id", method)
        data = rpc.req_data(args, method)
        try:
            if self._block_path is not None:
                # A replica acknowledges what survives its power loss: stored and fsynced
                # (or, already held, its collection grace restarted) in one thread hop.
                new = await trio.to_thread.run_sync(self._store_durably, cid, data)
            else:  # a store without files (the simulator's): memory only
                new = await self._offload(len(data), self._store_durably, cid, data)
        except BlockCorrupt:
            raise RemoteError(f"{method}: data does not hash to its id") from None
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            self.refused_full += 1
            if self.refused_full == 1 or self.refused_full % 100 == 0:
                log.warning("no space for blocks from peers (%s); told %s so (%d refused "
                            "so far)", exc, caller, self.refused_full)
            raise rpc.coded(rpc.NO_SPACE, f"{method}: no space left on this node") from None
        self._announced.setdefault(cid, trio.current_time())
        if self.on_placed is not None:
            self.on_placed(cid)
        self.arrivals.arrived(cid, data)
        return {"stored": bool(new)}

    async def _handle_hold(self, caller: Contact, method: str, args: Message) -> Message:
        """HOLD: restart the collection grace of the blocks named that are held here."""
        ids = rpc.req_ids(args, "ids", method, rpc.MAX_HOLD_IDS)
        return {"held": await self._hold(ids)}

    async def _handle_get(self, caller: Contact, method: str, args: Message) -> Message:
        """GET_CHUNK: the block's bytes, or none when it is not held here."""
        cid = rpc.req_id(args, "id", method)
        return {"data": await self._local_get(cid)}

    # -- the block store --------------------------------------------------------------------------

    def _store_durably(self, cid: bytes, data: bytes) -> bool:
        """(Worker thread.) Verify, store and fsync a pushed block; True if it was new. One
        already held is touched instead (see ``_hold``)."""
        new = self.store.put_verified(cid, data, durable=True)
        if not new:
            self.store.touch(cid)
        return bool(new)

    async def _hold(self, ids: list[bytes]) -> int:
        """Restart the collection grace of the ``ids`` held here (``store.touch``); returns
        how many are held here."""
        touch = self.store.touch
        if self._block_path is None:  # a store without files (the simulator's): no disk I/O
            return sum(1 for c in ids if touch(c))
        return sum(await trio.to_thread.run_sync(lambda: [touch(c) for c in ids]))

    def _holds(self, cid: bytes) -> bool:
        return self.store.has(cid)

    def _stored_size(self, cid: bytes) -> int | None:
        """None when ``cid`` is not stored here, else an upper bound of its plaintext size
        (one ``stat`` for the on-disk store; unknown sizes count as ``offload_threshold``)."""
        if self._block_path is not None:
            try:
                return max(0, os.stat(self._block_path(cid)).st_size - SEAL_OVERHEAD)
            except OSError:
                return None
        return (self.offload_threshold or 0) if self.store.has(cid) else None

    async def _local_get(
        self, cid: bytes, *, limit: int | None = None, size: int | None = None
    ) -> bytes | None:
        """The block's bytes if stored here (and at most ``limit`` bytes), else None. Small
        blocks are read on the trio thread, large ones in a worker thread. ``size``: what
        ``_stored_size`` just said, if the caller asked it."""
        if size is None:
            size = self._stored_size(cid)
        if size is None or (limit is not None and size > limit):
            return None
        try:
            data = await self._offload(size, self.store.get, cid)
            if self.on_served is not None:
                self.on_served(cid)
            return data if limit is None or len(data) <= limit else None
        except BlockMissing:
            return None
        except BlockCorrupt:
            if self._being_written(cid):
                return None     # a store of it in progress: not here yet, and not ours to drop
            log.warning("dropping corrupt local block %s", cid.hex()[:16])
            self.store.remove(cid)
            self._announced.pop(cid, None)
            return None

    def _being_written(self, cid: bytes) -> bool:
        """Whether the block's file changed within ``YOUNG_SECONDS``: a store creates it under
        its final name, then seals and fills it (``dhtfs.store.blockstore``), so a read
        meanwhile sees a short file that does not unseal. Such a file is skipped, never
        dropped (dropping it would lose the copy being stored)."""
        if self._block_path is None:
            return False
        try:
            return time.time() - os.stat(self._block_path(cid)).st_mtime < YOUNG_SECONDS
        except OSError:
            return False

    async def hand_off(self, newcomer: Contact) -> int:
        """Push to ``newcomer`` every block held here for which both it and this node are
        among the R XOR-closest (this node's view), unless it already has it. Returns how many
        were pushed."""
        ids = await self._offload(self.offload_threshold or 0, lambda: list(self.store.ids()))
        pushed = 0
        for cid in ids:
            best = sorted([self.contact, *self.routing.closest(cid, self.replicas)],
                          key=lambda c: distance(c.node_id, cid))[: self.replicas]
            if not any(c.node_id == newcomer.node_id for c in best) or self.contact not in best:
                continue
            try:
                ans = await self._call(newcomer, rpc.FIND_PROVIDERS, {"key": cid},
                                       self.rpc_timeout)
                if any(p.node_id == newcomer.node_id
                       for p in rpc.ans_contacts(ans, "providers", rpc.FIND_PROVIDERS)):
                    continue            # it has it already (another holder was quicker)
                data = await self._local_get(cid)
                if data is None:
                    continue
                await self._call(newcomer, rpc.PUT_BLOCK, {"id": cid, "data": data},
                                 self.transfer_timeout(len(data)))
                pushed += 1
            except NetworkError:
                return pushed           # it went away: nothing more to hand it
        return pushed


    def rightful_holders(self, cid: bytes) -> list[Contact]:
        """The R nodes closest to ``cid`` in this node's view: its routing table's (but the
        peers that are full, see ``peer_full``: the next closest take their place), and this
        node itself unless it is a client (which holds nothing for the swarm)."""
        known = self.routing.closest(cid, self.replicas + len(self.full_until))
        known = [c for c in known if not self.peer_full(c)][: self.replicas]
        if not self.client:
            known = [self.contact, *known]
        return sorted(known, key=lambda c: distance(c.node_id, cid))[: self.replicas]

    def responsible_for(self, cid: bytes) -> bool:
        """Whether this node is among ``cid``'s rightful holders (so its copy is one of R)."""
        return any(c.node_id == self.id for c in self.rightful_holders(cid))

