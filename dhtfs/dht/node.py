"""The Kademlia node: lookups, joining, provider announcements and their upkeep.

A ``Node`` is a ``dhtfs.dht.protocol.KademliaProtocol`` (calls with their bookkeeping, the RPC
policy, the answers to requests) that also looks things up and keeps its place in the swarm.
With the paper's sections:

- lookups: ``dhtfs.dht.lookup`` (alpha continuously in flight, adaptive per-RPC timeouts) (2.3):
  ``find_node`` (FIND_NODE), ``find_providers`` (FIND_PROVIDERS) and ``find_value``
  (FIND_PROVIDERS asking for the bytes inline: Kademlia's FIND_VALUE for values up to
  ``inline_max``, so a small value comes back from the first holder the lookup reaches; the
  lookup runs narrow, one query at a time, hedged after ``lookup_hedge``, while it closes in:
  the closest contact known is a holder whenever any known contact is). SHA-256 verification
  of every inline answer (a peer serving bad bytes is penalized, i.e. ranked last from then
  on);
- announcements: ADD_PROVIDER to the k closest names this node (and the replicas a put just
  placed, see ``rpc`` on replica hints); a small value (at most ``spread_max`` bytes) travels
  with its record, and each record holder keeps a copy (Kademlia's own placement of values at
  the k closest). For a value that small the bytes cost a record holder about what the record
  and its RPC cost it, and every record holder becomes a holder, so a read ends at the first
  of the k closest its lookup reaches (one hop). A node that receives such a copy counts it as
  announced now (paper 2.5: the k closest were all just told), so only the holders' republish
  spreads it again;
- hand-off (paper 2.5): a node that learns of a new node among its k closest neighbours hands
  it the values for which both are now among the R closest (``hand_off``), so replicas follow
  placement as nodes join;
- ``run_maintenance``: eviction pings, refresh of buckets untouched for ``refresh_interval``
  (2.3), republish of provider records for every value held here every
  ``republish_interval`` (< ``provider_ttl``, so records never lapse while we live), expiry of
  others' records, hand-offs, and the background jobs of finished calls.

What the node holds is its upper layer's (``dhtfs.blocks.node.BlockNode``: blocks): here the
value hooks of ``KademliaProtocol`` hold nothing, ``hand_off`` hands nothing and
``_held_keys`` is empty.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import trio

from dhtfs.base.errors import NetworkError
from dhtfs.base.ids import random_id_in_bucket, sha256_id
from dhtfs.dht.lookup import Answer, LookupResult, Query, iterative_lookup
from dhtfs.dht.protocol import KademliaProtocol
from dhtfs.dht.results import PutResult, ValueResult
from dhtfs.net import rpc
from dhtfs.net.network import Contact, Message, Network

log = logging.getLogger(__name__)

MAX_BACKGROUND = 64
"""Background jobs (placements after a put) at once; past that they run inline."""
TABLE_TRUST_AFTER = 8
"""Lookups in a row (for unrelated targets) whose R closest the routing table already named,
with no contact added or dropped meanwhile, before placements trust the table
(``table_closest``)."""
TABLE_CHECK_EVERY = 16
"""While the table is trusted, one placement in this many still runs its lookup, as a check."""


class Node(KademliaProtocol):
    """One Kademlia node. See the module docstring; message schemas in ``dhtfs.net.rpc``."""

    def __init__(
        self,
        network: Network,
        *,
        provider_ttl: float = 6 * 3600.0,
        republish_interval: float | None = None,
        refresh_interval: float = 3600.0,
        **protocol: Any,
    ) -> None:
        super().__init__(network, provider_ttl=provider_ttl, **protocol)
        self.republish_interval = (
            republish_interval if republish_interval is not None else provider_ttl / 2
        )
        if not 0 < self.republish_interval < provider_ttl:
            raise ValueError("republish_interval must be positive and below provider_ttl")
        self.refresh_interval = refresh_interval
        self._background_jobs = 0
        self._table_agreed = 0   # lookups in a row whose R closest the table already named
        self._table_size = -1    # the routing table's size over that streak
        self._table_uses = 0
        self.table_placements = 0  # placements that took their targets from the table

    @property
    def background_jobs(self) -> int:
        """Work going on in the maintenance nursery on behalf of finished calls (say, the
        placement and announcement after a put)."""
        return self._background_jobs

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

    def table_closest(self, target: bytes) -> list[Contact] | None:
        """The k closest to ``target`` from the routing table, when a placement may take them
        from there instead of a lookup; else None (run the lookup, then ``table_check``).

        The table stands for the network once ``TABLE_TRUST_AFTER`` lookups in a row, for
        targets spread at random over the ID space (block IDs are hashes), ended on R closest
        it already named, with no contact added or dropped since: every node such a lookup
        could have learned of, it already knew. That holds in a swarm small enough for the
        table to hold every node (the common case: a bucket holds k), and fails at once in a
        large one (the far buckets are full, a lookup finds nodes they lack), which then keeps
        looking up each block. The trust ends when the table changes size, when a lookup
        disagrees with it (one placement in ``TABLE_CHECK_EVERY`` still looks up, which is
        also how newcomers that have not called us yet are learned), and when a push to a node
        it named fails (``table_distrust``). A placement on a table that missed a node is what
        a lookup that missed one gives: repair and hand-off move the block to the nodes that
        are its R closest once they are known."""
        if self._table_agreed < TABLE_TRUST_AFTER or len(self.routing) != self._table_size:
            return None
        self._table_uses += 1
        if self._table_uses % TABLE_CHECK_EVERY == 0:
            return None
        self.table_placements += 1
        return self.routing.closest(target, self.k)

    def table_check(self, target: bytes, found: list[Contact]) -> None:
        """A lookup for ``target`` ended on ``found`` (closest first): note whether the routing
        table named the same R closest (see ``table_closest``)."""
        n = self.replicas
        named = [c.node_id for c in self.routing.closest(target, n)]
        size = len(self.routing)
        if [c.node_id for c in found[:n]] != named:
            self._table_agreed = 0
        elif size != self._table_size:
            self._table_agreed, self._table_size = 1, size
        else:
            self._table_agreed += 1

    def table_distrust(self) -> None:
        """A node the table named did not take a block: look up again (``table_closest``)."""
        self._table_agreed = 0

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
        """FIND_PROVIDERS may stop early once an answering node says it holds the block itself
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
        verified bytes from the first holder of a small block the lookup reaches (the lookup
        stops there), else the providers named on the way (ours first). With ``stop_early``
        it also stops as ``find_providers`` does (a holder of a block too large to inline, or
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

    async def refresh_buckets(self, max_age: float | None = None) -> int:
        """Look up a random ID in every bucket untouched for ``max_age`` (default
        ``refresh_interval``). Returns the number of buckets refreshed."""
        stale = self.routing.stale_buckets(self.refresh_interval if max_age is None else max_age)
        for index in stale:
            await self.lookup(random_id_in_bucket(self.id, index, self.rng))
        return len(stale)

    # -- provider announcements ----------------------------------------------------------------

    async def _announce_to(
        self,
        key: bytes,
        targets: list[Contact],
        res: PutResult | None = None,
        data: bytes | None = None,
    ) -> int:
        """ADD_PROVIDER (ourselves, and the replicas of ``res``) on each of ``targets`` but
        those replicas (they just stored the block, and a holder names itself in its
        FIND_PROVIDERS answers), with the block's bytes when it is at most ``spread_max``
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
                if c.node_id not in replicas:  # it just stored the block: it names itself
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
        """Eviction pings, bucket refresh, provider republish and expiry, hand-off of values
        to new close neighbours, and the upper layer's loops (``_maintenance_loops``); runs
        until cancelled. Background jobs (``_in_background``) run in its nursery meanwhile."""
        try:
            async with trio.open_nursery() as nursery:
                self._background = nursery
                for loop in self._maintenance_loops():
                    nursery.start_soon(loop)
        finally:
            self._background = None

    def _maintenance_loops(self) -> list[Callable[[], Awaitable[None]]]:
        """The tasks ``run_maintenance`` runs, in the order they start."""
        return [self._handoff_loop, self._ping_loop, self._refresh_loop, self._republish_loop,
                self._expire_loop]

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
        """Announce every value held here whose last announcement is older than
        ``republish_interval``. Returns how many were announced."""
        now = trio.current_time()
        ids = await self._held_keys()
        held = set(ids)
        for cid in [c for c in self._announced if c not in held]:
            del self._announced[cid]
        due = [c for c in ids if now - self._announced.get(c, -math.inf) >= self.republish_interval]
        for cid in due:
            await self.announce(cid)
        return len(due)

    async def _handoff_loop(self) -> None:
        async for newcomer in self._handoff_recv:
            try:
                await self.hand_off(newcomer)
            except Exception:
                log.exception("hand-off to %s failed", newcomer)

    async def hand_off(self, newcomer: Contact) -> int:
        """Hand ``newcomer`` the values it should now hold too; returns how many were pushed.
        A node holding nothing hands nothing."""
        return 0

    async def _held_keys(self) -> list[bytes]:
        """The keys whose values are held here (to republish)."""
        return []

    async def _expire_loop(self) -> None:
        while True:
            await trio.sleep(min(60.0, self.provider_ttl / 4))
            self.expire_providers()


def _dedupe(contacts: Iterable[Contact]) -> list[Contact]:
    seen: set[bytes] = set()
    out = []
    for c in contacts:
        if c.node_id not in seen:
            seen.add(c.node_id)
            out.append(c)
    return out
