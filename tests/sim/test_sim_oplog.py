"""The replicated op log (``dhtfs.oplog.replicator``) with real Node code on the simulator.

Scale tests (1,000 nodes, with and without churn) are marked slow; ``DHTFS_SIM_OPLOG_NODES``
lowers their size. Times asserted are simulated ones, never wall-clock.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from dhtfs.dht.node import Node
from dhtfs.net.network import Contact, Message
from dhtfs.oplog import replicator as oplog
from dhtfs.oplog.entries import chain_link, chain_start
from dhtfs.oplog.logstore import SqliteLogStore
from dhtfs.oplog.replicator import (
    LOG_PULL,
    LOG_PUSH,
    KeyedSigner,
    LogEntry,
    LogReplicator,
    Signatures,
    signed_message,
)
from dhtfs.sim.network import SimWorld
from dhtfs.sim.oplog import OpLogSim, OpRecord, TimedLogStore, simulate
from dhtfs.sim.swarm import Swarm
from dhtfs.trust import pki

MakeSwarm = Callable[..., Swarm]
BIG = int(os.environ.get("DHTFS_SIM_OPLOG_NODES", "1000"))


def wire(entries: list[LogEntry]) -> list[list[object]]:
    return [[e.origin, e.seq, e.body, e.sig or b""] for e in entries]


def chain(origin: bytes, bodies: list[bytes], secret: bytes, *, first: int = 1,
          prev: bytes | None = None) -> list[LogEntry]:
    """Entries ``first, first+1, ...`` of ``origin``'s hash chain (``prev``: the link before
    ``first``), each 'signed' the KeyedSigner way with ``secret`` (right or wrong), so that
    any prefix is authenticated on its own."""
    signer = KeyedSigner(origin, lambda _o: secret)
    link = prev if prev is not None else chain_start(origin)
    out = []
    for seq, body in enumerate(bodies, first):
        link = chain_link(link, seq, body)
        out.append(LogEntry(origin, seq, body, signer.sign(origin, seq, link), link))
    return out


def push_args(entries: list[LogEntry]) -> Message:
    certs = [[o, b"sim:" + o] for o in {e.origin for e in entries}]
    return {"entries": wire(entries), "certs": certs}


def store_of(rep: LogReplicator) -> TimedLogStore:
    assert isinstance(rep.store, TimedLogStore)
    return rep.store


def assert_no_duplicates(sim: OpLogSim) -> None:
    """Every live store holds each origin's run 1..n once, with the origin's own bodies."""
    want = sim.expected_vector()
    for rep in sim.alive.values():
        store = store_of(rep)
        assert store.vector() == want
        for origin, n in want.items():
            held = store.entries(origin)
            assert [e.seq for e in held] == list(range(1, n + 1))
            if origin in sim.alive:
                truth = store_of(sim.alive[origin]).entries(origin)
                assert [e.body for e in held] == [e.body for e in truth]


async def small_sim(make_swarm: MakeSwarm, n: int, **kw: object) -> OpLogSim:
    sw = make_swarm(maintenance=True)
    await sw.grow(n)
    sim = OpLogSim(sw, seed=3, **kw)  # type: ignore[arg-type]
    await sim.attach_all()
    await trio.sleep(3.0)                       # first anti-entropy round
    return sim


# -- small and fast ----------------------------------------------------------------------------


async def test_every_node_gets_every_op_small(autojump_clock: MockClock) -> None:
    res = await simulate(80, 12, seed=5, warmup=3.0)
    assert res.delivered and res.converged
    assert res.rejected == 0
    assert res.pushes_per_op_per_node <= res.fanout + 1
    assert res.msgs_per_op_per_node < 3 * res.fanout
    assert res.t100_p95 < 5.0


async def test_receive_is_order_and_duplicate_insensitive(
    autojump_clock: MockClock, make_swarm: MakeSwarm
) -> None:
    """Pushes of one origin's entries in any order, split or whole, each delivered twice (and
    duplicated inside one message): the receiver holds exactly 1..n, once each."""
    sw = make_swarm()
    a, b = await sw.spawn(), await sw.spawn()
    await sw.join(b)
    secret = random.Random(1).randbytes(32)
    entries = chain(a.id, [f"op{s}".encode() for s in range(1, 9)], secret)
    secrets = {a.id: secret, b.id: random.Random(2).randbytes(32)}
    store = TimedLogStore(b.id)
    rep = LogReplicator(b, store, KeyedSigner(b.id, secrets.__getitem__))  # not run: no pulls
    for m in oplog.METHODS:
        b.services[m] = rep.handle
    deliveries = [[5], [3, 4], [8, 1], [2], [7, 6], [1, 2, 3, 4, 5, 6, 7, 8], [2, 2, 1, 1]]
    accepted = 0
    for seqs in deliveries:
        batch = [entries[s - 1] for s in seqs]
        for _ in range(2):
            ans = await a.call(b.contact, LOG_PUSH, push_args(batch), 5.0)
            accepted += ans["accepted"]
    assert accepted == len(entries)
    assert store.vector() == {a.id: len(entries)}
    assert store.entries(a.id) == entries
    assert rep.stats.entries_accepted == len(entries)
    assert rep.stats.duplicates > 0 and rep.stats.rejected == 0
    assert not rep.acceptor.stash


class ShufflingNetwork:
    """Wraps a node's ``SimNetwork.call``: every LOG_PUSH is split into single entries sent in
    reverse order, each twice; every LOG_PULL answer has its entries reversed and doubled."""

    def __init__(self, node: Node) -> None:
        self.call = node.network.call
        node.network.call = self.wrapped  # type: ignore[method-assign]

    async def wrapped(
        self, peer: Contact, method: str, args: Message, *, timeout: float
    ) -> Message:
        if method == LOG_PUSH and len(args["entries"]) >= 1:
            accepted = 0
            for item in reversed(args["entries"]):
                for _ in range(2):
                    one = {"entries": [item], "certs": args["certs"]}
                    ans = await self.call(peer, method, one, timeout=timeout)
                    accepted += ans["accepted"]
            return {"accepted": accepted}
        ans = await self.call(peer, method, args, timeout=timeout)
        if method == LOG_PULL:
            ans = {**ans, "entries": list(reversed(ans["entries"])) * 2}
        return ans


async def test_reordered_and_duplicated_gossip_converges(
    autojump_clock: MockClock, make_swarm: MakeSwarm
) -> None:
    sim = await small_sim(make_swarm, 30)
    for node in sim.swarm.nodes.values():
        ShufflingNetwork(node)
    rng = random.Random(4)
    writers = rng.sample(list(sim.alive), 5)
    for w in writers:
        for _ in range(4):                      # several entries per push
            sim.make_op(w)
        await trio.sleep(0.05)
    assert await sim.wait_delivered(60.0)
    assert sim.converged()
    assert_no_duplicates(sim)
    reps = list(sim.alive.values())
    assert sum(r.stats.stashed for r in reps) > 0
    assert sum(r.stats.duplicates for r in reps) > 0
    assert sum(r.stats.rejected for r in reps) == 0
    assert all(not r.acceptor.stash for r in reps)


async def test_partition_then_heal_converges(
    autojump_clock: MockClock, make_swarm: MakeSwarm, world: SimWorld
) -> None:
    sim = await small_sim(make_swarm, 30)
    ids = list(sim.alive)
    left, right = set(ids[:15]), set(ids[15:])
    world.partition([left, right])
    rng = random.Random(6)
    made: dict[str, list[OpRecord]] = {"left": [], "right": []}
    for _ in range(6):
        for side, group in (("left", left), ("right", right)):
            made[side].append(sim.make_op(rng.choice(sorted(group))))
        await trio.sleep(1.0)
    await trio.sleep(10.0)
    for side, group, other in (("left", left, right), ("right", right, left)):
        for rec in made[side]:
            assert group <= set(rec.arrivals)              # everyone on its side has it
            assert not (other & set(rec.arrivals))         # nobody across the cut
    healed_at = trio.current_time()
    world.heal()
    assert await sim.wait_delivered(120.0)
    assert sim.converged()
    assert_no_duplicates(sim)
    late = [t - healed_at for rec in made["left"] for n, t in rec.arrivals.items() if n in right]
    assert late and min(late) >= 0


async def test_forged_entries_are_dropped_and_the_relay_penalized(
    autojump_clock: MockClock, make_swarm: MakeSwarm
) -> None:
    """A relay pushes an entry of another origin signed with the wrong secret, and one
    relabeled with another origin; then serves a forged entry in a pull answer. Each is
    dropped, the relay penalized each time, and the genuine entry still gets in afterwards.
    An entry claiming to be the receiver's own is dropped (and penalized) too."""
    sim = await small_sim(make_swarm, 8)
    honest, relay, victim = (sim.swarm.nodes[i] for i in list(sim.alive)[:3])
    rep = sim.alive[victim.id]
    store = store_of(rep)
    wrong = random.Random(9).randbytes(32)
    own_secret = sim.secret_of(relay.id)
    body = b"rm -rf /"
    (forged_wrong_key,) = chain(honest.id, [body], wrong)
    (relabeled,) = chain(relay.id, [body], own_secret)
    relabeled = LogEntry(honest.id, 1, body, relabeled.sig)     # sig made for another origin
    (claims_victim,) = chain(victim.id, [body], wrong, prev=store.head(victim.id),
                             first=store.vector().get(victim.id, 0) + 1)
    honest_link = chain_link(chain_start(honest.id), 1, body)
    assert forged_wrong_key.sig is not None and relabeled.sig is not None
    assert not rep.signer.verify(honest.id, 1, honest_link, forged_wrong_key.sig)
    assert not rep.signer.verify(honest.id, 1, honest_link, relabeled.sig)
    own_before = store.entries(victim.id)
    ans = await relay.call(victim.contact, LOG_PUSH, push_args([claims_victim]), 5.0)
    assert ans == {"accepted": 0} and store.entries(victim.id) == own_before
    penalties = 1  # a forged entry of the receiver's own origin costs its sender too
    stats = victim.routing.stats(relay.id)
    assert stats is not None and stats.penalties == penalties
    for bad in (forged_wrong_key, relabeled):
        ans = await relay.call(victim.contact, LOG_PUSH, push_args([bad]), 5.0)
        penalties += 1
        assert ans == {"accepted": 0}
        assert store.vector().get(honest.id, 0) == 0
        stats = victim.routing.stats(relay.id)
        assert stats is not None and stats.penalties == penalties

    async def forged_pull(caller: Contact, method: str, args: Message) -> Message:
        return {**push_args([forged_wrong_key]), "vector": [[honest.id, 1]], "more": False}

    genuine_pull = relay.services[LOG_PULL]
    relay.services[LOG_PULL] = forged_pull
    assert await rep.sync_with(relay.contact) == 0
    relay.services[LOG_PULL] = genuine_pull
    penalties += 1
    stats = victim.routing.stats(relay.id)
    # >=: the victim's own anti-entropy loop may have pulled from the relay meanwhile.
    assert stats is not None and stats.penalties >= penalties
    assert store.vector().get(honest.id, 0) == 0
    assert rep.stats.rejected >= penalties
    honest_stats = victim.routing.stats(honest.id)
    assert honest_stats is None or honest_stats.penalties == 0
    # The genuine entry still spreads to everyone.
    sim.make_op(honest.id)
    assert await sim.wait_delivered(60.0)
    assert [e.body for e in store.entries(honest.id)] == \
        [e.body for e in store_of(sim.alive[honest.id]).entries(honest.id)]


async def test_a_forged_stashed_entry_penalizes_its_sender_not_the_gap_filler(
    autojump_clock: MockClock, make_swarm: MakeSwarm
) -> None:
    """A forged entry ahead of a gap, then the genuine entry that fills the gap from another
    peer: the forger is penalized, the gap-filler is not (a stashed entry keeps the peer that
    sent it, and that peer answers for it when the gap fills and the chain is checked)."""
    sw = make_swarm()
    origin, forger, filler, victim = [await sw.spawn() for _ in range(4)]
    for n in (forger, filler, victim):
        await sw.join(n)
    secrets = {n.id: random.Random(i).randbytes(32)
               for i, n in enumerate((origin, forger, filler, victim))}
    rep = LogReplicator(victim, TimedLogStore(victim.id),
                        KeyedSigner(victim.id, secrets.__getitem__))
    for m in oplog.METHODS:
        victim.services[m] = rep.handle
    (good1,) = chain(origin.id, [b"one"], secrets[origin.id])
    (forged2,) = chain(origin.id, [b"two?"], secrets[forger.id], first=2, prev=good1.link)
    await forger.call(victim.contact, LOG_PUSH, push_args([forged2]), 5.0)   # ahead of a gap
    await filler.call(victim.contact, LOG_PUSH, push_args([good1]), 5.0)     # fills the gap
    assert rep.store.vector().get(origin.id) == 1
    filler_stats = victim.routing.stats(filler.id)
    assert filler_stats is None or filler_stats.penalties == 0
    forger_stats = victim.routing.stats(forger.id)
    assert forger_stats is not None and forger_stats.penalties == 1


def _identity(tmp: Path, ca_dir: Path, ca_cert: Path, name: str) -> pki.Identity:
    cert, key, _nid = pki.issue_node_cert(ca_dir, name, tmp / name)
    return pki.Identity.load(ca_cert, cert, key)


async def test_restarted_node_with_real_signatures_accepts_known_origins(
    autojump_clock: MockClock, make_swarm: MakeSwarm, tmp_path: Path
) -> None:
    """Real certificates and ECDSA: a node restarted on its SQLite log (which holds the
    origin's certificate, while the new ``Signatures`` has no key cached) still accepts the
    origin's next entry, and does not penalize the sender."""
    ca_dir = tmp_path / "ca"
    ca_cert = pki.init_ca(ca_dir)
    ida, idb = (_identity(tmp_path, ca_dir, ca_cert, n) for n in ("a", "b"))
    sw = make_swarm()
    a, b = await sw.spawn(ida.node_id), await sw.spawn(idb.node_id)
    await sw.join(b)
    sig_a = Signatures(ida)
    db = tmp_path / "b.db"

    def entry(seq: int) -> LogEntry:
        link = chain_start(a.id)
        for s in range(1, seq + 1):
            link = chain_link(link, s, f"op{s}".encode())
        return LogEntry(a.id, seq, f"op{seq}".encode(), sig_a.sign(a.id, seq, link))

    def args(e: LogEntry) -> Message:
        return {"entries": wire([e]), "certs": [[a.id, sig_a.own_cert]]}

    store = SqliteLogStore(db)
    rep = LogReplicator(b, store, Signatures(idb))
    for m in oplog.METHODS:
        b.services[m] = rep.handle
    assert (await a.call(b.contact, LOG_PUSH, args(entry(1)), 5.0)) == {"accepted": 1}
    store.close()
    store = SqliteLogStore(db)                      # the node restarts on the same state
    rep = LogReplicator(b, store, Signatures(idb))
    for m in oplog.METHODS:
        b.services[m] = rep.handle
    try:
        assert (await a.call(b.contact, LOG_PUSH, args(entry(2)), 5.0)) == {"accepted": 1}
        stats = b.routing.stats(a.id)
        assert stats is None or stats.penalties == 0
    finally:
        store.close()


def test_signed_message_binds_origin_and_seq() -> None:
    o1, o2 = bytes(32), bytes([1]) * 32
    assert signed_message(o1, 1, b"x") != signed_message(o2, 1, b"x")
    assert signed_message(o1, 1, b"x") != signed_message(o1, 2, b"x")


# -- at scale ----------------------------------------------------------------------------------


@pytest.mark.slow
async def test_thousand_nodes_every_live_node_gets_every_op(autojump_clock: MockClock) -> None:
    res = await simulate(BIG, 30, seed=11, op_interval=0.5)
    assert res.delivered and res.converged
    assert res.alive_end == BIG and res.rejected == 0
    assert res.msgs_per_op_per_node < 3 * res.fanout
    assert res.pushes_per_op_per_node <= res.fanout + 1
    assert res.t99_median < 2.0 and res.t100_p95 < 10.0     # simulated seconds


@pytest.mark.slow
async def test_thousand_nodes_with_churn_converge(autojump_clock: MockClock) -> None:
    """30% of the nodes replaced per simulated minute for a minute while ops are made, then
    churn stops: every live node, the newcomers included, ends with every op."""
    res = await simulate(BIG, 20, churn=0.3, seed=12, op_interval=3.0, churn_seconds=60.0)
    assert res.replaced == round(0.3 * BIG)
    assert res.newcomers_alive > 0
    assert res.delivered and res.converged
    assert res.alive_end == BIG and res.rejected == 0
    assert res.msgs_per_op_per_node < 3 * res.fanout
    assert res.t99_median < 5.0                               # simulated seconds
