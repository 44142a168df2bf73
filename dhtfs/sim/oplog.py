"""The replicated op log (``dhtfs.oplog.replicator``) on a simulated swarm: wiring, writers, churn,
and measurement of how each op spreads.

``OpLogSim`` attaches a real ``LogReplicator`` (with a ``TimedLogStore`` and the simulator's
``KeyedSigner``) to every node of a ``dhtfs.sim.swarm.Swarm``, and to every node it spawns
later. ``make_op`` makes an op at a node the way a writer does (``append_own`` + ``notify``);
each store reports to one ``Recorder`` the virtual time at which it accepted each entry.
``simulate`` runs a whole scenario (build, warm up, ops, optional churn, wait for delivery)
and returns an ``OpLogResult``.

Invariants:
- every replicator ever attached stays in ``OpLogSim.replicators`` (a killed node's messages
  still count); ``OpLogSim.alive`` holds exactly the replicators of live nodes (those in
  ``Swarm.nodes``), and killing a node cancels its replicator's tasks with it;
- ``Recorder.ops[(origin, seq)].arrivals`` maps a node ID to the virtual time that node first
  held the entry (its origin: when the op was made); a node accepts an entry at most once
  (``MemoryLogStore.accept`` refuses a seq that does not extend the run), so it never moves;
- every random choice comes from a seeded ``random.Random`` (world, swarm, replicators,
  writers, churn), and ``simulate`` seeds trio's scheduling order too (``seed_scheduler``):
  without churn a run repeats exactly. With churn it does not quite: calls to dead nodes
  time out, and trio orders cancel scopes whose deadlines are equal by object address
  (``id``), so figures vary a little from run to run (the properties tested do not).

Definitions used by the figures (``OpLogResult``):
- *reference set* of an op: the nodes alive when it was made that are still alive at the end
  (its origin included, at time 0). ``t99``/``t100``: virtual seconds from the op's making
  until 99% / all of its reference set held it (infinite if never);
- *messages*: LOG_PUSH + LOG_PULL calls sent by all replicators (``ReplicatorStats.pushes_sent
  + pulls_sent``; pushes include anti-entropy push-backs and calls to dead peers) between the
  first op and the moment every live node held every op; divided by ops x nodes;
- *converged*: every live node's ``store.vector()`` is identical and equals the vector of all
  ops made (so nodes that joined during churn caught up too).
"""

from __future__ import annotations

import hashlib
import math
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import trio

from dhtfs.dht.node import Node
from dhtfs.oplog import replicator as oplog
from dhtfs.oplog.logstore import MemoryLogStore, TrimmingStore
from dhtfs.oplog.replicator import KeyedSigner, LogEntry, LogReplicator
from dhtfs.sim.network import SimWorld
from dhtfs.sim.swarm import Swarm

try:  # trio's scheduler RNG: private, and the only handle on its scheduling order
    from trio._core._run import _r as TRIO_SCHEDULER_RNG
except ImportError:  # pragma: no cover - gone in this trio: runs are not repeatable
    TRIO_SCHEDULER_RNG = None

OpKey = tuple[bytes, int]


@dataclass(slots=True)
class OpRecord:
    """One op: who made it and when, who was alive then, and when each node got it."""

    origin: bytes
    seq: int
    made_at: float
    alive_at_make: frozenset[bytes]
    arrivals: dict[bytes, float] = field(default_factory=dict)

    def reached(self, q: float, reference: Sequence[bytes]) -> float:
        """Seconds from making until a fraction ``q`` of ``reference`` held the op (inf if
        it never did; 0 for an empty reference)."""
        if not reference:
            return 0.0
        times = sorted(self.arrivals.get(n, math.inf) for n in reference)
        need = max(1, math.ceil(q * len(times) - 1e-9))
        return times[need - 1] - self.made_at


class Recorder:
    """Arrival times of every op made through ``OpLogSim.make_op`` (see the invariants)."""

    def __init__(self) -> None:
        self.ops: dict[OpKey, OpRecord] = {}

    def made(self, origin: bytes, seq: int, alive: frozenset[bytes]) -> OpRecord:
        now = trio.current_time()
        rec = OpRecord(origin, seq, now, alive, {origin: now})
        self.ops[(origin, seq)] = rec
        return rec

    def accepted(self, node_id: bytes, entry: LogEntry) -> None:
        rec = self.ops.get((entry.origin, entry.seq))
        if rec is not None and node_id not in rec.arrivals:
            rec.arrivals[node_id] = trio.current_time()


class TimedLogStore(MemoryLogStore, TrimmingStore):
    """A ``MemoryLogStore`` that tells a ``Recorder`` when each entry was accepted, and keeps
    what folding found stable (a ``TrimmingStore`` that drops nothing: see ``trim``)."""

    def __init__(self, own_id: bytes, recorder: Recorder | None = None) -> None:
        super().__init__(own_id)
        self.recorder = recorder
        self.trimmed: dict[bytes, int] = {}  # see ``trim``

    def accept(self, entries: Sequence[LogEntry]) -> None:
        for e in entries:
            super().accept((e,))      # raises InvalidEntry for the first refused, as the base
            if self.recorder is not None:
                self.recorder.accepted(self.own_id, e)

    def entries(self, origin: bytes) -> list[LogEntry]:
        """Every entry of ``origin`` held, in order."""
        return self.entries_after(origin, 0, 1 << 62)

    def folded(self) -> dict[bytes, int]:
        """Nothing: every entry is still served (see ``trim``)."""
        return {}

    def trim(self, stable: dict[bytes, int]) -> int:
        """What folding found stable (``dhtfs.oplog.folding``: every member holds it): kept in
        ``trimmed`` (origin → seq), as a headless node's store would drop it; the entries
        stay (the simulator serves them on). Returns how many became stable now."""
        gained = 0
        for origin, seq in stable.items():
            seq = min(seq, self.vector().get(origin, 0))
            if seq > self.trimmed.get(origin, 0):
                gained += seq - self.trimmed.get(origin, 0)
                self.trimmed[origin] = seq
        return gained


def seed_scheduler(seed: int) -> None:
    """Make trio's task scheduling order a function of ``seed`` (trio otherwise reverses each
    batch of runnable tasks at random, from an unseeded RNG). Uses a private trio attribute
    (``TRIO_SCHEDULER_RNG``); a no-op if it is gone."""
    if isinstance(TRIO_SCHEDULER_RNG, random.Random):
        TRIO_SCHEDULER_RNG.seed(seed)


class OpLogSim:
    """Replicators on every node of ``swarm`` (see the module invariants).

    ``fanout``/``sync_interval``/``rpc_timeout`` are passed to every ``LogReplicator``.
    ``protect`` (simulated seconds): ``kill_random`` spares a node that made an op that
    recently, so that an op is never lost with its origin before its first push (that would
    measure durability, not dissemination).
    """

    def __init__(
        self,
        swarm: Swarm,
        *,
        fanout: int = 6,
        sync_interval: float = 1.0,
        rpc_timeout: float = 10.0,
        seed: int = 0,
        body_size: int = 64,
        protect: float = 2.0,
    ) -> None:
        self.swarm = swarm
        self.fanout = fanout
        self.sync_interval = sync_interval
        self.rpc_timeout = rpc_timeout
        self.rng = random.Random(seed)
        self.body_size = body_size
        self.protect = protect
        self.recorder = Recorder()
        self._salt = self.rng.randbytes(16)
        self.replicators: list[LogReplicator] = []
        self.alive: dict[bytes, LogReplicator] = {}
        self.spawned: dict[bytes, float] = {}       # node ID → when attached
        self._scopes: dict[bytes, trio.CancelScope] = {}
        self._last_op: dict[bytes, float] = {}

    # -- wiring --------------------------------------------------------------------------------

    def secret_of(self, origin: bytes) -> bytes:
        """The world-wide per-origin signing secret (``KeyedSigner``): a keyed hash of the
        origin, so it does not depend on the order in which origins are first seen."""
        return hashlib.blake2b(origin, digest_size=32, key=self._salt).digest()

    async def attach(self, node: Node, *, presync: bool = False) -> LogReplicator:
        """Give ``node`` a store and a replicator, register its handlers, start it.

        ``presync``: an oracle shortcut (like ``Swarm.seed_tables``), for an empty log only:
        the replicator starts as if it had run anti-entropy with every contact in its table
        already, as in a swarm that has been up for a while. That skips the first round (at
        1,000 nodes, every node pulling from each of its ~150 contacts at once), which only
        costs wall time. Fills ``AntiEntropy.synced``.
        """
        store = TimedLogStore(node.id, self.recorder)
        signer = KeyedSigner(node.id, self.secret_of)
        rep = LogReplicator(
            node, store, signer, fanout=self.fanout, sync_interval=self.sync_interval,
            rpc_timeout=self.rpc_timeout, rng=random.Random(self.rng.getrandbits(64)),
        )
        for m in oplog.METHODS:
            node.services[m] = rep.handle
        if presync:
            assert not self.recorder.ops, "presync is for an empty log"
            rep.anti_entropy.synced.update(c.node_id for c in rep.peers())
        self.replicators.append(rep)
        self.alive[node.id] = rep
        self.spawned[node.id] = trio.current_time()
        self._scopes[node.id] = await self.swarm.nursery.start(self._run, rep)
        return rep

    async def _run(self, rep: LogReplicator, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            await rep.run()

    async def attach_all(self, *, presync: bool = False) -> None:
        """``attach`` every live node that has no replicator yet."""
        for node in list(self.swarm.nodes.values()):
            if node.id not in self.alive:
                await self.attach(node, presync=presync)

    async def spawn(self, *, join: bool = True) -> Node:
        """A new node with a replicator (attached first, so it answers LOG_* at once), joined
        through the real protocol if ``join``."""
        node = await self.swarm.spawn()
        await self.attach(node)
        if join and len(self.swarm.nodes) > 1:
            await self.swarm.join(node)
        return node

    def kill(self, node_id: bytes) -> None:
        """The node dies silently, its replicator with it."""
        self.swarm.kill(node_id)
        self.alive.pop(node_id, None)
        scope = self._scopes.pop(node_id, None)
        if scope is not None:
            scope.cancel()

    def kill_random(self) -> bytes | None:
        """Kill a random live node that made no op in the last ``protect`` seconds."""
        now = trio.current_time()
        pool = [n for n in self.swarm.nodes if now - self._last_op.get(n, -math.inf)
                >= self.protect]
        if not pool:
            return None
        victim = self.rng.choice(pool)
        self.kill(victim)
        return victim

    # -- writers -------------------------------------------------------------------------------

    def make_op(self, node_id: bytes | None = None) -> OpRecord:
        """A writer at ``node_id`` (default: a random live node) makes one op."""
        if node_id is None:
            node_id = self.rng.choice(list(self.alive))
        rep = self.alive[node_id]
        store = rep.store
        assert isinstance(store, TimedLogStore)
        n = len(self.recorder.ops)
        body = f"op{n}:".encode() + self.rng.randbytes(max(0, self.body_size - 8))
        entry = store.append_own(body)
        self._last_op[node_id] = trio.current_time()
        rec = self.recorder.made(node_id, entry.seq, frozenset(self.alive))
        rep.notify()
        return rec

    # -- observation ---------------------------------------------------------------------------

    def expected_vector(self) -> dict[bytes, int]:
        """origin → highest seq of every op made."""
        out: dict[bytes, int] = {}
        for origin, seq in self.recorder.ops:
            out[origin] = max(out.get(origin, 0), seq)
        return out

    def delivered(self) -> bool:
        """Every live node holds every op made."""
        alive = list(self.alive)
        # Newest first: while ops spread, the check fails on the first one it looks at.
        return all(all(n in rec.arrivals for n in alive)
                   for rec in reversed(self.recorder.ops.values()))

    def converged(self) -> bool:
        """Every live node's vector is identical and holds every op made."""
        want = self.expected_vector()
        return all(rep.store.vector() == want for rep in self.alive.values())

    def messages(self) -> tuple[int, int]:
        """(LOG_PUSH, LOG_PULL) calls sent by every replicator ever attached."""
        return (sum(r.stats.pushes_sent for r in self.replicators),
                sum(r.stats.pulls_sent for r in self.replicators))

    async def wait_delivered(self, timeout: float, poll: float = 0.1) -> bool:
        """Sleep until ``delivered()`` (True), or ``timeout`` simulated seconds (False)."""
        with trio.move_on_after(timeout):
            while not self.delivered():
                await trio.sleep(poll)
            return True
        return False


# -- scenarios ---------------------------------------------------------------------------------


@dataclass(slots=True)
class OpLogResult:
    """What one ``simulate`` run measured (see the module docstring for definitions)."""

    nodes: int
    ops: int
    churn: float
    fanout: int
    sync_interval: float
    converged: bool
    delivered: bool
    msgs_per_op_per_node: float
    pushes_per_op_per_node: float
    pulls_per_op_per_node: float
    t99_median: float
    t99_p95: float
    t100_median: float
    t100_p95: float
    window: float                   # simulated seconds from the first op to full delivery
    replaced: int
    newcomers_alive: int
    alive_end: int
    dht_calls: int                  # every simulated RPC in the window (DHT ones included)
    duplicates_per_op_per_node: float
    rejected: int
    wall: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pct(xs: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in [0, 1]); inf for an empty list."""
    if not xs:
        return math.inf
    s = sorted(xs)
    return s[max(0, math.ceil(q * len(s)) - 1)]


async def simulate(
    nodes: int,
    ops: int,
    *,
    churn: float = 0.0,
    seed: int = 1,
    fanout: int = 6,
    sync_interval: float = 1.0,
    rpc_timeout: float = 10.0,
    op_interval: float = 0.5,
    churn_seconds: float = 60.0,
    warmup: float = 5.0,
    settle_timeout: float = 300.0,
    maintenance: bool | None = None,
    presync: bool = True,
    world: SimWorld | None = None,
    progress: Callable[[str], None] | None = None,
) -> OpLogResult:
    """One scenario, under a virtual clock (run it in ``trio.run(..., clock=MockClock(
    autojump_threshold=0))`` or a test taking ``autojump_clock``):

    1. ``nodes`` nodes, routing tables oracle-seeded (``Swarm.seed_tables``), a replicator on
       each, marked as synced with its contacts if ``presync`` (``OpLogSim.attach``; else
       each node first syncs once with every contact); then ``warmup`` simulated seconds;
    2. ``ops`` ops, one every ``op_interval`` at a random live node; with ``churn`` > 0, a
       fraction ``churn`` of ``nodes`` is replaced per simulated minute (a random live node
       dies silently; a new node joins through 3 random live nodes by the real protocol) from
       the first op for ``max(churn_seconds, ops x op_interval)``, then churn stops;
    3. wait (at most ``settle_timeout``) until every live node holds every op.

    ``maintenance`` (default: on with churn) runs ``Node.run_maintenance`` on every node.
    """
    t_wall = time.monotonic()
    seed_scheduler(seed)
    say = progress or (lambda _msg: None)
    world = world if world is not None else SimWorld(seed=seed)
    maintain = churn > 0 if maintenance is None else maintenance
    async with trio.open_nursery() as nursery:
        swarm = Swarm(world, nursery, seed=seed, maintenance=maintain)
        sim = OpLogSim(swarm, fanout=fanout, sync_interval=sync_interval,
                       rpc_timeout=rpc_timeout, seed=seed + 1)
        for _ in range(nodes):
            await swarm.spawn()
        swarm.seed_tables()
        await sim.attach_all(presync=presync)
        await trio.sleep(warmup)
        say(f"n={nodes}: built and warmed up, {time.monotonic() - t_wall:.1f} s wall")

        pushes0, pulls0 = sim.messages()
        calls0 = world.stats.calls
        dups0 = sum(r.stats.duplicates for r in sim.replicators)
        t0 = trio.current_time()
        replaced = 0
        newcomers: set[bytes] = set()
        churn_for = max(churn_seconds, ops * op_interval) if churn > 0 else 0.0

        async def churner() -> None:
            nonlocal replaced
            per_second = churn * nodes / 60.0
            owed = 0.0
            end = trio.current_time() + churn_for
            while trio.current_time() < end:
                await trio.sleep(1.0)
                owed += per_second
                while owed >= 1:
                    owed -= 1
                    if sim.kill_random() is None:
                        break
                    node = await sim.spawn(join=False)
                    newcomers.add(node.id)
                    # Joins run on in the background after churn stops (the node is live
                    # from now on, so it must catch up like any other).
                    nursery.start_soon(swarm.join, node)
                    replaced += 1

        async with trio.open_nursery() as load:
            if churn_for > 0:
                load.start_soon(churner)
            for i in range(ops):
                sim.make_op()
                if i % 10 == 9:
                    say(f"n={nodes}: {i + 1} ops made, {replaced} replaced, "
                        f"{time.monotonic() - t_wall:.1f} s wall")
                if i < ops - 1:
                    await trio.sleep(op_interval)
        say(f"n={nodes}: load done at {trio.current_time() - t0:.1f} s simulated, "
            f"{time.monotonic() - t_wall:.1f} s wall")
        delivered = await sim.wait_delivered(settle_timeout)
        window = trio.current_time() - t0
        pushes, pulls = sim.messages()
        pushes, pulls = pushes - pushes0, pulls - pulls0
        calls = world.stats.calls - calls0
        dups = sum(r.stats.duplicates for r in sim.replicators) - dups0
        converged = sim.converged()
        nursery.cancel_scope.cancel()

    alive = set(sim.alive)
    t99s, t100s = [], []
    for rec in sim.recorder.ops.values():
        ref = [n for n in rec.alive_at_make if n in alive]
        t99s.append(rec.reached(0.99, ref))
        t100s.append(rec.reached(1.0, ref))
    per = max(1, ops * nodes)
    return OpLogResult(
        nodes=nodes, ops=ops, churn=churn, fanout=fanout, sync_interval=sync_interval,
        converged=converged, delivered=delivered,
        msgs_per_op_per_node=(pushes + pulls) / per,
        pushes_per_op_per_node=pushes / per,
        pulls_per_op_per_node=pulls / per,
        t99_median=statistics.median(t99s) if t99s else math.inf,
        t99_p95=_pct(t99s, 0.95),
        t100_median=statistics.median(t100s) if t100s else math.inf,
        t100_p95=_pct(t100s, 0.95),
        window=window,
        replaced=replaced,
        newcomers_alive=len(newcomers & alive),
        alive_end=len(alive),
        dht_calls=calls,
        duplicates_per_op_per_node=dups / per,
        rejected=sum(r.stats.rejected for r in sim.replicators),
        wall=time.monotonic() - t_wall,
    )


__all__ = [
    "OpLogResult",
    "OpLogSim",
    "OpRecord",
    "Recorder",
    "TimedLogStore",
    "seed_scheduler",
    "simulate",
]
