"""The iterative lookup engine against synthetic topologies (no network, virtual clock)."""

from __future__ import annotations

import random

import trio
import trio.testing

from dhtfs.base.errors import CallTimeout
from dhtfs.base.ids import from_int, random_id, to_int
from dhtfs.dht.lookup import Answer, iterative_lookup
from dhtfs.dht.routing import RoutingTable
from dhtfs.net.network import Contact

K = 8


def make_world(n: int, seed: int) -> dict[bytes, RoutingTable]:
    """n nodes; each saw all others in a random order (full buckets keep their first K)."""
    rng = random.Random(seed)
    ids = [random_id(rng) for _ in range(n)]
    tables = {i: RoutingTable(i, k=K) for i in ids}
    for i in ids:
        for j in rng.sample(ids, n):
            tables[i].update(Contact(j, "h", 1))
    return tables


def true_closest(ids: list[bytes], target: bytes, k: int) -> list[bytes]:
    return sorted(ids, key=lambda i: to_int(i) ^ to_int(target))[:k]


async def test_lookup_converges_to_true_k_closest(autojump_clock: trio.testing.MockClock) -> None:
    tables = make_world(200, seed=1)
    ids = list(tables)
    rng = random.Random(2)
    for _ in range(20):
        own = rng.choice(ids)
        target = random_id(rng)

        async def query(c: Contact, timeout: float, target: bytes = target) -> Answer:
            await trio.sleep(0.05)
            return Answer(tables[c.node_id].closest(target, K))

        res = await iterative_lookup(
            target, tables[own].closest(target, K), query, own_id=own, k=K, alpha=3
        )
        want = true_closest([i for i in ids if i != own], target, K)
        assert [c.node_id for c in res.closest] == want
        assert res.hops >= 1 and res.queries >= K


async def test_queries_stay_continuously_in_flight(autojump_clock: trio.testing.MockClock) -> None:
    """A new query starts the moment one answers, without waiting for the slower two."""
    own = from_int(0)
    peers = [Contact(from_int(i), "h", 1) for i in range(1, 40)]
    delays = {c.node_id: (0.3 if i < 2 else 0.01) for i, c in enumerate(peers)}
    starts: list[tuple[float, bytes]] = []
    in_flight = 0
    peak = 0
    target = from_int(0)

    async def query(c: Contact, timeout: float) -> Answer:
        nonlocal in_flight, peak
        starts.append((trio.current_time(), c.node_id))
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await trio.sleep(delays[c.node_id])
        finally:
            in_flight -= 1
        return Answer(peers)

    t0 = trio.current_time()
    res = await iterative_lookup(
        target,
        peers[:3],
        query,
        own_id=own,
        k=K,
        alpha=3,
        soft_timeout=lambda c: 10.0,
    )
    assert peak == 3
    # Peers 0 and 1 are slow (0.3 s); peer 2 answers at 0.01 s and more queries follow at once.
    assert sum(1 for t, _ in starts if t - t0 < 0.29) >= K - 2
    assert [c.node_id for c in res.closest] == [p.node_id for p in peers[:K]]


async def test_silent_peer_costs_only_its_soft_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    own = from_int(0)
    peers = [Contact(from_int(i), "h", 1) for i in range(1, 30)]
    silent = peers[0].node_id

    async def query(c: Contact, timeout: float) -> Answer:
        if c.node_id == silent:
            with trio.move_on_after(timeout):
                await trio.sleep_forever()
            raise CallTimeout("silent")
        await trio.sleep(0.05)
        return Answer(peers)

    t0 = trio.current_time()
    res = await iterative_lookup(
        from_int(0), peers[:3], query, own_id=own, k=K, alpha=3,
        soft_timeout=lambda c: 0.5, hard_timeout=30.0,
    )
    elapsed = trio.current_time() - t0
    assert elapsed < 1.0, elapsed
    assert silent not in [c.node_id for c in res.closest]
    assert [c.node_id for c in res.abandoned] == [silent]
    assert res.slow == 1


async def test_failures_are_skipped(autojump_clock: trio.testing.MockClock) -> None:
    own = from_int(0)
    peers = [Contact(from_int(i), "h", 1) for i in range(1, 30)]
    dead = {peers[i].node_id for i in (0, 2, 5)}

    async def query(c: Contact, timeout: float) -> Answer:
        await trio.sleep(0.02)
        if c.node_id in dead:
            raise CallTimeout("dead")
        return Answer(peers)

    res = await iterative_lookup(from_int(0), peers[:3], query, own_id=own, k=K, alpha=3)
    got = [c.node_id for c in res.closest]
    want = [p.node_id for p in peers if p.node_id not in dead][:K]
    assert got == want and res.failures == 3


async def test_hops_on_a_chain(autojump_clock: trio.testing.MockClock) -> None:
    """Node i only knows node i+1 (distance to the target shrinking): the answer that names
    the closest node comes from hop n-1, so the query to it is hop n."""
    n = 6
    target = from_int(0)
    chain = [Contact(from_int(1 << (100 - 10 * i)), "h", 1) for i in range(n)]

    async def query(c: Contact, timeout: float) -> Answer:
        await trio.sleep(0.01)
        i = chain.index(c)
        return Answer([chain[i + 1]] if i + 1 < n else [])

    res = await iterative_lookup(target, chain[:1], query, own_id=from_int(2**255), k=K)
    assert res.closest[0] == chain[-1]
    assert res.hops == n
    assert res.queries == n


async def test_stop_early_and_found_hop(autojump_clock: trio.testing.MockClock) -> None:
    peers = [Contact(from_int(i), "h", 1) for i in range(1, 50)]
    holder = peers[20].node_id

    async def query(c: Contact, timeout: float) -> Answer:
        await trio.sleep(0.01)
        found = ["yes"] if c.node_id == holder else None
        return Answer(peers[max(0, peers.index(c) - 5) :][:10], found)

    res = await iterative_lookup(
        from_int(0), peers[30:33], query, own_id=from_int(2**255), k=K, stop=lambda c, a: True
    )
    assert res.found == [["yes"]]
    assert res.hops >= 2
    full = await iterative_lookup(from_int(0), peers[30:33], query, own_id=from_int(2**255), k=K)
    assert full.queries > res.queries


async def test_empty_start_returns_nothing() -> None:
    async def query(c: Contact, timeout: float) -> Answer:
        raise AssertionError("no query expected")

    res = await iterative_lookup(from_int(1), [], query, own_id=from_int(2))
    assert res.closest == [] and res.queries == 0
