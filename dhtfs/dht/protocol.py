"""One node's side of the Kademlia protocol: its calls to peers and its answers to them.

``KademliaProtocol`` is the base of ``dhtfs.dht.node.Node``. It sees the world only through a
``dhtfs.net.network.Network`` (real TLS transport or the simulator); messages are defined in
``dhtfs.net.rpc``. With the paper's sections:

- every incoming request refreshes the (authenticated) caller in the routing table; every
  outgoing call feeds the peer's RTT EWMA on success and its failure streak otherwise (2.2).
  An incoming request carries no RTT sample of its own: a transport that measures one (say, a
  keepalive) hands it to ``record_rtt``;
- a full bucket pings its least-recently-seen contact (``_ping_loop``, run by the node's
  maintenance) before evicting it for the newcomer waiting in the replacement cache (2.2, 4.1);
- the RPC policy: a lookup's soft timeout and hedge from the RTT EWMA (``soft_timeout``,
  ``lookup_hedge``), a transfer's deadline from its size (``transfer_timeout``), a read's hedge
  to the next provider (``hedge_delay``), and the peers that refused a store for want of space
  (``peer_full``: no placement target for ``FULL_SECONDS``);
- incoming requests (``handle``): PING, FIND_NODE, FIND_PROVIDERS and ADD_PROVIDER here (the
  provider records are ``dhtfs.dht.providers``); any other method goes to the handler an upper
  layer registered in ``services`` (the block layer's PUT_CHUNK, GET_CHUNK and HOLD, the op
  log's methods, the revocation list's), the caller refreshed in routing as for every request.

What this node holds is the upper layer's: the node asks it through the value hooks
(``_stored_size``, ``_local_get``, ``_provider_added``), which here hold nothing; the block
layer (``dhtfs.blocks.node.BlockNode``) overrides them with its block store. Small values
(at most ``spread_max`` bytes) travel with their provider records (ADD_PROVIDER with data) and
come back inline in FIND_PROVIDERS answers (Kademlia's FIND_VALUE, up to the asker's
``inline``); see ``dhtfs.dht.node``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import trio

from dhtfs.base.errors import NetworkError, RemoteError
from dhtfs.base.ids import distance, sha256_id
from dhtfs.dht.providers import ProviderRecords
from dhtfs.dht.routing import RoutingTable
from dhtfs.net import rpc
from dhtfs.net.network import Contact, Message, Network, RequestHandler

log = logging.getLogger(__name__)

FULL_SECONDS = 60.0
"""A peer that refused a PUT_CHUNK for want of space (``rpc.NO_SPACE``) is no placement
target for this long: blocks go to the next closest node (``peer_full``)."""
KADEMLIA_METHODS = frozenset({rpc.PING, rpc.FIND_NODE, rpc.FIND_PROVIDERS, rpc.ADD_PROVIDER})
"""The requests answered here; any other goes to the handler registered in ``services``."""


class KademliaProtocol:
    """Calls to peers with their bookkeeping, the RPC policy, and the answers to requests."""

    def __init__(
        self,
        network: Network,
        *,
        k: int = 20,
        alpha: int = 3,
        replicas: int = 3,
        provider_ttl: float = 6 * 3600.0,
        rpc_timeout: float = 5.0,
        fetch_timeout: float = 30.0,
        min_bandwidth: float = 1024 * 1024,
        soft_timeout_floor: float = 0.2,
        soft_timeout_ceiling: float = 2.0,
        soft_timeout_unknown: float = 1.0,
        hedge_floor: float = 0.005,
        inline_max: int = rpc.MAX_INLINE_BYTES,
        spread_max: int = 4096,
        rng: random.Random | None = None,
        on_rpc: Callable[[str, str, float], None] | None = None,
        on_lookup: Callable[[int, int], None] | None = None,
    ) -> None:
        self.network = network
        self.k = k
        self.alpha = alpha
        self.replicas = replicas
        # peer → when it last answered or called (see ``recent_peers``)
        self.seen_at: dict[bytes, float] = {}
        # Peers shut out of the swarm (their certificate revoked: dhtfs.dht.revocations): never
        # taken into routing again, even by a request or an answer already under way when the
        # list arrived.
        self.shut_out: set[bytes] = set()
        self.provider_ttl = provider_ttl
        self.rpc_timeout = rpc_timeout
        self.fetch_timeout = fetch_timeout
        self.min_bandwidth = min_bandwidth
        self.soft_timeout_floor = soft_timeout_floor
        self.soft_timeout_ceiling = soft_timeout_ceiling
        self.soft_timeout_unknown = soft_timeout_unknown
        self.hedge_floor = hedge_floor
        self.inline_max = min(inline_max, rpc.MAX_INLINE_BYTES)
        self.spread_max = min(spread_max, rpc.MAX_INLINE_BYTES)
        self.id: bytes = network.local.node_id
        self.rng = rng if rng is not None else random.Random(self.id)
        self.routing = RoutingTable(self.id, k=k, clock=trio.current_time)
        self.providers = ProviderRecords(provider_ttl)
        # key -> when we last announced ourselves as its provider
        self._announced: dict[bytes, float] = {}
        # peer -> until when it counts as full (it refused a PUT_CHUNK: rpc.NO_SPACE)
        self.full_until: dict[bytes, float] = {}
        self._ping_send, self._ping_recv = trio.open_memory_channel[tuple[Contact, Contact]](64)
        self._pinging: set[bytes] = set()
        self._background: trio.Nursery | None = None     # set while run_maintenance runs
        self._handoff_send, self._handoff_recv = trio.open_memory_channel[Contact](64)
        # Handlers for methods beyond Kademlia's own (the block layer's, the op log's), by
        # method name; the caller is refreshed in routing as for every request.
        self.services: dict[str, RequestHandler] = {}
        # Metrics (dhtfs.runtime.metrics): each outgoing RPC (method, outcome, seconds: "ok",
        # "refused", "full" (rpc.NO_SPACE), or "failed" also when cancelled) and each lookup
        # (hops, queries).
        self.on_rpc = on_rpc
        self.on_lookup = on_lookup

    @property
    def contact(self) -> Contact:
        return self.network.local

    def shut_out_peer(self, node_id: bytes) -> None:
        """Forget ``node_id`` for good (its certificate is revoked): out of routing now, and
        never taken in again while this node runs (``shut_out``)."""
        self.shut_out.add(node_id)
        self.routing.remove(node_id)
        self.seen_at.pop(node_id, None)

    # -- plumbing ------------------------------------------------------------------------------

    def _seen(self, peer: Contact, rtt: float | None) -> None:
        if peer.node_id == self.id or peer.port == 0 or peer.node_id in self.shut_out:
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
        one of the R closest to blocks we hold as a replica (paper 2.5: a node that learns of
        a new node closer to some of its keys replicates them to it). ``_handoff_loop``
        checks each block."""
        near = self.routing.closest(self.id, self.k)
        if len(near) >= self.k and distance(newcomer.node_id, self.id) > distance(
            near[-1].node_id, self.id
        ):
            return
        try:
            self._handoff_send.send_nowait(newcomer)
        except trio.WouldBlock:
            pass            # many joins at once: the republish and later reads still help

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

    async def _ping_quietly(self, peer: Contact) -> bool:
        try:
            await self._call(peer, rpc.PING, {}, self.rpc_timeout)
            return True
        except NetworkError:
            return False

    async def _ping_loop(self) -> None:
        async for oldest, _newcomer in self._ping_recv:
            try:
                if not await self._ping_quietly(oldest):
                    self.routing.remove(oldest.node_id)     # the newcomer takes its place
            finally:
                self._pinging.discard(oldest.node_id)

    # -- policy --------------------------------------------------------------------------------

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

    def _served_bad_bytes(self, peer: Contact, cid: bytes) -> None:
        log.warning("peer %s served bytes that do not hash to %s", peer, cid.hex()[:16])
        self.routing.penalize(peer.node_id)

    # -- incoming RPCs -------------------------------------------------------------------------

    async def handle(self, caller: Contact, method: str, args: Message) -> Message:
        """The ``RequestHandler``: validate, refresh the caller in routing, answer."""
        if not isinstance(args, dict):
            raise RemoteError(f"{method}: arguments must be a map")
        if method not in KADEMLIA_METHODS:
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
        # ADD_PROVIDER
        key = rpc.req_id(args, "key", method)
        ttl = rpc.req_ttl(args, method)
        spread = rpc.req_spread(args, method)
        for hint in rpc.req_replicas(args, method):
            if hint.node_id != self.id and hint.port:
                self.add_provider(key, hint, ttl)
        if caller.port:  # a client-only node serves nobody
            self.add_provider(key, caller, ttl)
        if spread is not None and len(spread) > self.spread_max:
            spread = None
        if spread is not None and sha256_id(spread) != key:
            raise RemoteError(f"{method}: data does not hash to its key")
        await self._provider_added(key, spread)
        return {"ok": True}

    # -- provider records ----------------------------------------------------------------------

    def add_provider(self, key: bytes, provider: Contact, ttl: float) -> None:
        """Record ``provider`` for ``key`` until now + min(ttl, provider_ttl)."""
        self.providers.add(key, provider, ttl)

    def local_providers(self, key: bytes, *, held: bool | None = None) -> list[Contact]:
        """Unexpired providers we know for ``key``, plus ourselves if we hold it (``held``:
        whether we do, if the caller just checked)."""
        out = self.providers.of(key)
        if held if held is not None else self._holds(key):
            out.insert(0, self.contact)
        return out

    def expire_providers(self) -> int:
        """Drop expired provider records; returns how many went."""
        return self.providers.expire()

    # -- what this node holds (the upper layer's: see the module docstring) ---------------------

    def _holds(self, key: bytes) -> bool:
        """Whether the value of ``key`` is held here."""
        return False

    def _stored_size(self, key: bytes) -> int | None:
        """None when ``key``'s value is not held here, else an upper bound of its size."""
        return None

    async def _local_get(
        self, key: bytes, *, limit: int | None = None, size: int | None = None
    ) -> bytes | None:
        """The value of ``key`` if held here (and at most ``limit`` bytes), else None."""
        return None

    async def _provider_added(self, key: bytes, spread: bytes | None) -> None:
        """A provider record of ``key`` came in (ADD_PROVIDER), with the value's verified
        bytes when they were spread with it."""

