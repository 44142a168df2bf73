"""Real Node code over the in-memory network, under trio's virtual clock."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from dhtfs.base.errors import BlockMissing, RemoteError
from dhtfs.base.ids import from_int, random_id, sha256_id, to_int
from dhtfs.blocks.node import BlockNode
from dhtfs.net import rpc
from dhtfs.net.network import Contact, Message
from dhtfs.sim.network import SimWorld
from dhtfs.sim.swarm import Swarm
from testkit.nodehelpers import ids_of, xor_sorted

MakeSwarm = Callable[..., Swarm]


def blob(i: int, size: int = 3000) -> bytes:
    return random.Random(i).randbytes(size)


async def test_lookups_converge_to_true_k_closest(
    autojump_clock: MockClock, make_swarm: MakeSwarm
) -> None:
    sw = make_swarm()
    await sw.grow(60)
    rng = random.Random(1)
    for _ in range(25):
        node = rng.choice(list(sw.nodes.values()))
        target = random_id(rng)
        res = await node.lookup(target)
        want = xor_sorted([i for i in sw.nodes if i != node.id], target)[: node.k]
        assert ids_of(res.closest) == want
        assert 1 <= res.hops <= 4


async def test_put_then_get_from_every_node(
    autojump_clock: MockClock, make_swarm: MakeSwarm
) -> None:
    sw = make_swarm()
    await sw.grow(40)
    nodes = list(sw.nodes.values())
    puts = []
    for i, origin in enumerate(nodes[:3]):
        res = await origin.put_block_detailed(blob(i))
        assert res.block_id == sha256_id(blob(i))
        assert res.complete and res.copies == 3
        # Placement by XOR only: the replicas are the R closest nodes other than the origin.
        holders = set(ids_of(res.replicas)) | ({origin.id} if res.local_slot else set())
        assert holders == set(xor_sorted(list(sw.nodes), res.block_id)[:3])
        # The record reaches the k closest but the R replicas, which name themselves.
        assert res.announced + len(res.replicas) >= len(nodes) // 2
        puts.append((res.block_id, blob(i)))
    for node in nodes:
        for cid, data in puts:
            assert await node.get_block(cid) == data
            assert node.store.has(cid)  # cached locally after a fetch


async def test_small_swarm_put_counts_what_exists(
    autojump_clock: MockClock, make_swarm: MakeSwarm
) -> None:
    sw = make_swarm()
    a = await sw.spawn()
    res = await a.put_block_detailed(b"alone")
    assert res.copies == 1 and res.wanted == 1 and res.complete
    b = await sw.spawn()
    await sw.join(b)
    res = await a.put_block_detailed(b"two of us")
    assert res.copies == 2 and res.wanted == 2 and res.complete
    assert await b.get_block(res.block_id) == b"two of us"


class TamperingNode(BlockNode):
    """Serves every block with one byte flipped, by GET_CHUNK and inline in FIND_PROVIDERS."""

    gets = 0
    inline = 0

    async def handle(self, caller: Contact, method: str, args: Message) -> Message:
        answer = await super().handle(caller, method, args)
        if method in (rpc.GET_BLOCK, rpc.FIND_PROVIDERS) and answer.get("data"):
            if method == rpc.GET_BLOCK:
                TamperingNode.gets += 1
            else:
                TamperingNode.inline += 1
            data = answer["data"]
            answer = {**answer, "data": bytes([data[0] ^ 1]) + data[1:]}
        return answer


async def test_tampered_bytes_are_penalized_and_avoided(
    autojump_clock: MockClock, make_swarm: MakeSwarm, world: SimWorld
) -> None:
    """GET_CHUNK path: a block too large to travel inline."""
    sw = make_swarm()
    await sw.grow(30)
    evil = await sw.spawn(node_cls=TamperingNode)
    await sw.join(evil)
    TamperingNode.gets = 0
    reader = sw.random_alive(exclude=(evil.id,))[0]
    data = blob(99, rpc.MAX_INLINE_BYTES + 1)
    cid = sha256_id(data)
    evil.store.put_verified(cid, data)
    await evil.announce(cid)
    origin = sw.random_alive(exclude=(evil.id, reader.id))[0]
    res = await origin.put_block_detailed(data)
    # The honest holders are slow links; the evil node is the fastest provider.
    for h in [origin.id, *ids_of(res.replicas)]:
        world.extra_delay[h] = 0.4
    for _ in range(30):
        reader.routing.record_rtt(evil.id, 0.01)
    provs = await reader.find_providers(cid, stop_early=False)
    assert evil.id in ids_of(provs)
    assert reader.routing.rank_providers(provs)[0].node_id == evil.id
    assert await reader.get_block(cid) == data
    assert TamperingNode.gets == 1
    stats = reader.routing.stats(evil.id)
    assert stats is not None and stats.penalties == 1
    assert reader.routing.rank_providers(provs)[-1].node_id == evil.id
    reader.store.remove(cid)
    assert await reader.get_block(cid) == data
    assert TamperingNode.gets == 1  # not asked again while others serve


async def test_tampered_inline_bytes_are_penalized(
    autojump_clock: MockClock, make_swarm: MakeSwarm
) -> None:
    """FIND_VALUE path: the liar is the holder closest to the block, so lookups reach it.
    The block is too large to be spread with its records (else the liar's own announcement
    would hand honest copies to the k closest)."""
    sw = make_swarm()
    await sw.grow(30)
    data = blob(98, 8000)
    cid = sha256_id(data)
    evil = await sw.spawn(from_int(to_int(cid) ^ 1), node_cls=TamperingNode)
    await sw.join(evil)
    evil.store.put_verified(cid, data)
    await evil.announce(cid)
    TamperingNode.inline = 0
    reader = sw.random_alive(exclude=(evil.id,))[0]
    with pytest.raises(BlockMissing):
        await reader.get_block(cid)   # the only holder lies, inline and by GET_CHUNK
    assert TamperingNode.inline >= 1
    stats = reader.routing.stats(evil.id)
    assert stats is not None and stats.penalties >= 1
    assert not reader.store.has(cid)
    origin = sw.random_alive(exclude=(evil.id, reader.id))[0]
    res = await origin.put_block_detailed(data)
    assert len(res.replicas) >= 2
    assert await reader.get_block(cid) == data     # honest holders answer inline too


async def test_small_block_get_is_one_lookup_without_get_chunk(
    autojump_clock: MockClock, make_swarm: MakeSwarm, world: SimWorld
) -> None:
    """A small block comes back inline from the first holder reached: no GET_CHUNK is sent,
    and the lookup stops there (fewer queries than a full FIND_NODE)."""
    sw = make_swarm()
    await sw.grow(40)
    nodes = list(sw.nodes.values())
    res = await nodes[0].put_block_detailed(blob(11))
    holders = {c.node_id for c in res.replicas} | {nodes[0].id}
    reader = next(n for n in nodes if n.id not in holders)
    sent: list[str] = []
    call = reader.network.call

    async def counting(peer: Contact, method: str, args: Message, *, timeout: float) -> Message:
        sent.append(method)
        return await call(peer, method, args, timeout=timeout)

    reader.network.call = counting  # type: ignore[method-assign]
    assert await reader.get_block(res.block_id) == blob(11)
    assert rpc.GET_BLOCK not in sent
    full = await reader.lookup(res.block_id)
    assert sent.count(rpc.FIND_PROVIDERS) < full.queries


async def test_value_lookup_asks_only_the_closest_known_holder(
    autojump_clock: MockClock, make_swarm: MakeSwarm
) -> None:
    """Narrow mode: a reader that knows a holder of a small block asks it alone (the closest
    contact it knows is then a holder) and gets the bytes from that one RPC."""
    sw = make_swarm()
    await sw.grow(40)
    origin = sw.random_alive()[0]
    res = await origin.put_block_detailed(blob(12, 8000))
    holders = set(ids_of(sw.true_closest(res.block_id, origin.replicas)))
    readers = [n for n in sw.nodes.values()
               if n.id not in holders and n.id != origin.id
               and any(h in n.routing for h in holders)]
    assert readers
    for reader in readers[:10]:
        got = await reader.get_block_detailed(res.block_id)
        assert got.data == blob(12, 8000)
        assert (got.source, got.queries, got.hops) == ("inline", 1, 1)


async def test_value_lookup_hedges_past_a_silent_holder(
    autojump_clock: MockClock, make_swarm: MakeSwarm, world: SimWorld
) -> None:
    """Narrow mode never waits on one silent peer for long: once the query to the closest
    holder overruns its hedge delay, the next candidates are asked."""
    sw = make_swarm(cache_fetched=False, rpc_timeout=30.0)
    await sw.grow(40)
    origin = sw.random_alive()[0]
    res = await origin.put_block_detailed(blob(13, 8000))
    holders = ids_of(sw.true_closest(res.block_id, origin.replicas))
    reader = next(n for n in sw.nodes.values()
                  if n.id not in holders and n.id != origin.id and holders[0] in n.routing
                  and n.routing.closest(res.block_id, 1)[0].node_id == holders[0])
    world.extra_delay[holders[0]] = 25.0
    t0 = trio.current_time()
    got = await reader.get_block_detailed(res.block_id)
    assert got.data == blob(13, 8000)
    assert got.queries >= 2
    assert trio.current_time() - t0 < reader.soft_timeout_ceiling


async def test_small_blocks_spread_to_the_k_closest_with_their_records(
    autojump_clock: MockClock, make_swarm: MakeSwarm
) -> None:
    """A block of at most ``spread_max`` bytes rides along its ADD_PROVIDERs: the k closest
    keep a copy (counted as announced now, so they do not republish it), and a read ends at
    the first of them its lookup reaches. A larger block stays on its R replicas."""
    sw = make_swarm(maintenance=True)
    await sw.grow(60)
    origin = sw.random_alive()[0]
    small, large = blob(31, 1024), blob(32, origin.spread_max + 1)
    for data in (small, large):
        res = await origin.put_block_detailed(data)
        await res.placed.wait()
        await trio.testing.wait_all_tasks_blocked()
        k_closest = ids_of(sw.true_closest(res.block_id, origin.k))
        holders = {i for i in k_closest if sw.nodes[i].store.has(res.block_id)}
        if data is small:
            assert len(holders) >= origin.k - 1
            for i in holders - {origin.id} - set(ids_of(res.replicas)):
                assert sw.nodes[i]._announced[res.block_id] > -math.inf
        else:
            assert holders <= set(ids_of(res.replicas)) | {origin.id}
    cid = sha256_id(small)
    hops = []
    for reader in sw.random_alive(20, exclude=(origin.id,)):
        got = await reader.get_block_detailed(cid)
        assert got.data == small
        hops.append(got.hops)
    assert sorted(hops)[len(hops) // 2] <= 1


async def test_lookups_start_from_replacement_contacts_too(
    autojump_clock: MockClock, make_swarm: MakeSwarm
) -> None:
    """A full bucket's newer contacts wait in its replacement cache; the node's own lookups
    start from them too. Here the only holder of a block is such a contact, and the reader's
    bucket proper holds only far nodes that know nobody: the get still takes one query."""
    sw = make_swarm()
    data = blob(41, 1024)
    cid = to_int(sha256_id(data))
    rng = random.Random(41)
    reader = await sw.spawn(from_int(cid ^ (1 << 255) ^ 12345))
    fillers = [await sw.spawn(from_int(cid ^ (1 << 254) ^ rng.getrandbits(200)))
               for _ in range(reader.k)]
    holder = await sw.spawn(from_int(cid ^ 1))
    for node in [*fillers, holder]:
        assert await reader._ping_quietly(node.contact)
    assert holder.id not in reader.routing
    assert holder.id in ids_of(reader.routing.replacement_contacts(255))
    holder.store.put_verified(from_int(cid), data)
    got = await reader.get_block_detailed(from_int(cid))
    assert (got.data, got.source, got.queries) == (data, "inline", 1)


async def test_put_returns_once_the_settled_closest_hold_the_block(
    autojump_clock: MockClock, make_swarm: MakeSwarm
) -> None:
    """Pushes start when the lookup settles on the R closest; the put returns then, and the
    rest of the lookup and the announcement finish in the background. The replicas are still
    the true R closest (the origin's own copy filling a slot when it is one of them)."""
    sw = make_swarm(maintenance=True)
    await sw.grow(60)
    rng = random.Random(5)
    for i in range(10):
        origin = rng.choice(list(sw.nodes.values()))
        t0 = trio.current_time()
        res = await origin.put_block_detailed(blob(300 + i))
        put_time = trio.current_time() - t0
        assert res.complete and not res.placed.is_set()
        await res.placed.wait()
        assert trio.current_time() - t0 > put_time
        r = origin.replicas
        best = ids_of(sw.true_closest(res.block_id, r))
        assert res.local_slot == (origin.id in best)
        assert set(best) - {origin.id} <= set(ids_of(res.replicas))
        assert res.announced >= origin.k // 2


async def test_lookup_settles_on_the_closest_before_it_ends(
    autojump_clock: MockClock, make_swarm: MakeSwarm
) -> None:
    sw = make_swarm()
    await sw.grow(60)
    rng = random.Random(9)
    early = 0
    for _ in range(10):
        node = rng.choice(list(sw.nodes.values()))
        target = random_id(rng)
        seen: list[tuple[list[bytes], float]] = []
        res = await node.lookup(
            target, settle=3,
            on_settled=lambda cs, seen=seen: seen.append((ids_of(cs), trio.current_time())),
        )
        assert len(seen) == 1
        want = xor_sorted([i for i in sw.nodes if i != node.id], target)
        assert seen[0][0] == want[:3] == ids_of(res.closest[:3])
        early += seen[0][1] < trio.current_time()
    assert early >= 8


async def test_replicas_are_handed_to_a_closer_newcomer(
    autojump_clock: MockClock, make_swarm: MakeSwarm
) -> None:
    """A node joining closer to a block than its replicas gets a copy from them (paper 2.5),
    so the R closest keep holding it as the membership changes."""
    sw = make_swarm(maintenance=True)
    await sw.grow(30)
    origin = sw.random_alive()[0]
    res = await origin.put_block_detailed(blob(21))
    await res.placed.wait()
    cid = res.block_id
    newcomer = await sw.spawn(from_int(to_int(cid) ^ 1))   # the closest node to the block
    await sw.join(newcomer)
    with trio.fail_after(120):
        while not newcomer.store.has(cid):
            await trio.sleep(1.0)
    # nodes far from the block were not handed anything
    far = from_int(to_int(cid) ^ (1 << 255))
    outsider = await sw.spawn(far)
    await sw.join(outsider)
    await trio.sleep(60.0)
    assert not outsider.store.has(cid)


async def test_silent_nodes_do_not_stall_lookups(
    autojump_clock: MockClock, make_swarm: MakeSwarm, world: SimWorld
) -> None:
    sw = make_swarm(rpc_timeout=10.0)
    await sw.grow(80)
    rng = random.Random(3)
    for victim in rng.sample(list(sw.nodes), 20):
        sw.kill(victim)  # silent: calls to them hang until deadline
    for _ in range(20):
        node = rng.choice(list(sw.nodes.values()))
        target = random_id(rng)
        t0 = trio.current_time()
        res = await node.lookup(target)
        elapsed = trio.current_time() - t0
        assert elapsed < node.rpc_timeout / 2, elapsed  # never waits out a hard timeout
        # Answers are the k closest *known* (dead ones included until evicted), so right after
        # a mass kill the k-th live node may not be named by anyone yet; the first half is.
        want = xor_sorted([i for i in sw.nodes if i != node.id], target)[: node.k // 2]
        assert ids_of(res.closest[: node.k // 2]) == want
        assert all(c.node_id in sw.nodes for c in res.closest)
    assert world.stats.to_dead > 0


async def test_hedged_get_beats_a_slow_provider(
    autojump_clock: MockClock, make_swarm: MakeSwarm, world: SimWorld
) -> None:
    sw = make_swarm(cache_fetched=False)
    await sw.grow(30)
    nodes = list(sw.nodes.values())
    res = await nodes[0].put_block_detailed(blob(5))
    holders = ids_of(res.replicas)
    reader = next(n for n in nodes[1:] if n.id not in holders)
    slow = holders[0]
    for _ in range(30):
        reader.routing.record_rtt(slow, 0.01)  # its history says it is fast...
    world.extra_delay[slow] = 20.0  # ...but now it takes 20 s to answer
    provs = reader.routing.rank_providers(await reader.find_providers(res.block_id))
    assert provs[0].node_id == slow
    t0 = trio.current_time()
    assert await reader.get_block(res.block_id) == blob(5)
    assert trio.current_time() - t0 < 2.0


async def test_get_of_unknown_block_raises_missing(
    autojump_clock: MockClock, make_swarm: MakeSwarm
) -> None:
    sw = make_swarm()
    await sw.grow(20)
    node = sw.random_alive()[0]
    t0 = trio.current_time()
    with pytest.raises(BlockMissing):
        await node.get_block(sha256_id(b"nobody has this"))
    assert trio.current_time() - t0 < 5.0


async def test_bad_requests_are_remote_errors(
    autojump_clock: MockClock, make_swarm: MakeSwarm
) -> None:
    sw = make_swarm()
    a, b = await sw.spawn(), await sw.spawn()
    good = bytes(32)
    bad_calls: list[tuple[str, object]] = [
        ("NOPE", {}),
        (rpc.PING, []),
        (rpc.FIND_NODE, {}),
        (rpc.FIND_NODE, {"target": b"short"}),
        (rpc.FIND_NODE, {"target": "x" * 32}),
        (rpc.FIND_PROVIDERS, {"key": 5}),
        (rpc.ADD_PROVIDER, {"key": good}),
        (rpc.ADD_PROVIDER, {"key": good, "ttl": -1}),
        (rpc.ADD_PROVIDER, {"key": good, "ttl": True}),
        (rpc.PUT_BLOCK, {"id": good, "data": b"does not hash to zero"}),
        (rpc.PUT_BLOCK, {"id": good, "data": "str"}),
        (rpc.GET_BLOCK, {"id": None}),
    ]
    for method, args in bad_calls:
        with pytest.raises(RemoteError):
            await a.handle(b.contact, method, args)  # type: ignore[arg-type]
        with pytest.raises(RemoteError):
            await b.network.call(a.contact, method, args, timeout=1.0)  # type: ignore[arg-type]
    assert b.id in a.routing  # the caller was still seen alive
    assert (await a.handle(b.contact, rpc.GET_BLOCK, {"id": good})) == {"data": None}


async def test_eviction_pings_the_least_recently_seen(
    autojump_clock: MockClock, make_swarm: MakeSwarm
) -> None:
    """A full bucket keeps a live old contact; a dead one is replaced by the newcomer."""
    sw = make_swarm(k=2, maintenance=True)
    own = await sw.spawn(from_int(0))
    far = [await sw.spawn(from_int((1 << 255) | i)) for i in range(1, 5)]
    for f in far[:2]:
        own.routing.update(f.contact)
    await far[2].network.call(own.contact, rpc.PING, {}, timeout=1)  # bucket full: ping far[0]
    await trio.sleep(1)
    assert ids_of(own.routing.bucket_contacts(255)) == [far[1].id, far[0].id]
    assert ids_of(own.routing.replacement_contacts(255)) == [far[2].id]
    sw.kill(far[1].id)
    await trio.sleep(own.routing.ping_interval)  # one eviction ping per bucket per interval
    await far[3].network.call(own.contact, rpc.PING, {}, timeout=1)  # ping far[1]: dead
    await trio.sleep(10)
    assert ids_of(own.routing.bucket_contacts(255)) == [far[0].id, far[3].id]


async def test_provider_records_expire_and_are_republished(
    autojump_clock: MockClock, make_swarm: MakeSwarm
) -> None:
    ttl = 120.0
    sw = make_swarm(maintenance=True, provider_ttl=ttl, refresh_interval=600.0)
    await sw.grow(25)
    origin, reader = sw.random_alive(2)
    res = await origin.put_block_detailed(blob(7))
    await res.placed.wait()     # with maintenance running, announcing goes on after the put
    cid = res.block_id
    recorders = [n for n in sw.nodes.values() if origin.id in ids_of(n.local_providers(cid))]
    assert len(recorders) >= 10
    assert await reader.get_block(cid) == blob(7)
    # Republish keeps records alive well past the TTL, and the reader's cached copy gets
    # announced too (CDN-like spread).
    await trio.sleep(3 * ttl)
    for n in recorders:
        assert origin.id in ids_of(n.local_providers(cid))
    provs = await sw.random_alive(exclude=(origin.id, reader.id))[0].find_providers(
        cid, stop_early=False
    )
    assert {origin.id, reader.id} <= set(ids_of(provs))
    # Once the origin dies its records are not renewed, and expire within one TTL.
    sw.kill(origin.id)
    await trio.sleep(ttl + 61)
    for n in recorders:
        if n.id in sw.nodes:
            assert origin.id not in ids_of(n.local_providers(cid))
            assert all(origin.id not in recs for recs in n.providers.values())


async def test_three_hundred_nodes(autojump_clock: MockClock, make_swarm: MakeSwarm) -> None:
    """300 nodes (oracle-seeded tables, then 20 real joins): lookups exact, put/get work."""
    sw = make_swarm()
    for _ in range(280):
        await sw.spawn()
    sw.seed_tables()
    await sw.grow(20)
    rng = random.Random(11)
    hops = []
    for _ in range(40):
        node = rng.choice(list(sw.nodes.values()))
        target = random_id(rng)
        res = await node.lookup(target)
        want = xor_sorted([i for i in sw.nodes if i != node.id], target)[:1]
        assert ids_of(res.closest[:1]) == want
        hops.append(res.hops)
    assert sorted(hops)[len(hops) // 2] <= 3
    nodes = list(sw.nodes.values())
    cids = [await rng.choice(nodes).put_block(blob(100 + i)) for i in range(5)]
    for node in rng.sample(nodes, 30):
        for i, cid in enumerate(cids):
            assert await node.get_block(cid) == blob(100 + i)


async def test_churn(autojump_clock: MockClock, make_swarm: MakeSwarm) -> None:
    """30% of nodes replaced over 3 simulated minutes: lookups still find the closest live
    node, and every block that still has a live holder can be read."""
    sw = make_swarm(maintenance=True)
    await sw.grow(80)
    rng = random.Random(5)
    nodes = list(sw.nodes.values())
    cids = [await rng.choice(nodes).put_block(blob(200 + i)) for i in range(8)]
    for _ in range(24):
        sw.kill(rng.choice(list(sw.nodes)))
        await sw.join(await sw.spawn())
        await trio.sleep(7.5)
    ok = 0
    for _ in range(30):
        node = rng.choice(list(sw.nodes.values()))
        target = random_id(rng)
        res = await node.lookup(target)
        want = xor_sorted([i for i in sw.nodes if i != node.id], target)[:1]
        ok += ids_of(res.closest[:1]) == want
    assert ok >= 29
    readable = 0
    for i, cid in enumerate(cids):
        if any(n.store.has(cid) for n in sw.nodes.values()):
            readable += 1
            node = rng.choice(list(sw.nodes.values()))
            assert await node.get_block(cid) == blob(200 + i)
    assert readable >= 6


async def test_partition_then_heal(
    autojump_clock: MockClock, make_swarm: MakeSwarm, world: SimWorld
) -> None:
    sw = make_swarm()
    await sw.grow(40)
    ids = list(sw.nodes)
    left, right = set(ids[:20]), set(ids[20:])
    world.partition([left, right])
    a = sw.nodes[ids[0]]
    b = sw.nodes[ids[-1]]
    data = blob(300)
    cid = sha256_id(data)
    res = await a.put_block_detailed(data)
    assert set(ids_of(res.replicas)) <= left  # placed on the reachable side only
    target = random_id(random.Random(9))
    found = await a.find_node(target)
    assert set(ids_of(found)) <= left
    assert ids_of(found[:1]) == xor_sorted([i for i in left if i != a.id], target)[:1]
    with pytest.raises(BlockMissing):
        await b.get_block(cid)
    world.heal()
    assert await b.get_block(cid) == data


class RefusingNode(BlockNode):
    """Answers lookups but refuses to store blocks (say, its disk is full)."""

    async def handle(self, caller: Contact, method: str, args: Message) -> Message:
        if method == rpc.PUT_BLOCK:
            raise RemoteError("PUT_CHUNK: no space left")
        return await super().handle(caller, method, args)


async def test_put_moves_on_when_a_replica_target_fails(
    autojump_clock: MockClock, make_swarm: MakeSwarm
) -> None:
    """The closest node refuses the block: the push moves on to the next closest."""
    sw = make_swarm()
    await sw.grow(30)
    data = blob(400, 8000)   # too large to be spread with its provider records
    cid = sha256_id(data)
    refuser = await sw.spawn(from_int(int.from_bytes(cid, "big") ^ 1), node_cls=RefusingNode)
    await sw.join(refuser)
    origin = sw.random_alive(exclude=(refuser.id,))[0]
    res = await origin.put_block_detailed(data)
    assert res.complete and res.copies == 3
    assert refuser.id not in ids_of(res.replicas) and not refuser.store.has(cid)
    live = [i for i in xor_sorted(list(sw.nodes), cid) if i != refuser.id][:3]
    holders = set(ids_of(res.replicas)) | ({origin.id} if res.local_slot else set())
    assert holders == set(live)


async def test_join_by_address(autojump_clock: MockClock, make_swarm: MakeSwarm) -> None:
    sw = make_swarm()
    await sw.grow(15)
    seed = sw.random_alive()[0]
    newcomer = await sw.spawn()
    size = await newcomer.join_addresses([(seed.contact.host, seed.contact.port), ("sim", 9999)])
    assert size >= 10
    assert newcomer.id in seed.routing
