"""Reads of blocks: the ``get_block`` half of ``dhtfs.blocks.node.BlockNode``.

``BlockReads`` is a mixin of ``BlockNode`` (it uses the node's routing table, lookups, calls and
store; see the attributes declared below). In short:

- local store first; then the nodes hinted to hold it (the writer of the version naming it,
  through its routing contact or, a client-only writer being in nobody's routing table, the
  connection it opened to us; when neither exists, the R closest in our routing table);
  then FIND_PROVIDERS asking for the bytes inline (Kademlia's FIND_VALUE for small blocks);
  then the providers it named, ranked by RTT EWMA, hedged to the next one when a provider is
  slower than its expected time, falling through on failure (``_fetch``);
- every answer is verified against its ID (SHA-256); a provider that sends bad bytes is
  penalized (ranked last from then on) and the next one is asked;
- a fetched block is kept as a cached copy (``_cache_later``): written when the process is
  otherwise idle, announced at the next republish, and reported to ``on_cached`` (the disk
  cache, which evicts such copies least recently used first).

Patience (``until``; a mount's reads pass ``read_deadline``): a node may show a file version
before any node it can reach holds its blocks. Op pushes travel faster than block placement
(a storage writer places small blocks once writing pauses; a client-only writer holds the
only copy until placement, reachable only over its own connections), and a read that raced
them failed with EIO for bytes that arrived a moment later. The rule: **a version a node
shows can be read there**. A read that finds no copy keeps looking until its deadline, with
backoff (``RETRY_FIRST`` doubling to ``RETRY_MAX``): a lookup each time, the local store, and
the version's writer again once a connection to it exists. News of the block reaching this
node (a replica's copy pushed here, a provider record or a small block's bytes with it:
``dhtfs.blocks.arrivals``) ends a wait at once. EIO only when the deadline passes with no copy
found, or at once on a node with no peer at all (nobody could bring one). Chosen over
holding a version back until its blocks are placed, which would need the op log to order a
client's pushes after its placements (pushes and anti-entropy alike) and delay every change
by a placement's round trip; the cost here is paid only by a read that races a placement,
and only for as long as the race lasts. A read that waited out its whole deadline is
remembered for a few seconds (the kernel retries a failed page read at once): the retry
fails at once instead of waiting a second deadline.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import trio
import trio.testing

from dhtfs.base.errors import BlockMissing, NetworkError
from dhtfs.base.ids import sha256_id
from dhtfs.blocks.arrivals import Arrivals, Watch
from dhtfs.blocks.storage import BlockStorage, PeerNetwork
from dhtfs.dht.results import GetResult, ValueResult
from dhtfs.net import rpc
from dhtfs.net.network import Contact, Message
from dhtfs.store.blockstore import sealed_size

if TYPE_CHECKING:
    from dhtfs.dht.routing import RoutingTable

log = logging.getLogger(__name__)

ALONE_AFTER = 600.0
"""A read gives up at once for want of peers only when none was heard from for this long."""
RETRY_FIRST = 0.05
"""Seconds a patient read waits before its second look for a copy; doubled after each look,
up to ``RETRY_MAX`` (news of the block arriving here ends a wait at once)."""
RETRY_MAX = 2.0


class BlockReads:
    """``get_block`` and the caching of fetched blocks (a mixin of ``BlockNode``)."""

    # Provided by BlockNode:
    id: bytes
    replicas: int
    store: BlockStorage
    network: PeerNetwork
    routing: RoutingTable
    fetch_timeout: float
    cache_fetched: bool
    cache_when_idle: bool
    arrivals: Arrivals
    on_cached: Callable[[bytes, int], None] | None
    _announced: dict[bytes, float]
    _background: trio.Nursery | None
    _cache_send: trio.MemorySendChannel[tuple[bytes, bytes, float]]
    _cache_recv: trio.MemoryReceiveChannel[tuple[bytes, bytes, float]]
    _cache_queued: int
    _offload: Callable[..., Awaitable[Any]]
    recent_peers: Callable[[float], int]
    _call: Callable[[Contact, str, Message, float], Awaitable[Message]]
    _local_get: Callable[..., Awaitable[bytes | None]]
    find_value: Callable[..., Awaitable[ValueResult]]
    hedge_delay: Callable[[Contact], float]
    _served_bad_bytes: Callable[[Contact, bytes], None]

    async def get_block(self, block_id: bytes, hints: Iterable[bytes] = ()) -> bytes:
        """The block's bytes, verified; from here, else from the fastest provider that has it.
        ``hints``: node IDs likely to hold it (the writer of the file version that names it),
        asked directly, before any lookup, when reachable. Raises ``BlockMissing`` when no
        provider can serve it."""
        return (await self.get_block_detailed(block_id, hints)).data

    async def get_block_detailed(
        self, block_id: bytes, hints: Iterable[bytes] = (), *, until: float | None = None
    ) -> GetResult:
        """``get_block``, saying how the bytes were found (``GetResult``).

        The hinted holders are asked first; if they have not answered within the first one's
        hedge delay (or failed), the lookup path starts too, and the first verified answer
        wins: a hinted writer that went silent costs a read its hedge delay, not a timeout.

        ``until`` (trio time; None: give up at once): while no copy is found, keep looking
        until then (see the module docstring, "patience"); ``BlockMissing`` only past it, or
        at once when this node has no peer at all."""
        local = await self._local_get(block_id)
        if local is not None:
            return GetResult(local, "local")
        hints = [h for h in dict.fromkeys(hints) if h != self.id]
        if until is not None and self.arrivals.recently_missed(block_id):
            # A read of it waited out a whole deadline just now, and no news of it came since
            # (the kernel retries a failed page read at once): not a second deadline.
            raise BlockMissing(block_id, "no copy found within the last read's deadline")
        with self.arrivals.watch(block_id) as news:
            got = await self._look_for(block_id, hints, until, news)
        if got is None:
            if until is not None:
                if trio.current_time() >= until:  # a whole deadline waited: not again at once
                    self.arrivals.missed(block_id)
                log.warning("block %s: no copy on any reachable node (its writer: %s)",
                            block_id.hex()[:16], hints[0].hex()[:12] if hints else "unknown")
            elif hints:
                log.warning("block %s: neither the hinted holders nor the providers a lookup "
                            "found could serve it", block_id.hex()[:16])
            raise BlockMissing(block_id, "no reachable provider has it")
        if self.cache_fetched and got.source not in ("local", "arrived"):
            await self._cache_later(block_id, got.data)
        return got

    def _reachable(self, node_id: bytes) -> Contact | None:
        """How to ask ``node_id`` directly: its routing contact, else the connection it has
        open with us (a client-only node is in nobody's routing table, but the connection it
        opened to push its ops carries our requests too), else None."""
        c = self.routing.get(node_id)
        if c is None:
            c = self.network.connected_contact(node_id)
        return c

    def _alone(self) -> bool:
        """No peer to ask or to hear from: waiting for a copy could only end in EIO. A
        routing table emptied by failing calls is not that: peers heard from within
        ``ALONE_AFTER`` seconds mean this node is more likely cut off (or they are busy)
        than alone, and the read waits for them (the replication backlog's rule too)."""
        if len(self.routing):
            return False
        if self.network.connected_peers():
            return False
        return self.recent_peers(ALONE_AFTER) == 0

    async def _look_for(
        self, cid: bytes, hints: list[bytes], until: float | None, news: Watch
    ) -> GetResult | None:
        """The rounds of one read (see ``get_block_detailed``); None when nothing served it."""
        hinted = [c for h in hints if (c := self._reachable(h)) is not None]
        asked = {c.node_id for c in hinted}
        guessed = False
        if hints and not hinted:
            # A writer we cannot reach directly: the R closest in our routing table are where
            # placement put it, if our view is right (in a swarm that fits in the table it
            # is). A wrong guess costs quick "not here" answers, then the lookup below takes
            # over. (No hint at all: the lookup alone, as Kademlia has it.)
            hinted = self.routing.rank_providers(self.routing.closest(cid, self.replicas))
            guessed = True
        got: GetResult | None = None
        hint_over = trio.Event()
        if not hinted:
            hint_over.set()

        async with trio.open_nursery() as nursery:

            def win(found: GetResult) -> None:
                nonlocal got
                if got is None:
                    got = found
                    nursery.cancel_scope.cancel()

            async def by_hint(holders: list[Contact], first: bool) -> None:
                try:
                    data, provider = await self._fetch(cid, holders)
                finally:
                    if first:
                        hint_over.set()
                if data is not None:
                    win(GetResult(data, "hinted", hops=1, provider=provider))

            async def by_lookup() -> None:
                if hinted:
                    with trio.move_on_after(self.hedge_delay(hinted[0])):
                        await hint_over.wait()
                delay = RETRY_FIRST
                while True:
                    found = await self._get_by_lookup(cid, quiet=bool(hinted) or until is not None)
                    if found is not None:
                        win(found)
                        return
                    now = trio.current_time()
                    if until is None or now >= until or self._alone():
                        if guessed or until is not None or hint_over.is_set():
                            # No provider anywhere, and the guessed holders still silent:
                            # give up now rather than wait for their GET_CHUNK timeouts.
                            nursery.cancel_scope.cancel()
                        return      # else the hinted writer's answer decides
                    if not news.waiting:
                        news.waiting = True
                        log.info("block %s: no copy found yet; waiting up to %.1fs for one",
                                 cid.hex()[:16], until - now)
                    with trio.move_on_after(min(delay, until - now)):
                        await news.event.wait()
                    delay = min(2 * delay, RETRY_MAX)
                    if news.data is not None:
                        win(GetResult(news.data, "arrived"))
                        return
                    news.rearm()
                    local = await self._local_get(cid)
                    if local is not None:
                        win(GetResult(local, "local"))
                        return
                    # A hinted writer reachable now that was not before (it connected).
                    fresh = [c for h in hints if h not in asked
                             and (c := self._reachable(h)) is not None]
                    if fresh:
                        asked.update(c.node_id for c in fresh)
                        nursery.start_soon(by_hint, fresh, False)

            if hinted:
                nursery.start_soon(by_hint, hinted, True)
            nursery.start_soon(by_lookup)
        return got

    async def _get_by_lookup(self, block_id: bytes, *, quiet: bool = False) -> GetResult | None:
        """The block through a FIND_VALUE lookup and the providers it names (verified);
        None (with a warning, unless ``quiet``) when none could serve it."""
        dials0 = self.network.dials
        tried: set[bytes] = {self.id}
        notes = []
        queries = hops = 0
        for stop_early in (True, False):
            found = await self.find_value(block_id, stop_early=stop_early)
            lk = found.lookup
            queries += lk.queries
            hops += lk.hops
            data = found.data
            source = "inline"
            provider: Contact | None = None
            if data is None:
                provs = [p for p in found.providers if p.node_id not in tried]
                notes.append(f"lookup asked {lk.queries} ({lk.failures} failed, {lk.slow} "
                             f"slow), {len(found.providers)} providers, {len(provs)} new")
                if not provs:
                    continue
                tried.update(p.node_id for p in provs)
                data, provider = await self._fetch(block_id, self.routing.rank_providers(provs))
                source = "fetched"
                hops += 1
            if data is not None:
                return GetResult(data, source, queries, hops,
                                 self.network.dials - dials0, provider)
        if not quiet:
            log.warning("block %s: no provider could serve it (%s)", block_id.hex()[:16],
                        "; ".join(notes))
        return None

    async def _cache_later(
        self, cid: bytes, data: bytes, *, announced: float = -math.inf
    ) -> None:
        """Keep a verified block as a cached copy (a fetched one, or one spread with its
        provider record), counted as announced at ``announced`` (default: never, so the next
        republish announces it). While ``run_maintenance`` runs, the write is queued for
        ``_cache_loop``; under overload (queue full) the copy is skipped, caching being an
        optimization. Else it is written now."""
        if self._background is None:
            self._cached(await self._offload(len(data), self._cache_batch,
                                             [(cid, data, announced)]))
            return
        try:
            self._cache_send.send_nowait((cid, data, announced))
            self._cache_queued += 1
        except trio.WouldBlock:
            log.debug("cache queue full: not caching %s", cid.hex()[:16])

    async def _cache_loop(self) -> None:
        """Write queued fetched blocks when the process is otherwise idle (every other task
        blocked: ``trio.testing.wait_all_tasks_blocked``, public trio API used as an idle
        priority), so cache writes never delay the RPCs and reads in progress. Measured at
        N=64 on loopback: writing at once cost a read ~0.5 ms of median latency, a worker
        thread more (it takes the GIL from the event loop)."""
        while True:
            cid, data, announced = await self._cache_recv.receive()
            try:
                if self.cache_when_idle:
                    await trio.testing.wait_all_tasks_blocked()
                self._cached(await self._offload(len(data), self._cache_batch,
                                                 [(cid, data, announced)]))
            finally:
                self._cache_queued -= 1

    def _cache_batch(self, batch: list[tuple[bytes, bytes, float]]) -> list[tuple[bytes, int]]:
        """Store the blocks (in a worker thread); returns the ones that were new, sized."""
        new = []
        for cid, data, announced in batch:
            try:
                if self.store.put(cid, data):
                    new.append((cid, sealed_size(len(data))))
            except OSError as exc:
                log.warning("cannot cache block %s: %s", cid.hex()[:16], exc)
                continue
            self._announced[cid] = max(announced, self._announced.get(cid, -math.inf))
        return new

    def _cached(self, new: list[tuple[bytes, int]]) -> None:
        if self.on_cached is not None:
            for cid, size in new:
                self.on_cached(cid, size)

    async def _fetch(
        self, cid: bytes, providers: list[Contact]
    ) -> tuple[bytes, Contact] | tuple[None, None]:
        """Try ``providers`` in order; hedge to the next when one is slower than its expected
        time, move on at once when one fails; first verified answer wins: ``(data, provider)``,
        or ``(None, None)`` when none served it."""
        send, recv = trio.open_memory_channel[tuple[Contact, bytes | None]](len(providers))
        result: tuple[bytes, Contact] | tuple[None, None] = (None, None)

        async def fetch_one(p: Contact) -> None:
            data: bytes | None = None
            try:
                ans = await self._call(p, rpc.GET_BLOCK, {"id": cid}, self.fetch_timeout)
                data = rpc.ans_data(ans, rpc.GET_BLOCK)
            except NetworkError:
                pass
            if data is not None and await self._offload(len(data), sha256_id, data) != cid:
                self._served_bad_bytes(p, cid)
                data = None
            await send.send((p, data))

        nxt = 0
        running = 0
        hedge_at = -math.inf
        async with trio.open_nursery() as nursery:
            while True:
                if running == 0 and nxt >= len(providers):
                    break
                if running == 0 or (nxt < len(providers) and hedge_at <= trio.current_time()):
                    p = providers[nxt]
                    nxt += 1
                    running += 1
                    hedge_at = trio.current_time() + self.hedge_delay(p)
                    nursery.start_soon(fetch_one, p)
                    continue
                got = None
                with trio.move_on_at(hedge_at if nxt < len(providers) else math.inf):
                    got = await recv.receive()
                if got is None:
                    continue
                running -= 1
                if got[1] is not None:
                    result = (got[1], got[0])
                    break
                hedge_at = -math.inf        # a failure: fall back to the next one now
            nursery.cancel_scope.cancel()
        return result
