"""An in-memory ``Network`` for many nodes in one process, under trio's (virtual) clock.

``SimWorld`` is the shared medium; ``SimNetwork`` is one node's endpoint implementing the
``dhtfs.net.network.Network`` protocol. Run it under
``trio.testing.MockClock(autojump_threshold=0)`` so simulated time jumps whenever every task
sleeps: a timeout costs simulated seconds, not real ones.

Model of one call ``a -> b``:
- round trip = two one-way delays, each the link's base latency (fixed per unordered pair,
  uniform in ``latency ± spread``, from a hash of the two IDs and the world seed) plus a
  per-message jitter uniform in ``± jitter``; plus ``extra_delay[b]`` (a slow node). The caller
  sleeps the whole round trip, then the far side's handler runs and its answer is returned;
- the request and the answer are each lost with probability ``loss``; a lost message, a dead
  peer (unless ``dead_refuses``) and a partitioned link are *silent*: the caller waits until its
  deadline and gets ``CallTimeout``. With ``dead_refuses`` a dead peer answers
  ``PeerUnreachable`` after one round trip (like a TCP RST);
- the far side's handler runs in the caller's task (so a caller's timeout also cancels it);
  ``RemoteError`` passes through; any other exception becomes ``RemoteError``;
- the caller contact handed to the handler is the caller's real one (authentication is exact).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import trio

from dhtfs.base.errors import CallTimeout, PeerUnreachable, RemoteError
from dhtfs.net.network import Contact, Message, RequestHandler

SIM_HOST = "sim"


@dataclass(slots=True)
class SimStats:
    calls: int = 0
    lost: int = 0
    to_dead: int = 0
    blocked: int = 0


class SimWorld:
    """Every endpoint, the link model, partitions and liveness."""

    def __init__(
        self,
        *,
        seed: int = 0,
        latency: float = 0.050,
        spread: float = 0.020,
        jitter: float = 0.002,
        loss: float = 0.0,
        dead_refuses: bool = False,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.latency = latency
        self.spread = spread
        self.jitter = jitter
        self.loss = loss
        self.dead_refuses = dead_refuses
        self.extra_delay: dict[bytes, float] = {}
        self.stats = SimStats()
        self._endpoints: dict[bytes, SimNetwork] = {}       # alive only
        self._by_port: dict[int, bytes] = {}
        self._group: dict[bytes, int] = {}                  # partition group; absent = 0
        self._next_port = 1
        self._salt = seed.to_bytes(8, "big", signed=True)

    # -- membership ----------------------------------------------------------------------------

    def endpoint(self, node_id: bytes) -> SimNetwork:
        """A new endpoint for ``node_id``; it is alive once ``attach``ed to a handler."""
        port = self._next_port
        self._next_port += 1
        return SimNetwork(self, Contact(node_id, SIM_HOST, port))

    def attach(self, ep: SimNetwork, handler: RequestHandler) -> None:
        """Plug ``ep`` into the world, answering with ``handler`` (the node built on ``ep``):
        a registration, as a switch port is, undone by ``kill``. The world, not the node,
        owns whether an endpoint is alive, so the handler is the world's to set."""
        ep.handler = handler
        self._endpoints[ep.local.node_id] = ep
        self._by_port[ep.local.port] = ep.local.node_id

    def kill(self, node_id: bytes) -> None:
        """The node vanishes: calls to it go unanswered from now on."""
        ep = self._endpoints.pop(node_id, None)
        if ep is not None:
            self._by_port.pop(ep.local.port, None)
            ep.handler = None

    def is_alive(self, node_id: bytes) -> bool:
        return node_id in self._endpoints

    # -- links ---------------------------------------------------------------------------------

    def partition(self, groups: list[set[bytes]]) -> None:
        """Split the network: nodes in different groups cannot reach each other. Nodes not
        named are in group 0 together with ``groups[0]``."""
        self._group = {nid: i for i, g in enumerate(groups) for nid in g}

    def heal(self) -> None:
        self._group = {}

    def reachable(self, a: bytes, b: bytes) -> bool:
        return self._group.get(a, 0) == self._group.get(b, 0)

    def link_latency(self, a: bytes, b: bytes) -> float:
        """The fixed one-way base latency of the link between ``a`` and ``b``."""
        lo, hi = (a, b) if a < b else (b, a)
        h = hashlib.blake2b(lo + hi, digest_size=8, key=self._salt).digest()
        u = int.from_bytes(h, "big") / 2**64
        return max(0.0, self.latency + self.spread * (2 * u - 1))

    def delay(self, a: bytes, b: bytes) -> float:
        j = self.jitter * (2 * self.rng.random() - 1) if self.jitter else 0.0
        return max(0.0, self.link_latency(a, b) + j)

    def dropped(self) -> bool:
        if self.loss and self.rng.random() < self.loss:
            self.stats.lost += 1
            return True
        return False


class SimNetwork:
    """One node's view of the simulated network (implements ``Network`` and
    ``dhtfs.blocks.storage.PeerNetwork``: it has no connections, so none are open and none
    are dialed)."""

    def __init__(self, world: SimWorld, local: Contact) -> None:
        self.world = world
        self._local = local
        self.handler: RequestHandler | None = None
        self.dials = 0

    def connected_peers(self) -> list[Contact]:
        return []

    def connected_contact(self, node_id: bytes) -> Contact | None:
        return None

    @property
    def local(self) -> Contact:
        return self._local

    async def call(self, peer: Contact, method: str, args: Message, *, timeout: float) -> Message:
        w = self.world
        w.stats.calls += 1
        me = self._local.node_id
        with trio.move_on_after(timeout):
            # One sleep for the whole round trip (half the scheduler work of two); the far
            # side's handler then runs at answer time, which no test or figure depends on.
            rtt = w.delay(me, peer.node_id) + w.delay(me, peer.node_id)
            await trio.sleep(rtt + w.extra_delay.get(peer.node_id, 0.0))
            target = w._endpoints.get(peer.node_id)
            if target is None or target._local.port != peer.port:
                w.stats.to_dead += 1
                if w.dead_refuses:
                    raise PeerUnreachable(f"{peer}: connection refused")
                await trio.sleep_forever()
            if not w.reachable(me, peer.node_id):
                w.stats.blocked += 1
                await trio.sleep_forever()
            if w.dropped() or w.dropped():          # request lost, or answer lost
                await trio.sleep_forever()
            handler = target.handler
            assert handler is not None
            try:
                return await handler(self._local, method, args)
            except RemoteError:
                raise
            except Exception as e:
                raise RemoteError(f"{method} failed on {peer}: {e!r}") from None
        raise CallTimeout(f"{method} to {peer}: no answer within {timeout:g}s")

    async def contact_at(self, host: str, port: int, *, timeout: float) -> Contact:
        w = self.world
        nid = w._by_port.get(port) if host == SIM_HOST else None
        if nid is None:
            with trio.move_on_after(timeout):
                await trio.sleep_forever()
            raise CallTimeout(f"{host}:{port}: no answer within {timeout:g}s")
        peer = w._endpoints[nid].local
        await self.call(peer, "PING", {}, timeout=timeout)
        return peer
