"""The DHT node: Kademlia RPC handlers, lookups, chunk placement and latency-ranked reads.

A ``Node`` sees the world only through a ``dhtfs.net.network.Network`` (real TLS transport or
the simulator) and a chunk store (``has/get/put_verified/remove/ids``). Messages are defined in
``dhtfs.net.rpc``. Behaviour, with the paper's sections:

- every incoming request refreshes the (authenticated) caller in the routing table; every
  outgoing call feeds the peer's RTT EWMA on success and its failure streak otherwise (2.2).
  An incoming request carries no RTT sample of its own: a transport that measures one (say, a
  keepalive) hands it to ``record_rtt``;
  a full bucket pings its least-recently-seen contact (from ``run_maintenance``) before
  evicting it for the newcomer waiting in the replacement cache (2.2, 4.1);
- lookups: ``dhtfs.dht.lookup`` (alpha continuously in flight, adaptive per-RPC timeouts) (2.3);
- ``put_chunk``: store locally, push the bytes to the R XOR-closest nodes (placement by XOR
  only), then announce ourselves and the replicas that acknowledged as providers to the k
  closest (see ``rpc`` on replica hints). Success, see ``PutResult``;
- small chunks (at most ``spread_max`` bytes, default 4 KiB) travel with their provider
  records: ADD_PROVIDER to the k closest carries the bytes, and each of them keeps a cached
  copy (Kademlia's own placement of values at the k closest; the R responsible replicas are
  unchanged). For a chunk that small the bytes cost a record holder about what the record and
  its RPC cost it, and every record holder becomes a holder, so a read ends at the first of
  the k closest its lookup reaches (one hop) instead of going on to one of the R. A node that
  receives such a copy counts it as announced now (paper 2.5: the k closest were all just
  told), so only the R replicas' republish spreads it again;
- ``get_chunk`` (in ``dhtfs.blocks.fetch``, with its patience: a read that finds no copy may
  wait for one, woken by ``arrivals``): local store, else FIND_PROVIDERS asking for the bytes
  inline (``find_value``: Kademlia's FIND_VALUE for chunks up to ``inline_max``, so a small
  chunk comes back from the first holder the lookup reaches; the lookup runs narrow, one query
  at a time, hedged after ``lookup_hedge``, while it closes in: the closest contact known is a
  holder whenever any known contact is), else the providers it named, ranked by RTT EWMA, a
  hedged second request when the first is slower than expected, fallback on failure. SHA-256
  verification of every answer, inline or not (a peer serving bad bytes is penalized, i.e.
  ranked last from then on). A fetched chunk is cached here (while ``run_maintenance`` runs:
  queued, and written when the process is otherwise idle, see ``_cache_loop``;
  ``cache_when_idle=False`` writes queued chunks at once, as the simulator wants, whose virtual
  clock also runs on idleness);
- hand-off (paper 2.5): a node that learns of a new node among its k closest neighbours pushes
  it every chunk for which both are now among the R closest (``hand_off``), so replicas follow
  placement as nodes join;
- ``run_maintenance``: eviction pings, refresh of buckets untouched for ``refresh_interval``
  (2.3), republish of provider records for every chunk held here every ``republish_interval``
  (< ``provider_ttl``, so records never lapse while we live), expiry of others' records.

Offloading: hashing and store calls on buffers of ``offload_threshold`` bytes or more run in
``trio.to_thread.run_sync`` (hashlib releases the GIL). Measured here: SHA-256 of 256 KiB
~0.5 ms, of 1 MiB ~1.5 ms, a thread round trip ~0.2 ms, so the default threshold is 256 KiB.
The simulator passes ``offload_threshold=None`` (everything inline, thousands of nodes in one
process).

Provider records: ADD_PROVIDER names the caller (authenticated), plus at most a few replica
hints. A node also answers FIND_PROVIDERS with itself when it holds the chunk.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import trio
import trio.testing

from dhtfs.base.errors import BlockCorrupt, BlockMissing, NetworkError, RemoteError
from dhtfs.base.ids import distance, random_id_in_bucket, sha256_id
from dhtfs.blocks.arrivals import Arrivals
from dhtfs.blocks.fetch import BlockReads
from dhtfs.dht.lookup import Answer, LookupResult, Query, iterative_lookup
from dhtfs.dht.results import PutResult, ValueResult
from dhtfs.dht.routing import RoutingTable
from dhtfs.net import rpc
from dhtfs.net.network import Contact, Message, Network, RequestHandler
from dhtfs.store.blockstore import HEADER_BYTES, TAG_BYTES

log = logging.getLogger(__name__)

T = TypeVar("T")

SEAL_OVERHEAD = HEADER_BYTES + TAG_BYTES
"""Bytes a sealed chunk file adds to its plaintext (``dhtfs.store.blockstore``)."""
MAX_BACKGROUND = 64
"""Background jobs (placements after a put) at once; past that they run inline."""
CACHE_QUEUE = 256
"""Fetched chunks waiting to be cached; past that they are not cached."""
YOUNG_SECONDS = 5.0
"""A chunk file changed this recently that does not unseal is taken as being written."""
FULL_SECONDS = 60.0
"""A peer that refused a PUT_CHUNK for want of space (``rpc.NO_SPACE``) is no placement
target for this long: blocks go to the next closest node (``peer_full``)."""


class Node(BlockReads):
    """One Kademlia node. See the module docstring; message schemas in ``dhtfs.net.rpc``."""

    def __init__(
        self,
        network: Network,
        store: Any,
        *,
        k: int = 20,
        alpha: int = 3,
        replicas: int = 3,
        provider_ttl: float = 6 * 3600.0,
        republish_interval: float | None = None,
        refresh_interval: float = 3600.0,
        rpc_timeout: float = 5.0,
        fetch_timeout: float = 30.0,
        min_bandwidth: float = 1024 * 1024,
        soft_timeout_floor: float = 0.2,
        soft_timeout_ceiling: float = 2.0,
        soft_timeout_unknown: float = 1.0,
        hedge_floor: float = 0.005,
        offload_threshold: int | None = 256 * 1024,
        cache_fetched: bool = True,
        inline_max: int = rpc.MAX_INLINE_BYTES,
        cache_when_idle: bool = True,
        spread_max: int = 4096,
        rng: random.Random | None = None,
    ) -> None:
        self.network = network
        self.store = store
        self.k = k
        self.alpha = alpha
        self.replicas = replicas
        # peer → when it last answered or called (see ``recent_peers``)
        self.seen_at: dict[bytes, float] = {}
        # A client-only node: stores nothing for others, so its own copy of a block never
        # counts among the R (its transport advertises port 0 so peers do not route to it).
        self.client = False
        self.provider_ttl = provider_ttl
        self.republish_interval = (
            republish_interval if republish_interval is not None else provider_ttl / 2
        )
        if not 0 < self.republish_interval < provider_ttl:
            raise ValueError("republish_interval must be positive and below provider_ttl")
        self.refresh_interval = refresh_interval
        self.rpc_timeout = rpc_timeout
        self.fetch_timeout = fetch_timeout
        self.min_bandwidth = min_bandwidth
        self.soft_timeout_floor = soft_timeout_floor
        self.soft_timeout_ceiling = soft_timeout_ceiling
        self.soft_timeout_unknown = soft_timeout_unknown
        self.hedge_floor = hedge_floor
        self.offload_threshold = offload_threshold
        self.cache_fetched = cache_fetched
        self.inline_max = min(inline_max, rpc.MAX_INLINE_BYTES)
        self.cache_when_idle = cache_when_idle
        self.spread_max = min(spread_max, rpc.MAX_INLINE_BYTES)
        self.id: bytes = network.local.node_id
        self.rng = rng if rng is not None else random.Random(self.id)
        self.routing = RoutingTable(self.id, k=k, clock=trio.current_time)
        # key -> provider node id -> (contact, expiry time)
        self._providers: dict[bytes, dict[bytes, tuple[Contact, float]]] = {}
        # chunk id -> when we last announced ourselves as its provider
        self._announced: dict[bytes, float] = {}
        # peer -> until when it counts as full (it refused a PUT_CHUNK: rpc.NO_SPACE)
        self.full_until: dict[bytes, float] = {}
        self.refused_full = 0  # PUT_CHUNKs this node refused for want of space
        self._ping_send, self._ping_recv = trio.open_memory_channel[tuple[Contact, Contact]](64)
        self._pinging: set[bytes] = set()
        self._background: trio.Nursery | None = None     # set while run_maintenance runs
        self._block_path = _block_path_function(store)
        self._background_jobs = 0
        # (chunk id, bytes, when it counts as announced)
        self._cache_send, self._cache_recv = trio.open_memory_channel[
            tuple[bytes, bytes, float]
        ](CACHE_QUEUE)
        self._cache_queued = 0
        self._handoff_send, self._handoff_recv = trio.open_memory_channel[Contact](64)
        # Reads waiting for a chunk no reachable node could serve yet (``dhtfs.blocks.fetch``),
        # told when a copy or a provider record of it comes in.
        self.arrivals = Arrivals()
        # Handlers for methods beyond ``rpc.METHODS`` (the op log's), by method name; the
        # caller is refreshed in routing as for every request.
        self.services: dict[str, RequestHandler] = {}
        # Told (on the trio thread) of each block newly cached here (a verified fetch, or one
        # spread with its provider record), with its size; and of each block served from here.
        self.on_cached: Callable[[bytes, int], None] | None = None
        self.on_served: Callable[[bytes], None] | None = None
        # Told of each block pushed here by PUT_CHUNK (held for the swarm from then on).
        self.on_placed: Callable[[bytes], None] | None = None
        # Metrics (dhtfs.runtime.metrics): each outgoing RPC (method, outcome, seconds: "ok",
        # "refused", "full" (rpc.NO_SPACE), or "failed" also when cancelled) and each lookup
        # (hops, queries).
        self.on_rpc: Callable[[str, str, float], None] | None = None
        self.on_lookup: Callable[[int, int], None] | None = None

    @property
    def background_jobs(self) -> int:
        """Work going on in the maintenance nursery on behalf of finished calls (the
        placement and announcement after ``put_chunk``, fetched chunks not yet cached)."""
        return self._background_jobs + self._cache_queued

    @property
    def contact(self) -> Contact:
        return self.network.local

    # -- plumbing ------------------------------------------------------------------------------

    async def _offload(self, size: int, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` in a worker thread when ``size`` passes the offload threshold."""
        if self.offload_threshold is not None and size >= self.offload_threshold:
            return await trio.to_thread.run_sync(fn, *args)
        return fn(*args)

    def _seen(self, peer: Contact, rtt: float | None) -> None:
        if peer.node_id == self.id or peer.port == 0:
            return  # port 0: a client-only node, never a contact to route or store through
        self.seen_at[peer.node_id] = trio.current_time()
        if rtt is not None:
            self.routing.record_rtt(peer.node_id, rtt)
        if self._background is not None and peer.node_id not in self.routing:
            self._maybe_hand_off(peer)
        oldest = self.routing.update(peer)
        if oldest is not None and oldest.node_id not in self._pinging:
            try:
                self._ping_send.send_nowait((oldest, peer))
                self._pinging.add(oldest.node_id)
            except trio.WouldBlock:
                pass            # the newcomer stays in the replacement cache

    def recent_peers(self, window: float) -> int:
        """How many peers answered or called within ``window`` seconds (routed or since
        evicted); older ones are forgotten."""
        now = trio.current_time()
        for node_id in [n for n, t in self.seen_at.items() if now - t > window]:
            del self.seen_at[node_id]
        return len(self.seen_at)

    def _maybe_hand_off(self, newcomer: Contact) -> None:
        """A node we did not know: if it lands among our k closest neighbours, it may now be
        one of the R closest to chunks we hold as a replica (paper 2.5: a node that learns of
        a new node closer to some of its keys replicates them to it). ``_handoff_loop``
        checks each chunk."""
        near = self.routing.closest(self.id, self.k)
        if len(near) >= self.k and distance(newcomer.node_id, self.id) > distance(
            near[-1].node_id, self.id
        ):
            return
        try:
            self._handoff_send.send_nowait(newcomer)
        except trio.WouldBlock:
            pass            # many joins at once: the republish and later reads still help

    async def _handoff_loop(self) -> None:
        async for newcomer in self._handoff_recv:
            try:
                await self.hand_off(newcomer)
            except Exception:
                log.exception("hand-off to %s failed", newcomer)

    async def hand_off(self, newcomer: Contact) -> int:
        """Push to ``newcomer`` every chunk held here for which both it and this node are
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

    def _failed(self, peer: Contact) -> None:
        if self.routing.record_failure(peer.node_id):
            self.routing.remove(peer.node_id)

    def record_rtt(self, peer: Contact, rtt: float) -> None:
        """An RTT measured outside ``call`` (e.g. a transport keepalive) feeds the EWMA too."""
        self._seen(peer, rtt)

    async def call(self, peer: Contact, method: str, args: Message, timeout: float) -> Message:
        """One RPC to ``peer`` with the node's bookkeeping (RTT EWMA, failure streaks), for
        the services built on the node (``dhtfs.oplog.replicator``)."""
        return await self._call(peer, method, args, timeout)

    async def _call(self, peer: Contact, method: str, args: Message, timeout: float) -> Message:
        t0 = trio.current_time()
        outcome = "failed"
        try:
            answer = await self.network.call(peer, method, args, timeout=timeout)
            outcome = "ok"
        except RemoteError as exc:
            outcome = "refused"
            if rpc.error_code(exc) == rpc.NO_SPACE:
                outcome = "full"
                self._mark_full(peer)
            self._seen(peer, trio.current_time() - t0)     # alive, it just refused
            raise
        except NetworkError:
            self._failed(peer)
            raise
        finally:
            if self.on_rpc is not None:
                self.on_rpc(method, outcome, trio.current_time() - t0)
        self._seen(peer, trio.current_time() - t0)
        return answer

    def soft_timeout(self, peer: Contact) -> float:
        """How long a lookup waits on ``peer`` before freeing its slot: 4 x RTT EWMA, clamped."""
        rtt = self.routing.rtt(peer.node_id)
        if rtt is None:
            return self.soft_timeout_unknown
        return min(self.soft_timeout_ceiling, max(self.soft_timeout_floor, 4 * rtt))

    def lookup_hedge(self, peer: Contact) -> float:
        """How long a value lookup's query to ``peer`` runs alone before the next one joins
        it (``iterative_lookup``'s narrow mode): 2 x RTT EWMA + ``hedge_floor``, at most the
        soft timeout; a quarter of the soft timeout when its RTT is unknown."""
        rtt = self.routing.rtt(peer.node_id)
        soft = self.soft_timeout(peer)
        if rtt is None:
            return soft / 4
        return min(soft, 2 * rtt + self.hedge_floor)

    def transfer_timeout(self, nbytes: int) -> float:
        """Deadline for moving ``nbytes`` in one RPC: ``rpc_timeout`` plus the time at
        ``min_bandwidth``, at most ``fetch_timeout``."""
        return min(self.fetch_timeout, self.rpc_timeout + nbytes / self.min_bandwidth)

    def hedge_delay(self, peer: Contact) -> float:
        """When to hedge a GET_CHUNK to the next provider: past 3 x RTT EWMA (+20 ms)."""
        rtt = self.routing.rtt(peer.node_id)
        if rtt is None:
            return 0.5
        return min(2.0, max(0.05, 3 * rtt + 0.02))

    # -- incoming RPCs -------------------------------------------------------------------------

    async def handle(self, caller: Contact, method: str, args: Message) -> Message:
        """The ``RequestHandler``: validate, refresh the caller in routing, answer."""
        if not isinstance(args, dict):
            raise RemoteError(f"{method}: arguments must be a map")
        if method not in rpc.METHODS:
            service = self.services.get(method)
            if service is None:
                raise RemoteError(f"unknown method {method!r}")
            self._seen(caller, None)
            return await service(caller, method, args)
        self._seen(caller, None)
        if method == rpc.PING:
            return {}
        if method == rpc.FIND_NODE:
            target = rpc.req_id(args, "target", method)
            found = self.routing.closest(target, self.k, exclude=(caller.node_id,))
            return {"contacts": rpc.contacts_to_wire(found)}
        if method == rpc.FIND_PROVIDERS:
            key = rpc.req_id(args, "key", method)
            inline = rpc.req_inline(args, method)
            size = self._stored_size(key)
            if inline and size is not None and size <= inline:
                data = await self._local_get(key, limit=inline, size=size)
                if data is not None:
                    provs = self.local_providers(key, held=True)[: rpc.MAX_CONTACTS]
                    return {"providers": rpc.contacts_to_wire(provs), "contacts": [],
                            "data": data}
            found = self.routing.closest(key, self.k, exclude=(caller.node_id,))
            provs = self.local_providers(key, held=size is not None)[: rpc.MAX_CONTACTS]
            return {
                "providers": rpc.contacts_to_wire(provs),
                "contacts": rpc.contacts_to_wire(found),
            }
        if method == rpc.ADD_PROVIDER:
            key = rpc.req_id(args, "key", method)
            ttl = rpc.req_ttl(args, method)
            spread = rpc.req_spread(args, method)
            for hint in rpc.req_replicas(args, method):
                if hint.node_id != self.id and hint.port:
                    self.add_provider(key, hint, ttl)
            if caller.port:  # a client-only node serves nobody
                self.add_provider(key, caller, ttl)
            if spread is not None and len(spread) <= self.spread_max:
                if sha256_id(spread) != key:
                    raise RemoteError(f"{method}: data does not hash to its key")
                now = trio.current_time()
                if self._stored_size(key) is None:
                    await self._cache_later(key, spread, announced=now)
                elif key in self._announced:
                    self._announced[key] = now
            self.arrivals.arrived(key, spread if spread is not None
                                  and len(spread) <= self.spread_max else None)
            return {"ok": True}
        if method == rpc.PUT_BLOCK:
            cid = rpc.req_id(args, "id", method)
            data = rpc.req_data(args, method)
            try:
                if hasattr(self.store, "sync"):
                    # A replica acknowledges what survives its power loss: stored and fsynced
                    # (or, already held, its collection grace restarted) in one thread hop.
                    new = await trio.to_thread.run_sync(self._store_durably, cid, data)
                else:  # the simulator's store: memory only
                    new = await self._offload(len(data), self.store.put_verified, cid, data)
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
        if method == rpc.HOLD:
            ids = rpc.req_ids(args, "ids", method, rpc.MAX_HOLD_IDS)
            return {"held": await self._hold(ids)}
        # GET_CHUNK
        cid = rpc.req_id(args, "id", method)
        return {"data": await self._local_get(cid)}

    def _store_durably(self, cid: bytes, data: bytes) -> bool:
        """(Worker thread.) Verify, store and fsync a pushed chunk; True if it was new. One
        already held is touched instead (see ``_hold``)."""
        new = self.store.put_verified(cid, data, durable=True)
        if not new:
            self.store.touch(cid)
        return bool(new)

    async def _hold(self, ids: list[bytes]) -> int:
        """Restart the collection grace of the ``ids`` held here (``store.touch``); returns
        how many are held here."""
        touch = getattr(self.store, "touch", None)
        if touch is None:  # the simulator's store: nothing is collected
            return sum(1 for c in ids if self.store.has(c))
        return sum(await trio.to_thread.run_sync(lambda: [touch(c) for c in ids]))

    def _stored_size(self, cid: bytes) -> int | None:
        """None when ``cid`` is not stored here, else an upper bound of its plaintext size
        (one ``stat`` for the on-disk store; unknown sizes count as ``offload_threshold``)."""
        if self._block_path is not None:
            try:
                return max(0, os.stat(self._block_path(cid)).st_size - SEAL_OVERHEAD)
            except OSError:
                return None
        size_of = getattr(self.store, "size", None)
        if size_of is not None:
            return size_of(cid)
        return (self.offload_threshold or 0) if self.store.has(cid) else None

    async def _local_get(
        self, cid: bytes, *, limit: int | None = None, size: int | None = None
    ) -> bytes | None:
        """The chunk's bytes if stored here (and at most ``limit`` bytes), else None. Small
        chunks are read on the trio thread, large ones in a worker thread. ``size``: what
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
            log.warning("dropping corrupt local chunk %s", cid.hex()[:16])
            self.store.remove(cid)
            self._announced.pop(cid, None)
            return None

    def _being_written(self, cid: bytes) -> bool:
        """Whether the chunk's file changed within ``YOUNG_SECONDS``: a store creates it under
        its final name, then seals and fills it (``dhtfs.store.blockstore``), so a read
        meanwhile sees a short file that does not unseal. Such a file is skipped, never
        dropped (dropping it would lose the copy being stored)."""
        if self._block_path is None:
            return False
        try:
            return time.time() - os.stat(self._block_path(cid)).st_mtime < YOUNG_SECONDS
        except OSError:
            return False

    # -- provider records ----------------------------------------------------------------------

    def add_provider(self, key: bytes, provider: Contact, ttl: float) -> None:
        """Record ``provider`` for ``key`` until now + min(ttl, provider_ttl)."""
        recs = self._providers.setdefault(key, {})
        recs.pop(provider.node_id, None)
        recs[provider.node_id] = (provider, trio.current_time() + min(ttl, self.provider_ttl))
        while len(recs) > rpc.MAX_CONTACTS - 1:
            del recs[next(iter(recs))]          # oldest announcement goes first

    def local_providers(self, key: bytes, *, held: bool | None = None) -> list[Contact]:
        """Unexpired providers we know for ``key``, plus ourselves if we hold it (``held``:
        whether we do, if the caller just checked)."""
        now = trio.current_time()
        recs = self._providers.get(key)
        out = [c for c, exp in recs.values() if exp > now] if recs else []
        if held if held is not None else self.store.has(key):
            out.insert(0, self.contact)
        return out

    def expire_providers(self) -> int:
        """Drop expired provider records; returns how many went."""
        now = trio.current_time()
        dropped = 0
        for key in list(self._providers):
            recs = self._providers[key]
            for nid in [n for n, (_, exp) in recs.items() if exp <= now]:
                del recs[nid]
                dropped += 1
            if not recs:
                del self._providers[key]
        return dropped

    # -- lookups -------------------------------------------------------------------------------

    async def lookup(
        self,
        target: bytes,
        *,
        providers: bool = False,
        stop_early: bool = True,
        settle: int = 0,
        on_settled: Callable[[list[Contact]], None] | None = None,
    ) -> LookupResult:
        """Iterative FIND_NODE (or FIND_PROVIDERS when ``providers``) for ``target``."""
        method = rpc.FIND_PROVIDERS if providers else rpc.FIND_NODE
        argname = "key" if providers else "target"

        async def query(c: Contact, timeout: float) -> Answer:
            ans = await self._call(c, method, {argname: target}, timeout)
            contacts = rpc.ans_contacts(ans, "contacts", method)
            if not providers:
                return Answer(contacts)
            provs = rpc.ans_contacts(ans, "providers", method)
            return Answer(contacts, provs or None)

        stop = self._enough_providers(target) if providers and stop_early else None
        return await self._run_lookup(target, query, stop, settle, on_settled)

    async def _run_lookup(
        self,
        target: bytes,
        query: Query,
        stop: Callable[[Contact, Answer], bool] | None,
        settle: int = 0,
        on_settled: Callable[[list[Contact]], None] | None = None,
        hedge: Callable[[Contact], float] | None = None,
    ) -> LookupResult:
        result = await iterative_lookup(
            target,
            self.routing.closest(target, self.k, with_replacements=True),
            query,
            own_id=self.id,
            k=self.k,
            alpha=self.alpha,
            soft_timeout=self.soft_timeout,
            hard_timeout=self.rpc_timeout,
            stop=stop,
            settle=settle,
            on_settled=on_settled,
            hedge=hedge,
        )
        for c in result.abandoned:
            self._failed(c)
        self.routing.touch_target(target)
        if self.on_lookup is not None:
            self.on_lookup(result.hops, result.queries)
        return result

    def _enough_providers(self, key: bytes) -> Callable[[Contact, Answer], bool]:
        """FIND_PROVIDERS may stop early once an answering node says it holds the chunk itself
        (a provider proven alive just now), or once ``replicas`` distinct providers are
        named (records may be stale; several are unlikely to be all dead)."""
        named: set[bytes] = set()

        def stop(answerer: Contact, answer: Answer) -> bool:
            provs = answer.found or []
            named.update(p.node_id for p in provs)
            return answerer.node_id in named or len(named) >= self.replicas

        return stop

    async def find_value(self, key: bytes, *, stop_early: bool = True) -> ValueResult:
        """FIND_PROVIDERS asking for inline data (Kademlia's FIND_VALUE, see ``rpc``): the
        verified bytes from the first holder of a small chunk the lookup reaches (the lookup
        stops there), else the providers named on the way (ours first). With ``stop_early``
        it also stops as ``find_providers`` does (a holder of a chunk too large to inline, or
        R providers named); without, it runs to the k closest."""
        got: list[bytes] = []
        inline = self.inline_max

        async def query(c: Contact, timeout: float) -> Answer:
            ans = await self._call(c, rpc.FIND_PROVIDERS, {"key": key, "inline": inline},
                                   timeout)
            contacts = rpc.ans_contacts(ans, "contacts", rpc.FIND_PROVIDERS)
            provs = rpc.ans_contacts(ans, "providers", rpc.FIND_PROVIDERS)
            data = rpc.ans_inline(ans, rpc.FIND_PROVIDERS, inline)
            if data is not None:
                if sha256_id(data) == key:
                    got.append(data)
                    return Answer(contacts, provs or [c])
                self._served_bad_bytes(c, key)
                provs = [p for p in provs if p.node_id != c.node_id]
            return Answer(contacts, provs or None)

        enough = self._enough_providers(key) if stop_early else None

        def stop(answerer: Contact, answer: Answer) -> bool:
            return bool(got) or (enough is not None and enough(answerer, answer))

        result = await self._run_lookup(key, query, stop, hedge=self.lookup_hedge)
        if got:
            return ValueResult(got[0], [], result)
        provs = _dedupe([*self.local_providers(key), *(c for f in result.found for c in f)])
        return ValueResult(None, provs, result)

    def _mark_full(self, peer: Contact) -> None:
        if not self.peer_full(peer):
            log.warning("peer %s has no space for blocks: placing them on the next closest "
                        "nodes for %.0fs", peer, FULL_SECONDS)
        self.full_until[peer.node_id] = trio.current_time() + FULL_SECONDS

    def peer_full(self, peer: Contact) -> bool:
        """Whether ``peer`` refused a block for want of space within ``FULL_SECONDS``."""
        until = self.full_until.get(peer.node_id)
        if until is None:
            return False
        if until <= trio.current_time():
            del self.full_until[peer.node_id]
            return False
        return True

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

    def _served_bad_bytes(self, peer: Contact, cid: bytes) -> None:
        log.warning("peer %s served bytes that do not hash to %s", peer, cid.hex()[:16])
        self.routing.penalize(peer.node_id)

    async def find_node(self, target: bytes) -> list[Contact]:
        """The k live nodes XOR-closest to ``target`` (not including this node)."""
        return (await self.lookup(target)).closest

    async def find_providers(self, key: bytes, *, stop_early: bool = True) -> list[Contact]:
        """Known providers of ``key`` (ours and the network's), deduplicated, unranked."""
        result = await self.lookup(key, providers=True, stop_early=stop_early)
        return _dedupe([*self.local_providers(key), *(c for f in result.found for c in f)])

    # -- joining -------------------------------------------------------------------------------

    async def bootstrap(self, seeds: Iterable[Contact]) -> int:
        """Join through ``seeds``: ping them, look up our own ID, then refresh every bucket
        beyond our nearest neighbour (paper 2.3). Returns the routing table size."""
        async with trio.open_nursery() as nursery:
            for s in seeds:
                if s.node_id != self.id:
                    nursery.start_soon(self._ping_quietly, s)
        await self.lookup(self.id)
        await self.refresh_buckets(max_age=0.0)
        return len(self.routing)

    async def join_addresses(
        self, addresses: Iterable[tuple[str, int]], *, quiet: bool = False
    ) -> int:
        """Bootstrap from addresses whose node IDs are unknown (``Network.contact_at``).
        An address that fails is a warning (``quiet``: a debug line, for retries)."""
        seeds: list[Contact] = []

        async def learn(host: str, port: int) -> None:
            try:
                seeds.append(await self.network.contact_at(host, port, timeout=self.rpc_timeout))
            except NetworkError as e:
                log.log(logging.DEBUG if quiet else logging.WARNING,
                        "bootstrap address %s:%d: %s", host, port, e)

        async with trio.open_nursery() as nursery:
            for host, port in addresses:
                nursery.start_soon(learn, host, port)
        return await self.bootstrap(seeds)

    async def _ping_quietly(self, peer: Contact) -> bool:
        try:
            await self._call(peer, rpc.PING, {}, self.rpc_timeout)
            return True
        except NetworkError:
            return False

    async def refresh_buckets(self, max_age: float | None = None) -> int:
        """Look up a random ID in every bucket untouched for ``max_age`` (default
        ``refresh_interval``). Returns the number of buckets refreshed."""
        stale = self.routing.stale_buckets(self.refresh_interval if max_age is None else max_age)
        for index in stale:
            await self.lookup(random_id_in_bucket(self.id, index, self.rng))
        return len(stale)

    # -- chunks --------------------------------------------------------------------------------

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
        """Place a chunk already stored here (``data`` hashes to ``cid``: the caller vouches)
        on the R closest nodes, as ``put_chunk_detailed`` does after storing it."""
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
            result = await self.lookup(cid, settle=self.replicas, on_settled=on_settled)
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
            log.exception("placing chunk %s failed", cid.hex()[:16])
        finally:
            pushed.set()
            res.placed.set()

    async def _announce_to(
        self,
        key: bytes,
        targets: list[Contact],
        res: PutResult | None = None,
        data: bytes | None = None,
    ) -> int:
        """ADD_PROVIDER (ourselves, and the replicas of ``res``) on each of ``targets`` but
        those replicas (they just stored the chunk, and a holder names itself in its
        FIND_PROVIDERS answers), with the chunk's bytes when it is at most ``spread_max``
        (``data``, else read here); returns the acknowledgements."""
        acks = 0
        args: Message = {"key": key, "ttl": self.provider_ttl}
        replicas: set[bytes] = set()
        if res is not None and res.replicas:
            args["replicas"] = rpc.contacts_to_wire(res.replicas[: rpc.MAX_REPLICA_HINTS])
            replicas = {c.node_id for c in res.replicas}
        if data is None and self.spread_max > 0:
            size = self._stored_size(key)
            if size is not None and size <= self.spread_max:
                data = await self._local_get(key, limit=self.spread_max, size=size)
        with_data = args
        if data is not None and len(data) <= self.spread_max:
            with_data = {**args, "data": data}

        async def one(c: Contact) -> None:
            nonlocal acks
            try:
                await self._call(c, rpc.ADD_PROVIDER, with_data, self.rpc_timeout)
                acks += 1
            except NetworkError:
                pass

        async with trio.open_nursery() as nursery:
            for c in targets:
                if c.node_id not in replicas:  # it just stored the chunk: it names itself
                    nursery.start_soon(one, c)
        self._announced[key] = trio.current_time()
        if res is not None:
            res.announced = acks
        return acks

    async def announce(self, key: bytes) -> int:
        """Look up the k closest to ``key`` and announce ourselves as its provider there."""
        return await self._announce_to(key, await self.find_node(key))

    async def _in_background(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``fn(*args)`` in the maintenance nursery, so the caller need not wait for it;
        inline when maintenance is not running or ``MAX_BACKGROUND`` jobs are pending."""
        if self._background is None or self._background_jobs >= MAX_BACKGROUND:
            await fn(*args)
            return

        async def job() -> None:
            try:
                await fn(*args)
            finally:
                self._background_jobs -= 1

        self._background_jobs += 1
        self._background.start_soon(job)

    # -- maintenance ---------------------------------------------------------------------------

    async def run_maintenance(self) -> None:
        """Eviction pings, bucket refresh, provider republish and expiry, caching of fetched
        chunks, hand-off of replicas to new close neighbours; runs until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._background = nursery
                nursery.start_soon(self._cache_loop)
                nursery.start_soon(self._handoff_loop)
                nursery.start_soon(self._ping_loop)
                nursery.start_soon(self._refresh_loop)
                nursery.start_soon(self._republish_loop)
                nursery.start_soon(self._expire_loop)
        finally:
            self._background = None

    async def _ping_loop(self) -> None:
        async for oldest, _newcomer in self._ping_recv:
            try:
                if not await self._ping_quietly(oldest):
                    self.routing.remove(oldest.node_id)     # the newcomer takes its place
            finally:
                self._pinging.discard(oldest.node_id)

    def _jitter(self, period: float) -> float:
        return period * (0.75 + 0.5 * self.rng.random())

    async def _refresh_loop(self) -> None:
        while True:
            await trio.sleep(self._jitter(self.refresh_interval / 4))
            await self.refresh_buckets()

    async def _republish_loop(self) -> None:
        while True:
            await trio.sleep(self._jitter(self.republish_interval / 4))
            await self.republish()

    async def republish(self) -> int:
        """Announce every chunk held here whose last announcement is older than
        ``republish_interval``. Returns how many were announced."""
        now = trio.current_time()
        ids = await self._offload(self.offload_threshold or 0, lambda: list(self.store.ids()))
        held = set(ids)
        for cid in [c for c in self._announced if c not in held]:
            del self._announced[cid]
        due = [c for c in ids if now - self._announced.get(c, -math.inf) >= self.republish_interval]
        for cid in due:
            await self.announce(cid)
        return len(due)

    async def _expire_loop(self) -> None:
        while True:
            await trio.sleep(min(60.0, self.provider_ttl / 4))
            self.expire_providers()


def _block_path_function(store: Any) -> Callable[[bytes], str] | None:
    """How to name a chunk's file for ``stat``: ``store.path_of`` as a string, built without
    ``pathlib`` (a third of a FIND_PROVIDERS answer's cost) when a probe shows the store lays
    chunks out as ``<root>/ab/cdef…``; None for stores without files (the simulator's)."""
    path_of = getattr(store, "path_of", None)
    if path_of is None:
        return None

    def slow(cid: bytes) -> str:
        return os.fspath(path_of(cid))

    root = getattr(store, "root", None)
    if root is None:
        return slow
    prefix = os.fspath(root)

    def fast(cid: bytes) -> str:
        h = cid.hex()
        return f"{prefix}/{h[:2]}/{h[2:]}"

    probe = bytes(range(32))
    return fast if fast(probe) == slow(probe) else slow


def _dedupe(contacts: Iterable[Contact]) -> list[Contact]:
    seen: set[bytes] = set()
    out = []
    for c in contacts:
        if c.node_id not in seen:
            seen.add(c.node_id)
            out.append(c)
    return out
